"""The client library stands alone (issue 13): an app that only reads triggers or
recommendations imports ``attune.clients`` without the flows package (whose import
sets BLAS thread variables for the dataflow) and without River."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import importlib, json, os, pkgutil, sys
import attune.clients
names = [info.name for info in pkgutil.walk_packages(attune.clients.__path__, "attune.clients.")]
for name in names:
    importlib.import_module(name)
print(json.dumps({
    "file": attune.clients.__file__,
    "modules": ["attune.clients", *names],
    "flows": sorted(m for m in sys.modules if m == "attune.flows" or m.startswith("attune.flows.")),
    "river": sorted(m for m in sys.modules if m == "river" or m.startswith("river.")),
    "blas": sorted(v for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
                   if v in os.environ),
}))
"""


def test_the_clients_import_neither_the_flows_nor_river(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT)  # this tree's attune/, ahead of any installed copy
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=tmp_path,  # a fresh interpreter outside the source tree
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    seen = json.loads(done.stdout)
    assert Path(seen["file"]).resolve().is_relative_to(ROOT)  # the code under test
    assert {"attune.clients.subscriber", "attune.clients.recommendations"} <= set(seen["modules"])
    assert seen["flows"] == []
    assert seen["river"] == []
    assert seen["blas"] == []  # the app's threading left as it was
