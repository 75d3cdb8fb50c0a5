"""Attune flows: the composition root, configuration and the `attune` CLI.

Importing the package makes BLAS single-threaded unless the environment says
otherwise: Attune's models multiply small matrices per call (catalogue x
32..256 in a ranking), where threaded BLAS only adds contention (measured
4.3 ms against 0.12 ms for a 2000 x 256 product on a loaded 2-core machine),
and Attune scales with processes, not threads. It must happen before numpy
loads, hence here, the first module of every ``attune`` command and flow.
"""

import gc
import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

#: Cyclic-GC thresholds of a flow process (CPython's default: 700, 10, 10).
GC_THRESHOLDS = (10_000, 10, 10)


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a flow process; call once it is built.

    The flow allocates many short-lived containers per event (decoded events, outputs,
    snapshot decoding) over a large long-lived heap (catalogue, user states, models), and
    with CPython's default thresholds full collections, which scan that whole heap, took
    ~20% of the embedded flow's time (4.5 s of 23 s in 22 collections, 1,000 users x 7
    days). Start-up objects are frozen out of every later collection (``gc.freeze``), and
    collections run after 10,000 allocations instead of 700: ~1.3 s in all then. Nothing
    the flow computes depends on when garbage is collected; peak memory did not change.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
