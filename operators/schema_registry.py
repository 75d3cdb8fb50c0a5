"""Schema registry client: the Confluent REST calls the codec needs, with caches.

Used by :class:`attune.operators.codec.Codec` when a schema registry URL is
configured (``ATTUNE_SCHEMA_REGISTRY_URL``): encoding registers the current
schema of a record under its subject (the record-name strategy: the subject is
the record's full name, e.g. ``attune.event.Event``) and frames messages with
its id; decoding looks a Confluent-framed message's schema up by id. Without a
registry the codec uses single-object encoding and never calls this module.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class RegistryUnavailableError(RuntimeError):
    """The configured schema registry could not be reached: an operator error, not bad input."""


class SchemaRegistryClient:
    """Minimal Confluent schema registry client (REST v1), with caches.

    Only what the codec needs: look a schema up by id, register one under a
    subject. Uses the standard library so it adds no dependency.
    """

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._by_id: dict[int, str | None] = {}
        self._ids: dict[tuple[str, str], int] = {}

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, OSError) as exc:
            raise RegistryUnavailableError(
                f"schema registry at {self.url} is unreachable ({exc}); check "
                "ATTUNE_SCHEMA_REGISTRY_URL, or unset it to use single-object encoding"
            ) from exc

    def schema_for_id(self, schema_id: int) -> str | None:
        """The schema JSON registered under ``schema_id``, or ``None`` if the registry has none."""
        if schema_id not in self._by_id:
            try:
                self._by_id[schema_id] = self._request("GET", f"/schemas/ids/{schema_id}")["schema"]
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise RegistryUnavailableError(
                        f"schema registry at {self.url} answered HTTP {exc.code} for id {schema_id}"
                    ) from exc
                self._by_id[schema_id] = None
        return self._by_id[schema_id]

    def register(self, subject: str, schema_str: str) -> int:
        """Register (or find) ``schema_str`` under ``subject``; returns its id."""
        key = (subject, schema_str)
        if key not in self._ids:
            try:
                answer = self._request(
                    "POST", f"/subjects/{subject}/versions", {"schema": schema_str}
                )
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode(errors="replace")
                raise RegistryUnavailableError(
                    f"schema registry at {self.url} refused schema for subject {subject}: "
                    f"HTTP {exc.code} {detail}"
                ) from exc
            self._ids[key] = int(answer["id"])
            self._by_id[self._ids[key]] = schema_str
        return self._ids[key]
