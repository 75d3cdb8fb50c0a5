"""Attune flows: the composition root, configuration and the `attune` CLI.

Importing the package makes BLAS single-threaded unless the environment says
otherwise: Attune's models multiply small matrices per call (catalogue x
32..256 in a ranking), where threaded BLAS only adds contention (measured
4.3 ms against 0.12 ms for a 2000 x 256 product on a loaded 2-core machine),
and Attune scales with processes, not threads. It must happen before numpy
loads, hence here, the first module of every ``attune`` command and flow.
"""

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
