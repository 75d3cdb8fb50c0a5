"""Consent per purpose: what a user allowed, and what applies when they said nothing.

Part of the privacy gate (stage 3 of the flow, docs/privacy.md "Consent"). Three
purposes, the fields of ``attune.event.ConsentUpdate``:

- ``personalization``: the user's events feed per-user state, segments, personas,
  models and recommendations. Without it an event is only counted as withheld.
- ``marketing``: triggers are published for the user (every kind, every rule).
- ``analytics``: the user's behaviour feeds shared aggregates: the session vectors
  the persona learner learns from, and (issue #5) trending counts.

A user's :class:`ConsentState` keeps, per purpose, the latest statement in event time,
and where the user is (country and region of the latest event that said so). What
applies to a purpose the user never stated is the :class:`ConsentPolicy` default for
that place: ``opt-out`` (allowed until withdrawn) or ``opt-in`` (not until given).

Configuration (``ATTUNE_CONSENT_DEFAULT`` and ``ATTUNE_CONSENT_REGIONS``):

- default: one mode for every purpose (``opt-in``), or ``PURPOSE=MODE`` pairs separated
  by commas; purposes not named keep the built-in default (:data:`BUILTIN_DEFAULT`:
  analytics and personalization opt-out, marketing opt-in);
- regions: ``SCOPE=MODE`` or ``SCOPE:PURPOSE=MODE`` entries separated by commas. A
  scope is ``EU`` or ``EEA`` (the member states, :data:`GROUPS`), an ISO 3166-1
  alpha-2 country (``DE``) or an ISO 3166-2 subdivision (``US-CA``). The most specific
  match wins, per purpose: subdivision, country, ``EU``, ``EEA``, then the default.

>>> policy = ConsentPolicy.parse("", "EU=opt-in,US=opt-out,US-CA:marketing=opt-in")
>>> policy.defaults_for("DE", None)
{'analytics': False, 'personalization': False, 'marketing': False}
>>> policy.defaults_for("US", "US-NY")["marketing"], policy.defaults_for("US", "US-CA")["marketing"]
(True, False)
>>> policy.defaults_for(None, None)  # nowhere known: the default
{'analytics': True, 'personalization': True, 'marketing': False}
>>> ConsentPolicy.parse("", "Europe=opt-in")
Traceback (most recent call last):
...
attune.operators.consent.ConsentConfigError: ATTUNE_CONSENT_REGIONS entry 'Europe=opt-in': scope \
'Europe' is not EU, EEA, a country code (DE) or a subdivision code (US-CA)
"""

from __future__ import annotations

import re
from bisect import insort
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import Counter

from attune.operators.events import ConsentUpdate, Context

ANALYTICS: Final = "analytics"
PERSONALIZATION: Final = "personalization"
MARKETING: Final = "marketing"
#: The purposes, in the order of ``attune.event.ConsentUpdate``.
PURPOSES: Final[tuple[str, ...]] = (ANALYTICS, PERSONALIZATION, MARKETING)
OPT_IN: Final = "opt-in"
OPT_OUT: Final = "opt-out"
_MODES: Final = {OPT_IN: False, OPT_OUT: True}

#: Unknown consent when nothing is configured: processing allowed until withdrawn,
#: marketing only with a recorded yes (as the shipped trigger rules always had it).
BUILTIN_DEFAULT: Final[Mapping[str, bool]] = {
    ANALYTICS: True,
    PERSONALIZATION: True,
    MARKETING: False,
}

_EU: Final = frozenset({
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "IE", "IT",
    "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
})  # fmt: skip
#: Named groups of countries a region entry may use; the narrower one wins.
GROUPS: Final[Mapping[str, frozenset[str]]] = {"EU": _EU, "EEA": _EU | {"IS", "LI", "NO"}}
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_SUBDIVISION = re.compile(r"^[A-Z]{2}-[A-Z0-9]{1,3}$")

#: Events the per-user step withheld for want of personalization consent (a count,
#: nothing else about them is kept).
EVENTS_WITHHELD = Counter(
    "attune_events_withheld", "Events withheld from per-user state: no personalization consent"
)


def withheld_total() -> int:
    """Events withheld by this process so far."""
    return int(
        sum(
            s.value
            for m in EVENTS_WITHHELD.collect()
            for s in m.samples
            if s.name.endswith("_total")
        )
    )


class ConsentConfigError(ValueError):
    """``ATTUNE_CONSENT_DEFAULT`` or ``ATTUNE_CONSENT_REGIONS`` does not parse."""


def _mode(raw: str, where: str) -> bool:
    mode = raw.strip().lower()
    if mode not in _MODES:
        raise ConsentConfigError(f"{where}: mode {raw.strip()!r} is not opt-in or opt-out")
    return _MODES[mode]


def _purpose(raw: str, where: str) -> str:
    purpose = raw.strip().lower()
    if purpose not in PURPOSES:
        raise ConsentConfigError(
            f"{where}: purpose {raw.strip()!r} is not one of {', '.join(PURPOSES)}"
        )
    return purpose


def _entries(raw: str) -> list[str]:
    return [e.strip() for e in raw.split(",") if e.strip()]


@dataclass(frozen=True, slots=True)
class ConsentPolicy:
    """Consent that applies when a user stated nothing, per purpose and place.

    ``default``: purpose -> allowed; ``scopes``: scope (``EU``, ``DE``, ``US-CA``) ->
    purpose -> allowed, for the purposes the scope sets. Build it with :meth:`parse`.
    """

    default: Mapping[str, bool] = field(default_factory=lambda: dict(BUILTIN_DEFAULT))
    scopes: Mapping[str, Mapping[str, bool]] = field(default_factory=dict)
    _cache: dict[tuple[str | None, str | None], dict[str, bool]] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def parse(cls, default: str = "", regions: str = "") -> ConsentPolicy:
        """The policy from the two settings' strings (module docstring: the format).

        Raises :class:`ConsentConfigError` naming the setting, the entry and the fault.
        """
        base = dict(BUILTIN_DEFAULT)
        entries = _entries(default)
        if len(entries) == 1 and "=" not in entries[0]:
            allowed = _mode(entries[0], "ATTUNE_CONSENT_DEFAULT")
            base = dict.fromkeys(PURPOSES, allowed)
        else:
            seen: set[str] = set()
            for entry in entries:
                where = f"ATTUNE_CONSENT_DEFAULT entry {entry!r}"
                name, sep, mode = entry.partition("=")
                if not sep:
                    raise ConsentConfigError(
                        f"{where}: expected PURPOSE=MODE, e.g. marketing=opt-in"
                    )
                purpose = _purpose(name, where)
                if purpose in seen:
                    raise ConsentConfigError(f"{where}: {purpose} is set twice")
                seen.add(purpose)
                base[purpose] = _mode(mode, where)
        scopes: dict[str, dict[str, bool]] = {}
        for entry in _entries(regions):
            where = f"ATTUNE_CONSENT_REGIONS entry {entry!r}"
            lhs, sep, mode = entry.partition("=")
            if not sep:
                raise ConsentConfigError(
                    f"{where}: expected SCOPE=MODE or SCOPE:PURPOSE=MODE, e.g. EU=opt-in"
                )
            scope_raw, colon, purpose_raw = lhs.partition(":")
            scope = scope_raw.strip().upper()
            if not (scope in GROUPS or _COUNTRY.match(scope) or _SUBDIVISION.match(scope)):
                raise ConsentConfigError(
                    f"{where}: scope {scope_raw.strip()!r} is not EU, EEA, a country code (DE) "
                    "or a subdivision code (US-CA)"
                )
            allowed = _mode(mode, where)
            purposes = (_purpose(purpose_raw, where),) if colon else PURPOSES
            mine = scopes.setdefault(scope, {})
            for purpose in purposes:
                if purpose in mine:
                    raise ConsentConfigError(f"{where}: {scope} {purpose} is set twice")
                mine[purpose] = allowed
        return cls(base, scopes)

    def defaults_for(self, country: str | None, region: str | None) -> dict[str, bool]:
        """What applies, per purpose, to a user in ``country``/``region`` who said nothing."""
        key = (country, region)
        cached = self._cache.get(key)
        if cached is not None:
            return dict(cached)
        chain: list[str] = []
        if region:
            chain.append(region)
        if country:
            chain.append(country)
            chain += [g for g, members in GROUPS.items() if country in members]
        out = dict(self.default)
        for scope in reversed(chain):  # the most specific last: it wins
            out.update(self.scopes.get(scope, {}))
        if len(self._cache) < 4096:  # bounded: countries x subdivisions seen
            self._cache[key] = out
        return dict(out)

    def allowed(
        self,
        state: ConsentState | None,
        purpose: str,
        at_ms: int | None = None,
        until_ms: int | None = None,
    ) -> bool:
        """May this user's data be used for ``purpose`` at event time ``at_ms``? The one
        consent decision of the flow: the privacy gate, the identity step, the shared
        learners (analytics) and the triggers (marketing, personalization) all ask it.

        ``at_ms=None``: as the user stands now, by their latest statement in event time
        (a tie in time goes to the statement that arrived later), else the default of where
        they are; what the gate asks of each event, so a consent change takes effect from
        the next event on.

        ``at_ms`` given: as of that event time (the latest kept statement at or before it,
        else the default of where the user is) and, with ``until_ms``, not withdrawn from
        it through ``until_ms``. A function of the statements, not of the order they
        arrived in, so a trigger judged late (its judgement waited for other events) is
        decided as one judged on time. When the kept statements (:data:`MAX_STATEMENTS`)
        no longer reach back to ``at_ms``, the answer is no.

        >>> policy, cs = ConsentPolicy(), ConsentState()
        >>> cs.observe(1_000, ConsentUpdate(marketing=True))
        >>> cs.observe(5_000, ConsentUpdate(marketing=False))
        >>> policy.allowed(cs, MARKETING), policy.allowed(cs, MARKETING, 2_000)
        (False, True)
        >>> [policy.allowed(cs, MARKETING, a, b) for a, b in
        ...  [(1_000, 4_999), (1_000, 5_000), (6_000, 7_000), (500, 900)]]
        [True, False, False, False]
        """
        if state is None:
            return self._default(None, None, purpose)
        if at_ms is None:
            stated = state.stated.get(purpose)
            if stated is not None:
                return stated[1]
            return self._default(state.country, state.region, purpose)
        end_ms = at_ms if until_ms is None else until_ms
        log = state.log.get(purpose, ())
        before = [given for t, given in log if t <= at_ms]
        if before:
            allowed = before[-1]
        elif len(log) >= MAX_STATEMENTS:
            return False  # what was said at at_ms is no longer kept
        else:
            allowed = self._default(state.country, state.region, purpose)
        return allowed and not any(not given for t, given in log if at_ms < t <= end_ms)

    def _default(self, country: str | None, region: str | None, purpose: str) -> bool:
        cached = self._cache.get((country, region))
        if cached is None:
            cached = self.defaults_for(country, region)
        return cached[purpose]

    def describe(self) -> str:
        """One line for logs: the default and the region overrides."""
        modes = {True: OPT_OUT, False: OPT_IN}
        base = ",".join(f"{p}={modes[self.default[p]]}" for p in PURPOSES)
        regions = ",".join(
            f"{s}:{p}={modes[v]}" for s, ps in sorted(self.scopes.items()) for p, v in ps.items()
        )
        return f"default {base}; regions {regions or '(none)'}"


#: Statements kept per purpose, for decisions as of an earlier event time.
MAX_STATEMENTS = 8


@dataclass(slots=True)
class ConsentState:
    """One user's consent: per purpose the latest statement ``(event time, given)``, the
    latest :data:`MAX_STATEMENTS` statements in event-time order, and where they are (from
    the latest event whose context names a country). Pickles; small."""

    stated: dict[str, tuple[int, bool]] = field(default_factory=dict)
    log: dict[str, list[tuple[int, bool]]] = field(default_factory=dict)
    country: str | None = None
    region: str | None = None
    located_ms: int = 0

    def observe(self, t: int, update: ConsentUpdate) -> None:
        """Apply a consent update; per purpose the latest in event time wins (``None``: as
        it was). A tie in time goes to the update that arrived later."""
        for purpose in PURPOSES:
            given = getattr(update, purpose)
            if given is not None:
                old = self.stated.get(purpose)
                if old is None or t >= old[0]:
                    self.stated[purpose] = (t, bool(given))
                log = self.log.setdefault(purpose, [])
                insort(log, (t, bool(given)))
                if len(log) > MAX_STATEMENTS:
                    del log[0]

    def locate(self, t: int, ctx: Context | None) -> None:
        """Take the country and region of an event's context, if it names them and is not
        older than what is known."""
        if ctx is None or t < self.located_ms:
            return
        country = ctx.country
        region = ctx.region
        if country == self.country and region == self.region:  # most events: where they were
            if country or region:  # (what is kept is normalised already)
                self.located_ms = t
            return
        if not country and not region:
            return
        region = region.upper() if region else None
        if not country and region:
            country = region[:2]
        self.country = country.upper() if country else None
        self.region = region
        self.located_ms = t

    def same_place(self, ctx: Context | None) -> bool:
        """Whether an event's context leaves the user where they are: :meth:`locate` would
        change nothing but the time it was known (so would no default of a purpose).

        >>> cs = ConsentState()
        >>> cs.locate(1_000, Context(country="DE"))
        >>> cs.same_place(Context(country="DE")), cs.same_place(Context(country="FR"))
        (True, False)
        """
        return ctx is None or (ctx.country == self.country and ctx.region == self.region)

    def is_empty(self) -> bool:
        return not self.stated and self.country is None and self.region is None
