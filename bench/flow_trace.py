"""Where the flow stalls: ``attune bench latency --trace PATH``.

The wrapper ``python -m attune.bench.flow_trace OUT.jsonl IMPORT [bytewax.run
flags]`` runs ``bytewax.run``'s own ``__main__`` (as
:mod:`attune.bench.flow_profile` does) after timing, with a monotonic clock,
every call Bytewax's Rust makes into the flow's Python code on a worker thread:

- the per-batch callables of the core operators (``mapper``: every ``map``,
  ``filter_map``, ``flat_map_batch``, ``branch``, ``key_on`` step);
- every method of the stateful logics (``on_batch``, ``on_notify``, ``on_eof``,
  ``notify_at``, ``snapshot``) and of the source and sink partitions
  (``next_batch``, ``next_awake``, ``write_batch``, ``snapshot``, ``close``),
  patched on their classes when a builder first returns one;
- the **gaps** between two such calls: time the worker spent outside Python
  code of the flow (Bytewax's Rust: routing, epochs, pickling snapshots; or
  waiting for the GIL), labelled ``(bytewax)``;
- Python's garbage collector (``gc.callbacks``), labelled ``(gc genN)``.

Unlike cProfile this costs two clock reads per call, not one hook per Python
function, so the flow keeps its timing. Each line of ``OUT.jsonl`` is one
``bucket_ms`` window (100 ms) in which the traced time reached
``threshold_ms`` (20 ms), or one call or gap that lasted at least
``threshold_ms`` on its own: ``{"wall_ms": start (epoch ms), "what": label,
"ms": duration}`` for a call, ``{"bucket_wall_ms": ..., "ms": {label: ms}}``
for a window. Thresholds come from ``ATTUNE_TRACE_THRESHOLD_MS`` and
``ATTUNE_TRACE_BUCKET_MS``. Lines are written as they happen (line-buffered),
so a flow killed by SIGTERM/SIGKILL leaves what it saw.

>>> t = Tracer(threshold_ms=50.0, bucket_ms=100.0, out=None, clock=iter([0.0, 0.06]).__next__)
>>> t.enter()
>>> t.leave("step.on_batch")
>>> [(r["what"], round(r["ms"])) for r in t.records]
[('step.on_batch', 60)]
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

#: Methods of stateful logics and partitions that Bytewax calls (patched on the class).
TRACED_METHODS = (
    "on_batch",
    "on_notify",
    "on_eof",
    "notify_at",
    "snapshot",
    "next_batch",
    "next_awake",
    "write_batch",
    "close",
)


class Tracer:
    """Times calls on the worker thread; writes slow calls, gaps and busy windows."""

    def __init__(
        self,
        threshold_ms: float,
        bucket_ms: float,
        out: IO[str] | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold_s = threshold_ms / 1000
        self.bucket_s = bucket_ms / 1000
        self.out = out
        self.clock = clock
        self.records: list[dict[str, Any]] = []  # when out is None (tests)
        self.depth = 0
        self.start = 0.0
        self.last_exit: float | None = None
        self.bucket: int | None = None
        self.sums: dict[str, float] = defaultdict(float)
        self.items_in = 0  # items the sources returned in the current window
        self.offset_ms = time.time() * 1000 - time.monotonic() * 1000  # monotonic -> wall

    def _emit(self, record: dict[str, Any]) -> None:
        if self.out is None:
            self.records.append(record)
        else:
            self.out.write(json.dumps(record) + "\n")

    def _add(self, what: str, start: float, end: float) -> None:
        took = end - start
        if took >= self.threshold_s:
            self._emit(
                {"wall_ms": round(self.offset_ms + start * 1000, 1), "what": what, "ms": took * 1e3}
            )
        bucket = int(start / self.bucket_s) if self.bucket_s > 0 else 0
        if bucket != self.bucket:
            self.flush()
            self.bucket = bucket
        self.sums[what] += took

    def flush(self) -> None:
        """Write the current window if its traced time reached the threshold."""
        if self.bucket is not None and sum(self.sums.values()) >= self.threshold_s:
            self._emit(
                {
                    "bucket_wall_ms": round(self.offset_ms + self.bucket * self.bucket_s * 1e3, 1),
                    "ms": {k: round(v * 1e3, 2) for k, v in sorted(self.sums.items())},
                    "items_in": self.items_in,
                }
            )
        self.sums = defaultdict(float)
        self.items_in = 0

    def enter(self) -> None:
        if self.depth == 0:
            now = self.clock()
            if self.last_exit is not None:
                self._add("(bytewax)", self.last_exit, now)
            self.start = now
        self.depth += 1

    def leave(self, what: str) -> None:
        self.depth -= 1
        if self.depth == 0:
            now = self.clock()
            self._add(what, self.start, now)
            self.last_exit = now

    def gc_callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = self.clock()
        elif hasattr(self, "_gc_start"):
            self._add(f"(gc gen{info.get('generation')})", self._gc_start, self.clock())

    def wrap(self, fn: Callable[..., Any], what: str) -> Callable[..., Any]:
        enter, leave, sums = self.enter, self.leave, self
        counted = what.endswith(".next_batch")  # items a source partition returned

        def traced(*args: Any, **kwargs: Any) -> Any:
            enter()
            try:
                out = fn(*args, **kwargs)
            finally:
                leave(what)  # may close the window: the items count in the call's own
            if counted and isinstance(out, list):
                sums.items_in += len(out)
            return out

        traced.__wrapped__ = fn  # type: ignore[attr-defined]
        return traced


class FlowTracer:
    """Wraps a flow's core operators' callables and the classes their builders return."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        self.patched: set[type] = set()
        self.lock = threading.Lock()

    def patch_class(self, obj: Any) -> Any:
        cls = type(obj)
        if cls in self.patched:
            return obj
        with self.lock:
            if cls in self.patched:
                return obj
            for name in TRACED_METHODS:
                fn = getattr(cls, name, None)
                if callable(fn):
                    setattr(cls, name, self.tracer.wrap(fn, f"{cls.__name__}.{name}"))
            self.patched.add(cls)
        return obj

    def building(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def build(*args: Any, **kwargs: Any) -> Any:
            return self.patch_class(fn(*args, **kwargs))

        return build

    def instrument(self, flow: Any) -> int:
        count = 0
        steps = list(getattr(flow, "substeps", []))
        while steps:
            step = steps.pop()
            children = list(getattr(step, "substeps", []) or [])
            steps.extend(children)
            if children:
                continue
            sid = str(getattr(step, "step_id", "?")).rsplit(".", 1)[-1]
            mapper = getattr(step, "mapper", None)
            if callable(mapper):
                object.__setattr__(step, "mapper", self.tracer.wrap(mapper, f"{sid}.mapper"))
                count += 1
            builder = getattr(step, "builder", None)
            if callable(builder):
                object.__setattr__(step, "builder", self.building(builder))
                count += 1
            for name in ("source", "sink"):
                target = getattr(step, name, None)
                for method in ("build_part", "build"):
                    fn = getattr(target, method, None) if target is not None else None
                    if callable(fn):
                        try:
                            setattr(target, method, self.building(fn))
                            count += 1
                        except AttributeError:
                            continue
        return count


def _traced(real: Callable[..., Any], out: Path) -> Callable[..., Any]:
    def cli_main(*args: Any, **kwargs: Any) -> Any:
        threshold = float(os.environ.get("ATTUNE_TRACE_THRESHOLD_MS", "20"))
        bucket = float(os.environ.get("ATTUNE_TRACE_BUCKET_MS", "100"))
        with out.open("w", buffering=1) as f:
            tracer = Tracer(threshold, bucket, f)
            n = FlowTracer(tracer).instrument(kwargs.get("flow"))
            f.write(
                json.dumps({"wrapped": n, "threshold_ms": threshold, "bucket_ms": bucket}) + "\n"
            )
            gc.callbacks.append(tracer.gc_callback)
            try:
                return real(*args, **kwargs)
            finally:
                tracer.flush()

    return cli_main


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m attune.bench.flow_trace OUT.jsonl IMPORT [flags]``: bytewax.run, traced."""
    from attune.bench.flow_profile import run_wrapped

    run_wrapped(
        argv,
        _traced,
        "python -m attune.bench.flow_trace OUT.jsonl IMPORT_STR [bytewax.run flags]",
    )


if __name__ == "__main__":
    main()
