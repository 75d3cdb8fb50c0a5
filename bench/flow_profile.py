"""Where the flow's time goes: ``attune bench throughput --profile``.

Two parts:

- **The wrapper** (``python -m attune.bench.flow_profile OUT.pstats IMPORT
  [bytewax.run flags]``) runs ``bytewax.run``'s own ``__main__`` (so flags and
  environment mean what they mean for ``python -m bytewax.run``) with
  ``bytewax._bytewax.cli_main`` replaced by a function that runs it under
  :class:`cProfile.Profile`. Imports and the building of the flow happen
  before ``cli_main`` and are left out; the worker's run, from its first
  poll to the end of the topic, is profiled. A JSON file next to the profile
  (``OUT.json``) holds the wall and CPU seconds of that section. cProfile sees
  the thread it is enabled on only: the worker of a ``-w 1`` process runs on
  the main thread, the extra workers of ``-w N`` are Rust threads it does not
  see, so the bench profiles one worker per process.

- **The analysis** (pure, tested in tests/unit/test_bench.py): every function
  of the profile is put in a stage of the flow by its module and name
  (:data:`STAGES`, the one place to update when modules move); the own time
  of library code (numpy, orjson, redis-py, builtins...) goes to the stage
  that called it, following the profile's caller edges, so that the stages'
  *self* shares add up to 100% of the profiled total. Each stage's *incl.*
  share is the time from entering it to leaving it, callees of other stages
  included, so those overlap.

cProfile inflates Python-heavy code (one hook per call: many small calls cost
most) against C, numpy and Rust: shares are a guide to where to look, not a
measurement. Its timer is the wall clock, so time blocked in a call (a Kafka
poll waiting, a Redis round trip) counts as that call's; the section's CPU
seconds are printed next to the profiled total for that reason. Bytewax's own
Rust work, including pickling state for snapshots (``pickle.dumps`` called
from Rust), is invisible to cProfile and shows as the own time of
``cli_main``: the row "Bytewax overhead".
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import site
import sys
import sysconfig
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# --- stages --------------------------------------------------------------------------------

#: The flow's stages and what belongs to them: glob patterns over ``module:function``
#: (``module`` dotted; C functions have module ``~`` and a function like ``<built-in
#: method _pickle.dumps>``). The first stage with a matching pattern wins, so a stage of
#: specific functions (snapshots) comes before the stages of whole modules. Library code
#: matching no pattern is attributed to the stage that called it. When operators move
#: (operators/profiles.py is being split into user_* modules), add the new module names
#: here: nothing else needs to change.
STAGES: dict[str, tuple[str, ...]] = {
    # Bytewax calls each stateful logic's snapshot() every epoch a key was touched (0.21
    # snapshots with or without recovery); pickling what it returns happens in Rust (see
    # the Bytewax row). __reduce__ & co. are called by that pickling. Not
    # embeddings:snapshot, which is item2vec's model snapshot (models/ranking).
    "snapshots/pickle": (
        "attune.operators.identity:snapshot",
        "attune.operators.profiles:snapshot",
        "attune.operators.user_*:snapshot",
        "attune.operators.models:snapshot",
        "attune.operators.clustering:snapshot",
        "attune.operators.sources:snapshot",
        "attune.operators.snapshots",  # the state pickler (and identity's buffered events)
        "*:__reduce__",
        "*:__reduce_ex__",
        "*:__getstate__",
        "*:__setstate__",
        "attune.operators.events:reduce",  # events.py's _fast_pickle
        "copyreg:*",
        "pickle:*",
        "~:*_pickle.*",
    ),
    # The two single-key learners (one worker runs each; issue 14 asks that neither be a
    # bottleneck): their own functions, before the modules they share with the read side.
    # Functions both sides call (propensity's feature vector, numpy, River) count where
    # they are called from only when they match no pattern (library code): the incl.
    # column is the learners' whole cost.
    "model learner": (
        "attune.operators.models:on_batch",
        "attune.operators.models:on_notify",
        "attune.operators.models:on_eof",
        "attune.operators.models:_publish",
        "attune.operators.models:learn",
        "attune.operators.models:_trend",
        "attune.operators.models:publish",
        "attune.operators.models:_neighbour_lists",
        "attune.operators.models:_best",
        "attune.operators.models:put_state",
        "attune.operators.models:put_states",
        "attune.operators.models:_changed_trends",
        "attune.operators.models:code",
        "attune.operators.models:encode",
        "attune.operators.models:_le_bytes",
        "attune.operators.models:_lens",
        "attune.operators.embeddings:learn_sessions",
        "attune.operators.embeddings:_pairs",
        "attune.operators.embeddings:_rows",
        "attune.operators.embeddings:_step",
        "attune.operators.embeddings:_apply",
        "attune.operators.embeddings:to_bytes",
        "attune.operators.propensity:learn",
        "attune.operators.propensity:_step",
        "attune.operators.propensity:_score",
        "attune.operators.propensity:_terms",
        "attune.operators.propensity:_warm_retrain",
        "attune.operators.propensity:metrics",
        "attune.operators.covisit:learn",
        "attune.operators.covisit:update",
        "attune.operators.covisit:_rebase",
        "attune.operators.covisit:session_pairs",
        "attune.operators.covisit:purchase_pairs",
        "attune.operators.covisit:_published",
        "attune.operators.trending:update",
        "attune.operators.trending:log_weight",
        "attune.operators.trending:logaddexp2",
        "attune.operators.trending:scopes_of",
        "attune.operators.trending:scope_names",
        "attune.operators.trending:segment_scope",
    ),
    "cluster learner": (
        "attune.operators.clustering:on_batch",
        "attune.operators.clustering:on_eof",
        "attune.operators.clustering:_publish",
        "attune.operators.clustering:learn_many",
        "attune.operators.clustering:params",
        "attune.operators.clustering:_seed_centres",
        "attune.operators.clustering:_row",
    ),
    "source/decode": (
        "attune.operators.sources",
        "attune.operators.codec",
        "attune.operators.schemas",
        "attune.operators.schema_registry",
        "attune.operators.diagnosis",
        "attune.operators.container",
        "attune.operators.datum_reader",
        "attune.operators.events",
        "attune.operators.privacy",  # pseudonymisation, in the source partition
        "attune.operators.stream_clock",  # watermarks, reported by the source partition
    ),
    "identity": ("attune.operators.identity",),
    "per-user step": (
        "attune.operators.profiles",
        "attune.operators.user_*",
        "attune.operators.sessions",
        "attune.operators.dedupe",
        "attune.operators.cart",
        "attune.operators.consent",
        "attune.operators.features",
        "attune.operators.erasure",
        "attune.operators.clock",
    ),
    "segments": (
        "attune.operators.segments",
        "attune.operators.membership",
        "attune.operators.conditions",  # the condition language, shared with trigger rules
        "attune.operators.rule_files",
        "attune.operators.clustering",
    ),
    "models/ranking": (
        "attune.operators.models",
        "attune.operators.ranking",
        "attune.operators.recs_encoding",  # the recs value, built after ranking
        "attune.operators.scoring",
        "attune.operators.propensity",
        "attune.operators.embeddings",
        "attune.operators.covisit",
        "attune.operators.content",
        "attune.operators.trending",
        "attune.operators.metrics",
    ),
    "triggers": (
        "attune.operators.triggers",
        "attune.operators.trigger_*",
        "attune.operators.rules",
    ),
    "Redis sink": (
        "attune.operators.redis_sink",
        "attune.operators.redis_keys",
        "attune.operators.redis_retry",
    ),
    "Kafka sinks": ("attune.operators.kafka_sink",),
    # The flow's small functions between steps (key_on, map, branch callbacks), its sink
    # wrappers and its set-up.
    "flow glue (attune.flows)": (
        "attune.flows.*",
        "attune.operators.settings",
        "attune.operators.connect_check",  # start-up checks
    ),
    "Bytewax overhead": ("bytewax.*", "~:<built-in method bytewax.*"),
}
#: Own time of functions with no stage and no caller with one.
OTHER = "other"

#: A function of a profile: (file name, line, function name), as :mod:`pstats` keys them.
Func = tuple[str, int, str]
#: One caller edge: (primitive calls, calls, own time, cumulative time).
Edge = tuple[int, int, float, float]
#: A profile's raw entries, as ``pstats.Stats.stats``: function -> (cc, nc, tt, ct, callers).
RawStats = Mapping[Func, tuple[int, int, float, float, Mapping[Func, Edge]]]


def stage_of(
    module: str, function: str, stages: Mapping[str, Sequence[str]] = STAGES
) -> str | None:
    """The stage of ``module:function``, or ``None`` (library code: its caller's stage).

    A pattern without ``:`` covers every function of the modules it matches.

    >>> stage_of("attune.operators.ranking", "rank")
    'models/ranking'
    >>> [stage_of("attune.operators.profiles", f) for f in ("snapshot", "apply")]
    ['snapshots/pickle', 'per-user step']
    >>> stage_of("attune.operators.user_step", "step"), stage_of("numpy.core.fromnumeric", "sum")
    ('per-user step', None)
    """
    for stage, patterns in stages.items():
        for pattern in patterns:
            mod_pat, _, func_pat = pattern.partition(":")
            func_pat = func_pat or "*"
            if fnmatch.fnmatchcase(module, mod_pat) and fnmatch.fnmatchcase(function, func_pat):
                return stage
    return None


def module_roots(packages: Iterable[str] = ()) -> dict[str, str]:
    """Folders whose files are modules, each with the package its files belong to.

    The project's packages (``attune.flows``, ``attune.operators``...) at the folders
    they are imported from here, then site-packages and the standard library (no
    package prefix). Real paths: attune/ holds symlinks.
    """
    roots: dict[str, str] = {}
    for folder in [*site.getsitepackages(), site.getusersitepackages()]:
        roots[os.path.realpath(folder)] = ""
    for key in ("stdlib", "platstdlib"):
        roots.setdefault(os.path.realpath(sysconfig.get_paths()[key]), "")
    for package in packages:
        spec = importlib.util.find_spec(package)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            roots[os.path.realpath(folder)] = package
    return roots


#: The packages whose folders :func:`module_roots` maps by default.
PROJECT_PACKAGES = (
    "attune.flows",
    "attune.operators",
    "attune.workload",
    "attune.bench",
    "attune.clients",
)


def module_of(filename: str, roots: Mapping[str, str]) -> str:
    """The dotted module name of a profiled file name (``~`` for C functions).

    >>> roots = {"/src/operators": "attune.operators", "/py/site-packages": ""}
    >>> module_of("/src/operators/ranking.py", roots)
    'attune.operators.ranking'
    >>> module_of("/py/site-packages/numpy/core/__init__.py", roots)
    'numpy.core'
    >>> module_of("~", roots), module_of("<frozen importlib._bootstrap>", roots)
    ('~', 'importlib._bootstrap')
    """
    if filename == "~":
        return "~"
    if filename.startswith("<frozen ") and filename.endswith(">"):
        return filename[len("<frozen ") : -1]
    if filename.startswith("<"):
        return filename
    real = os.path.realpath(filename) if os.path.isabs(filename) else filename
    best = ""
    for root in roots:
        if (real.startswith(root + os.sep) or filename.startswith(root + os.sep)) and len(
            root
        ) > len(best):
            best = root
    if not best:
        return os.path.splitext(os.path.basename(filename))[0]
    rel = (real if real.startswith(best + os.sep) else filename)[len(best) + 1 :]
    parts = os.path.splitext(rel)[0].split(os.sep)
    if parts[-1] == "__init__":
        parts.pop()
    prefix = roots[best]
    return ".".join([prefix, *parts] if prefix else parts) or prefix


# --- the analysis ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StageShare:
    """One stage: own time (library code lifted to it) and time inside it, seconds and %."""

    stage: str
    self_s: float
    self_pct: float
    incl_s: float | None
    incl_pct: float | None


@dataclass(frozen=True, slots=True)
class TopFunction:
    """One of the functions with the most own time."""

    function: str
    stage: str
    own_s: float
    own_pct: float
    calls: int
    cum_s: float


@dataclass(frozen=True, slots=True)
class ProfileReport:
    """A profile grouped by stage; ``total_s`` is the sum of every function's own time."""

    total_s: float
    stages: list[StageShare]
    top: list[TopFunction]


def _label(func: Func, module: str) -> str:
    _file, line, name = func
    if module == "~":
        return name
    return f"{module}:{line}({name})"


def _mix(parts: Iterable[tuple[float, Mapping[str, float]]]) -> dict[str, float]:
    """The weighted mean of stage distributions (weights need not add up to 1)."""
    out: dict[str, float] = {}
    total = 0.0
    for weight, dist in parts:
        if weight <= 0 or not dist:
            continue
        total += weight
        for stage, share in dist.items():
            out[stage] = out.get(stage, 0.0) + weight * share
    return {s: v / total for s, v in out.items()} if total > 0 else {}


def analyze(
    raw: RawStats,
    roots: Mapping[str, str],
    *,
    stages: Mapping[str, Sequence[str]] = STAGES,
    top: int = 15,
) -> ProfileReport:
    """Group a profile's times by stage (see the module's docstring) and list the top functions.

    ``raw`` is ``pstats.Stats(...).stats``. Every function's own time goes to its
    stage, or, for library code, to its callers' stages in proportion to the own
    time each caller edge carries, and further up through library callers in
    proportion to cumulative time, until a function with a stage is reached
    (:data:`OTHER` when none is). A stage's inclusive time sums the cumulative
    time of the edges entering it from functions of other stages (and of its
    functions nothing called).
    """
    modules = {f: module_of(f[0], roots) for f in raw}
    own_stage = {f: stage_of(modules[f], f[2], stages) for f in raw}
    memo: dict[Func, dict[str, float]] = {}
    visiting: set[Func] = set()

    def upward(func: Func, depth: int = 0) -> dict[str, float]:
        """The stages ``func``'s time belongs to, as a caller (by cumulative time)."""
        stage = own_stage.get(func)
        if stage is not None:
            return {stage: 1.0}
        if func in memo:
            return memo[func]
        if func in visiting or depth > 200 or func not in raw:
            return {}
        visiting.add(func)
        callers = raw[func][4]
        dist = _mix((edge[3] or edge[1], upward(c, depth + 1)) for c, edge in callers.items())
        visiting.discard(func)
        memo[func] = dist or {OTHER: 1.0}
        return memo[func]

    selfs: dict[str, float] = {}
    attributed: dict[Func, dict[str, float]] = {}
    total = 0.0
    for func, (_cc, _nc, tt, _ct, callers) in raw.items():
        total += tt
        stage = own_stage[func]
        if stage is not None:
            dist = {stage: 1.0}
        else:
            dist = _mix((edge[2] or edge[3], upward(c)) for c, edge in callers.items())
            dist = dist or {OTHER: 1.0}
        attributed[func] = dist
        for s, share in dist.items():
            selfs[s] = selfs.get(s, 0.0) + tt * share

    def main_stage(func: Func) -> str:
        dist = attributed.get(func) or upward(func)
        return max(dist, key=lambda s: dist[s]) if dist else OTHER

    incl: dict[str, float] = {}
    for func, (_cc, _nc, _tt, ct, callers) in raw.items():
        stage = own_stage[func]
        if stage is None:
            continue
        if not callers:
            incl[stage] = incl.get(stage, 0.0) + ct
            continue
        for caller, edge in callers.items():
            if main_stage(caller) != stage:
                incl[stage] = incl.get(stage, 0.0) + edge[3]

    def pct(x: float) -> float:
        return 100.0 * x / total if total > 0 else 0.0

    order = [*stages, OTHER]
    shares = [
        StageShare(
            s,
            selfs.get(s, 0.0),
            pct(selfs.get(s, 0.0)),
            min(incl[s], total) if s in incl else None,
            pct(min(incl[s], total)) if s in incl else None,
        )
        for s in order
        if s in selfs or s in incl
    ]
    shares.sort(key=lambda x: -x.self_s)
    heavy = sorted(raw.items(), key=lambda kv: -kv[1][2])[:top]
    tops = [
        TopFunction(_label(f, modules[f]), main_stage(f), v[2], pct(v[2]), v[1], v[3])
        for f, v in heavy
    ]
    return ProfileReport(total, shares, tops)


def load(paths: Sequence[Path]) -> RawStats:
    """The profiles at ``paths`` (one per flow process), added together."""
    import pstats

    stats = pstats.Stats(*[str(p) for p in paths])
    raw: RawStats = stats.stats  # type: ignore[attr-defined]
    return raw


def format_report(report: ProfileReport, *, top: int = 15) -> str:
    """The stage table and the top functions by own time, as text."""
    header = ("stage", "self %", "self s", "incl. %")
    rows = [
        (
            s.stage,
            f"{s.self_pct:.1f}",
            f"{s.self_s:.2f}",
            "-" if s.incl_pct is None else f"{s.incl_pct:.1f}",
        )
        for s in report.stages
    ]
    lines = [_table(header, rows, right={1, 2, 3})]
    lines.append("")
    lines.append(f"top {min(top, len(report.top))} functions by own time")
    fheader = ("own %", "own s", "calls", "cum s", "stage", "function")
    frows = [
        (
            f"{t.own_pct:.1f}",
            f"{t.own_s:.2f}",
            f"{t.calls:,}",
            f"{t.cum_s:.2f}",
            t.stage,
            t.function,
        )
        for t in report.top[:top]
    ]
    lines.append(_table(fheader, frows, right={0, 1, 2, 3}))
    return "\n".join(lines)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)])


# --- the wrapper -------------------------------------------------------------------------------


#: Fields of Bytewax's core operators holding what Rust calls once per batch (or per key).
WRAPPED_FIELDS = ("mapper", "builder")
#: Methods Rust calls on a worker thread to build the partitions of a core operator's
#: ``source`` or ``sink`` (before its first batch).
WRAPPED_METHODS = {"source": ("build_part",), "sink": ("build_part", "build")}


class ThreadProfiles:
    """A profiler for every thread that runs a Bytewax worker, started on its first batch.

    A worker of a ``-w 1`` process runs on the main thread, which the wrapper
    profiles from the start of ``cli_main``. The workers of ``-w N`` and of a
    cluster (``-i``/``-a``) run on threads Bytewax starts from Rust, which
    cProfile never sees, and whose Python thread state Bytewax creates and drops
    around each call into Python (so a profiler set there would not last). The
    flow's core operators' per-batch callables (:data:`WRAPPED_FIELDS`) and the
    partition builders of their sources and sinks (:data:`WRAPPED_METHODS`) are
    wrapped: on a thread's first call, the thread's state is kept
    (``PyGILState_Ensure`` once more, never released: the thread is left once the
    flow is done) and a :class:`cProfile.Profile` is enabled on it.
    """

    def __init__(self, skip: int | None = None) -> None:
        import threading

        self._lock = threading.Lock()
        self._get_ident = threading.get_ident
        self.skip = skip
        self.profiles: dict[int, Any] = {}

    def ensure(self) -> None:
        ident = self._get_ident()
        if ident == self.skip or ident in self.profiles:
            return
        import cProfile
        import ctypes

        with self._lock:
            if ident in self.profiles:
                return
            ctypes.pythonapi.PyGILState_Ensure()
            profile = cProfile.Profile()
            self.profiles[ident] = profile
            profile.enable()

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        ensure = self.ensure

        def profiled_call(*args: Any, **kwargs: Any) -> Any:
            ensure()
            return fn(*args, **kwargs)

        return profiled_call

    def instrument(self, flow: Any) -> int:
        """Wrap the callables of every core operator of ``flow`` Rust calls; how many."""
        count = 0
        steps = list(getattr(flow, "substeps", []))
        while steps:
            step = steps.pop()
            children = list(getattr(step, "substeps", []) or [])
            steps.extend(children)
            if children:
                continue  # not a core operator: Rust never calls its fields
            for name in WRAPPED_FIELDS:
                fn = getattr(step, name, None)
                if callable(fn):
                    object.__setattr__(step, name, self.wrap(fn))  # frozen dataclasses
                    count += 1
            for name, methods in WRAPPED_METHODS.items():
                target = getattr(step, name, None)
                for method in methods if target is not None else ():
                    fn = getattr(target, method, None)
                    if not callable(fn):
                        continue
                    try:  # on the instance, shadowing the class's method
                        setattr(target, method, self.wrap(fn))
                    except AttributeError:  # slotted: the first batch starts the profiler
                        continue
                    count += 1
        return count


def _profiled(real: Callable[..., Any], out: Path) -> Callable[..., Any]:
    def cli_main(*args: Any, **kwargs: Any) -> Any:
        import cProfile
        import pstats
        import threading

        threads = ThreadProfiles(skip=threading.get_ident())
        wrapped = threads.instrument(kwargs.get("flow"))
        main = cProfile.Profile()
        wall0, cpu0 = time.monotonic(), time.process_time()
        main.enable()
        try:
            return real(*args, **kwargs)
        finally:
            main.disable()
            meta = {
                "wall_s": time.monotonic() - wall0,
                "process_cpu_s": time.process_time() - cpu0,
                "worker_threads": len(threads.profiles),
                "wrapped_callables": wrapped,
            }
            if threads.profiles:
                # Workers on their own threads: the main thread only waited in cli_main.
                for profile in threads.profiles.values():
                    profile.create_stats()
                stats = pstats.Stats(*threads.profiles.values())
            else:
                stats = pstats.Stats(main)
            stats.dump_stats(str(out))
            out.with_suffix(".json").write_text(json.dumps(meta) + "\n")

    return cli_main


def run_wrapped(
    argv: Sequence[str] | None,
    wrap: Callable[[Callable[..., Any], Path], Callable[..., Any]],
    usage: str,
) -> None:
    """``bytewax.run IMPORT_STR [flags]`` with Bytewax's native ``cli_main`` replaced by
    ``wrap(cli_main, OUT)``: the first argument is ``OUT``, the rest go to bytewax.run
    (shared by this module and :mod:`attune.bench.flow_trace`)."""
    import runpy

    import bytewax._bytewax as native

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        raise SystemExit(f"usage: {usage}")
    native.cli_main = wrap(native.cli_main, Path(args[0]))
    sys.argv = ["bytewax.run", *args[1:]]
    runpy.run_module("bytewax.run", run_name="__main__", alter_sys=True)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m attune.bench.flow_profile OUT.pstats IMPORT [flags]``: bytewax.run, profiled."""
    run_wrapped(
        argv,
        _profiled,
        "python -m attune.bench.flow_profile OUT.pstats IMPORT_STR [bytewax.run flags]",
    )


if __name__ == "__main__":
    main()
