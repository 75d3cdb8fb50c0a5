"""The installed code lives under one namespace, ``attune.*`` (issue 13): importing every
module of it from outside the source tree brings in no top-level ``flows``,
``operators``, ``bench`` or ``clients`` package, and every module imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import importlib, pkgutil, sys
import attune.flows, attune.operators, attune.bench, attune.clients, attune.avro, attune.workload
names = []
for pkg in (attune.flows, attune.operators, attune.bench, attune.clients, attune.workload):
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(info.name)
        names.append(info.name)
top = {"flows", "operators", "bench", "clients"}
generic = sorted(m for m in sys.modules if m.split(".")[0] in top)
print(len(names), generic)
"""


def test_every_module_imports_under_the_attune_namespace_alone(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=tmp_path,  # not the source tree: what an installed package sees
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    count, generic = done.stdout.split(" ", 1)
    assert int(count) > 40
    assert generic.strip() == "[]"


def test_the_flow_operators_do_not_import_the_workload(tmp_path: Path) -> None:
    """The synthetic workload serves demos, tests and benches: the operators stand alone."""
    script = (
        "import importlib, pkgutil, sys, attune.operators as o\n"
        "for i in pkgutil.walk_packages(o.__path__, 'attune.operators.'):\n"
        "    importlib.import_module(i.name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('attune.workload')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert done.stdout.strip() == "[]"
