"""Docs that run as written: every ```bash and ```python block of the documentation runs
in CI, or says why not.

Docs tests, the convention
--------------------------
The documentation is README.md, docs/*.md, examples/README.md and bench/README.md
(:data:`DOC_FILES`). Each of their ```bash and ```python blocks is one of:

- **run by a test**: its id (``"<file>: <first line of the block>"``) is a key of
  :data:`RUNNERS` here (fast: no servers) or of ``RUNNERS`` in
  tests/integration/test_docs.py (it needs the real Kafka and Redis of the test session).
  The runner runs the block's own text and checks the output the docs show for it;
- **marked as not run**, with the reason, by an HTML comment on the line right before its
  opening fence: ``<!-- not-run: needs Docker -->`` (the reason is not optional). The
  blocks of bench/README.md that only run benchmarks (``attune bench ...``, ``python -m
  attune.bench...``) count as marked ``long benchmark`` (:data:`BENCHMARK`): bench/ is
  edited by its owners.

:func:`test_every_block_runs_or_says_why_not` fails on a block that is neither (a new
block, or one whose first line changed), on a runner whose block is gone, and on a marked
block that also has a runner. So new docs cannot drift silently.

How a bash block runs (:func:`run_bash`): ``bash -e`` in a temporary directory, with
``attune`` on PATH a shim for ``python -m attune.flows.cli`` from this checkout (the
installed console script may import another checkout), and no ``ATTUNE_*`` variable from
the caller's environment. Integration blocks get the session's servers through
``ATTUNE_KAFKA_BOOTSTRAP``/``ATTUNE_REDIS_URL`` (and the local ports, ``ATTUNE_KAFKA_PORT``
...); where a block spells the documented local addresses (``127.0.0.1:19092``,
``redis://127.0.0.1:16379/0``) the runner substitutes the session's, and it shrinks
workloads (``--users 50 --days 1``): each substitution must match, so a changed block
fails instead of running something else. A python block runs with :func:`exec` in a fresh
namespace holding only the names the prose leaves to the reader (``trigger``, ``mailer``...).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = (
    "README.md",
    "examples/README.md",
    "bench/README.md",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")),
)
RUN_LANGS = ("bash", "python")
NOT_RUN = re.compile(r"^<!-- not-run: (?P<reason>\S.*?) -->$")
#: bench/ belongs to the benchmarks' owners (its README is not edited from here): its blocks
#: that only run benchmarks count as marked ``not-run: long benchmark``. Any other block
#: there needs a marker or a runner like everywhere else.
BENCHMARK = re.compile(r"^\s*(attune bench |python -m (attune\.)?bench\.)")


@dataclass(frozen=True)
class Block:
    """One fenced block of a doc file."""

    path: str  # relative to the repository root
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    not_run: str | None  # the reason, when marked

    @property
    def id(self) -> str:
        first = self.text.splitlines()[0].strip() if self.text.strip() else ""
        return f"{self.path}: {first}"


def short_id(block_id: str) -> str:
    """A block id as a test id: ``README.md-attune_local_up``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", block_id.replace(": ", "-"))[:48].strip("_")


def _only_benchmarks(text: str) -> bool:
    commands = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return bool(commands) and all(BENCHMARK.match(line) for line in commands)


def doc_blocks(path: str) -> list[Block]:
    """The fenced blocks of one doc file, with their not-run markers."""
    lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = re.match(r"^\s*```(\S*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        end = i + 1
        while not re.match(r"^\s*```\s*$", lines[end]):
            end += 1
        marker = NOT_RUN.match(lines[i - 1].strip()) if i else None
        text = "\n".join(lines[i + 1 : end]) + "\n"
        reason = marker.group("reason") if marker else None
        if reason is None and path == "bench/README.md" and _only_benchmarks(text):
            reason = "long benchmark"
        blocks.append(Block(path, i + 1, fence.group(1), text, reason))
        i = end + 1
    return blocks


def all_blocks(langs: tuple[str, ...] = RUN_LANGS) -> list[Block]:
    return [b for path in DOC_FILES for b in doc_blocks(path) if b.lang in langs]


def block(block_id: str) -> Block:
    (found,) = [b for b in all_blocks() if b.id == block_id]
    assert found.not_run is None, f"{block_id} is marked not-run: {found.not_run}"
    return found


def substitute(text: str, replacements: Mapping[str, str]) -> str:
    """``text`` with each key replaced; a key that does not occur fails the test (the block
    changed: its runner must change with it)."""
    for old, new in replacements.items():
        assert old in text, f"the block no longer contains {old!r}:\n{text}"
        text = text.replace(old, new)
    return text


def substitute_any(text: str, replacements: Mapping[str, str]) -> str:
    """``text`` with each key that occurs replaced; at least one must occur."""
    assert any(old in text for old in replacements), (
        f"the block contains none of {sorted(replacements)}:\n{text}"
    )
    for old, new in replacements.items():
        text = text.replace(old, new)
    return text


def attune_shim(directory: Path) -> Path:
    """A directory holding an ``attune`` that runs this checkout's CLI."""
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "attune"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m attune.flows.cli "$@"\n')
    shim.chmod(0o755)
    return directory


def docs_env(tmp: Path, extra: Mapping[str, str] = {}) -> dict[str, str]:
    """The environment a doc block runs in: no ``ATTUNE_*`` of the caller, this checkout
    first on ``PYTHONPATH``, ``attune`` on ``PATH`` the shim, then ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTUNE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env["PATH"] = f"{attune_shim(tmp / '.bin')}{os.pathsep}{env['PATH']}"
    env["ATTUNE_STATE_DIR"] = str(tmp / ".state")
    env.update(extra)
    return env


def topic_env(prefix: str) -> dict[str, str]:
    """``ATTUNE_TOPIC_*`` naming every topic of the flow ``<prefix><topic>``: a test's own."""
    return {
        "ATTUNE_TOPIC_EVENTS": f"{prefix}events",
        "ATTUNE_TOPIC_ITEMS": f"{prefix}items",
        "ATTUNE_TOPIC_TRIGGERS_PREFIX": f"{prefix}triggers.",
        "ATTUNE_TOPIC_SEGMENTS": f"{prefix}segments",
        "ATTUNE_TOPIC_DLQ": f"{prefix}dlq",
        "ATTUNE_TOPIC_ERASURES": f"{prefix}erasures",
    }


def run_bash(
    text: str, cwd: Path, env: Mapping[str, str], timeout_s: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run a bash block (``bash -e``: the first failing command fails it); its output."""
    done = subprocess.run(
        ["bash", "-e", "-c", text],
        check=False,
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert done.returncode == 0, (
        f"exit {done.returncode}\n--- block\n{text}\n--- stdout\n{done.stdout[-4000:]}"
        f"\n--- stderr\n{done.stderr[-4000:]}"
    )
    return done


def exec_python(text: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """Run a python block in a fresh namespace (plus ``namespace``)."""
    exec(compile(text, "<doc block>", "exec"), namespace)
    return namespace


# --- sample inputs the prose of docs/import.md assumes ---------------------------------------

RR_T0 = 1_433_221_332_117
MIN = 60_000
#: RetailRocket's events.csv layout: 7 rows, the summary line docs/import.md quotes.
RETAILROCKET_CSV = f"""timestamp,visitorid,event,itemid,transactionid
{RR_T0},257597,view,355908,
{RR_T0 + 40 * MIN},992329,view,248676,
{RR_T0 + 5 * MIN},257597,addtocart,355908,
{RR_T0 + 9 * MIN},257597,transaction,355908,4000
{RR_T0 + 9 * MIN},257597,transaction,111,4000
{RR_T0 + 10 * MIN},257597,transaction,7,4001
{RR_T0 + 120 * MIN},257597,view,5,
"""
MOVIELENS_CSV = """userId,movieId,rating,timestamp
1,1,4.0,964982703
1,3,4.0,964981247
2,1,5.0,964982224
2,6,3.5,964983815
3,3,2.0,964982931
"""
#: The generic map of docs/import.md, times in ISO 8601 (``--time-format auto``).
SHOP_CSV = """visitor,product,ts,action
v1,p1,2026-01-05T10:00:00Z,view
v1,p1,2026-01-05T10:01:00Z,cart
v1,p1,2026-01-05T10:02:00Z,buy
v2,p2,2026-01-05T11:00:00Z,view
v2,p3,2026-01-05T11:00:30Z,hover
"""
DOCUMENTED_RR_SUMMARY = (
    "read 7 rows, wrote 6 events (1 ADD_TO_CART, 3 PRODUCT_VIEW, 2 PURCHASE) to rr.avro; "
    "rejected 0 rows; 3 purchase rows -> 2 orders; 3 events with unknown price (XXX 0)"
)


def documented_summary() -> str:
    """The summary line docs/import.md quotes (an inline example spanning two lines)."""
    text = (ROOT / "docs" / "import.md").read_text()
    quoted = re.search(r"It ends with one summary line, e.g.\n`(.*?)`,", text, flags=re.S)
    assert quoted, "docs/import.md no longer quotes the summary line"
    return " ".join(quoted.group(1).split())


def retailrocket_log(visitors: int = 40, views: int = 12) -> str:
    """A larger log in RetailRocket's layout, enough for ``attune evaluate`` to score."""
    rows = ["timestamp,visitorid,event,itemid,transactionid"]
    for v in range(visitors):
        t = RR_T0 + v * 7 * MIN
        for n in range(views):
            item = 1000 + (v * 3 + n * 7) % 50
            rows.append(f"{t + n * MIN},{v},view,{item},")
            if n % 4 == 3:
                rows.append(f"{t + n * MIN + 1000},{v},addtocart,{item},")
            if n % 8 == 7:
                rows.append(f"{t + n * MIN + 2000},{v},transaction,{item},{v * 100 + n}")
    return "\n".join(rows) + "\n"


def movielens_log(users: int = 40, ratings: int = 12) -> str:
    """A larger log in MovieLens' ratings.csv layout."""
    rows = ["userId,movieId,rating,timestamp"]
    for u in range(1, users + 1):
        for n in range(ratings):
            rows.append(
                f"{u},{1 + (u * 5 + n * 3) % 60},{1 + (u + n) % 5}.0,{964982703 + u * 999 + n * 60}"
            )
    return "\n".join(rows) + "\n"


def write_import_inputs(cwd: Path, *, evaluated: bool = False) -> None:
    """The CSVs the import blocks name: the documented 7-row sample, or logs large enough
    to evaluate on (``evaluated``)."""
    (cwd / "events.csv").write_text(retailrocket_log() if evaluated else RETAILROCKET_CSV)
    ratings = movielens_log() if evaluated else MOVIELENS_CSV
    (cwd / "ratings.csv").write_text(ratings)
    (cwd / "ml-latest-small").mkdir()
    (cwd / "ml-latest-small" / "ratings.csv").write_text(ratings)
    (cwd / "shop.csv").write_text(SHOP_CSV)


# --- runners of the blocks that need no servers -----------------------------------------------


def run_readme_first_command(tmp: Path) -> None:
    b = block("README.md: python -m pip install -e . && attune run --users 1000 --days 7")
    # The install is the reader's (this checkout runs through the shim); the workload shrinks.
    text = substitute(
        b.text,
        {"python -m pip install -e . && ": "", "--users 1000 --days 7": "--users 50 --days 1"},
    )
    out = run_bash(text, tmp, docs_env(tmp))
    assert "report written to out/report.json" in out.stderr
    assert (tmp / "out" / "report.json").is_file()


def run_readme_import(tmp: Path) -> None:
    b = block(
        "README.md: attune import events.csv --preset retailrocket --out rr.avro "
        "--rejects rr.rejects.csv"
    )
    write_import_inputs(tmp, evaluated=True)
    out = run_bash(b.text, tmp, docs_env(tmp))
    assert re.search(
        r"^read 640 rows, wrote 640 events .* to rr\.avro; rejected 0 rows", out.stdout, re.M
    )
    assert "propensity:" in out.stdout  # evaluate's table ran to its end


def run_import_examples(tmp: Path) -> None:
    b = block(
        "docs/import.md: attune import events.csv --preset retailrocket --out rr.avro "
        "--rejects rr.rejects.csv"
    )
    write_import_inputs(tmp)
    out = run_bash(b.text, tmp, docs_env(tmp))
    assert documented_summary() == DOCUMENTED_RR_SUMMARY
    assert DOCUMENTED_RR_SUMMARY in out.stdout
    # Issue 16, finding 1: ISO 8601 times under --time-format auto (the default).
    assert re.search(r"read 5 rows, wrote 4 events .* to shop\.avro; rejected 0 rows", out.stdout)
    for name in ("rr.avro", "ml.avro", "shop.avro"):
        assert (tmp / name).is_file()


def run_import_public_sets(tmp: Path) -> None:
    b = block("docs/import.md: # RetailRocket (Kaggle: retailrocket/ecommerce-dataset), events.csv")
    write_import_inputs(tmp, evaluated=True)  # small files in the public data sets' layouts
    out = run_bash(b.text, tmp, docs_env(tmp))
    assert re.search(r"^read 640 rows, wrote 640 events .* to rr\.avro", out.stdout, re.M)
    assert re.search(
        r"^read 480 rows, wrote \d+ events .* to ml\.avro; rejected 0 rows", out.stdout, re.M
    )
    assert out.stdout.count("propensity:") == 2  # both evaluations ran to their end


def run_triggers_snippet(tmp: Path) -> None:
    from attune.operators.events import LineItem, Trigger

    b = block("docs/triggers.md: from pathlib import Path")
    (tmp / "mine.yaml").write_text(
        "rules:\n  - name: no_staff\n    enabled: false\n"  # a user file: one rule off
    )
    cause = 1_767_600_000_000
    given = {  # what the prose leaves to the reader: the trigger and the user's state
        "trigger": Trigger(
            trigger_id="t1",
            kind="cart_abandoned",
            user_id="u1",
            cause_event_time=cause,
            emit_time=cause + 1_800_000,
            reason="cart left 30 min",
            cart_lines=(LineItem("sku-1", 1, 25_000),),
            cart_value_minor=25_000,
            currency="EUR",
        ),
        "features": {"cart_value_minor": 25_000},
        "segments": frozenset(),
        "marketing_consent": True,
        "timezone": "Europe/Berlin",
        "channel": "WEB",
        "consent_floor": False,
        "state": type("State", (), {"trigger_history": None})(),
    }
    from attune.operators.rules import TriggerHistory

    given["state"].trigger_history = TriggerHistory()
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        ns = exec_python(b.text, dict(given))
    finally:
        os.chdir(cwd)
    decision = ns["decision"]
    assert [t.kind for t in decision.published] == ["cart_abandoned"]
    assert isinstance(decision.suppressed, list)


#: The blocks this module runs, by id, with their runner (a temporary directory each).
RUNNERS: dict[str, Callable[[Path], None]] = {
    "README.md: python -m pip install -e . && attune run --users 1000 --days 7": (
        run_readme_first_command
    ),
    "README.md: attune import events.csv --preset retailrocket --out rr.avro "
    "--rejects rr.rejects.csv": run_readme_import,
    "docs/import.md: attune import events.csv --preset retailrocket --out rr.avro "
    "--rejects rr.rejects.csv": run_import_examples,
    "docs/import.md: # RetailRocket (Kaggle: retailrocket/ecommerce-dataset), events.csv": (
        run_import_public_sets
    ),
    "docs/triggers.md: from pathlib import Path": (run_triggers_snippet),
}


def test_the_rule_files_of_the_docs_load() -> None:
    """Every ```yaml block of docs/segments.md is a segments file, and of docs/triggers.md a
    trigger rules file valid against the shipped segments (plus ``staff``, which the prose
    asks the reader to define, issue 16 finding 9: nobody defined it)."""
    from attune.operators.rule_files import (
        TriggerRuleError,
        load_rules,
        parse_rules,
        parse_trigger_rules,
    )
    from attune.operators.triggers import KINDS

    segment_blocks = [b for b in doc_blocks("docs/segments.md") if b.lang == "yaml"]
    assert len(segment_blocks) >= 2
    for b in segment_blocks:
        assert parse_rules(b.text, f"docs/segments.md:{b.line}").names
    shipped = load_rules().names
    trigger_blocks = [b for b in doc_blocks("docs/triggers.md") if b.lang == "yaml"]
    assert len(trigger_blocks) >= 3
    for b in trigger_blocks:
        parse_trigger_rules(
            b.text, f"docs/triggers.md:{b.line}", segments=(*shipped, "staff"), kinds=KINDS
        )
    (staff,) = [b for b in trigger_blocks if "in_segment: staff" in b.text]
    with pytest.raises(TriggerRuleError, match="unknown segment 'staff'"):
        parse_trigger_rules(staff.text, segments=shipped, kinds=KINDS)


#: Files that produce the validation errors the docs show, by the entry the error names.
SEGMENT_ERRORS = {
    "frequent_buyer": '{feature: purchase_30d, op: ">=", value: 2}',
    "big_cart": '{feature: device_top, op: ">", value: 3}',
    "x": "{all: []}",
    "YAML": "{feature: events, op: >=, value: 1}",
}
TRIGGER_ERRORS = {
    "unknown feature": '    when: {feature: cart_valu, op: ">=", value: 1}\n    publish: {}\n',
    "unknown segment": "    when: {in_segment: high_valu}\n    publish: {}\n",
    "bad duration": "    cooldown: 6x\n    publish: {}\n",
    "bad hour": "    quiet_hours: {from: 21, to: 25}\n    publish: {}\n",
    "duplicate": "    publish: {}\n  - name: r\n    description: d\n    publish: {}\n",
    "YAML": "    when: {feature: events, op: >=, value: 1}\n    publish: {}\n",
}


def _shown_errors(path: str, heading: str) -> list[tuple[str, str]]:
    """The ``<file>:<line>: <reason>`` lines of the output block under ``heading``, as
    ``(file, reason)`` (line numbers are the example files', not these)."""
    text = (ROOT / path).read_text()
    after = text.split(heading, 1)[1]
    (b,) = [b for b in doc_blocks(path) if b.lang == "" and b.text in after][:1]
    shown = []
    for line in b.text.splitlines():
        found = re.match(r"^(\S+?):\d+: (.*)$", line)
        assert found, line
        shown.append((found.group(1), found.group(2)))
    return shown


def test_the_validation_errors_the_docs_show_are_the_loaders() -> None:
    """docs/segments.md and docs/triggers.md show example error lines: each is what the
    loader says of a file with that mistake."""
    from attune.operators.rule_files import RuleError, load_rules, parse_rules, parse_trigger_rules
    from attune.operators.triggers import KINDS

    shown = _shown_errors("docs/segments.md", "### Validation errors")
    assert len(shown) == len(SEGMENT_ERRORS)
    for source, reason in shown:
        name = next(k for k in SEGMENT_ERRORS if f"'{k}'" in reason or reason.startswith(k))
        text = f"segments:\n  - name: {name}\n    description: d\n    condition: "
        with pytest.raises(RuleError) as err:
            parse_rules(text + SEGMENT_ERRORS[name] + "\n", source)
        assert str(err.value).split(": ", 1)[1] == reason
    shown = _shown_errors("docs/triggers.md", "## Validation errors")
    assert len(shown) == len(TRIGGER_ERRORS)
    for source, reason in shown:
        key = next(k for k in TRIGGER_ERRORS if k in reason)
        named = re.match(r"rule '(\w+)'", reason)
        text = f"rules:\n  - name: {named.group(1) if named else 'r'}\n    description: d\n"
        with pytest.raises(RuleError) as err:
            parse_trigger_rules(
                text + TRIGGER_ERRORS[key], source, segments=load_rules().names, kinds=KINDS
            )
        assert str(err.value).split(": ", 1)[1] == reason


def integration_runners() -> dict[str, Any]:
    from tests.integration import test_docs

    return test_docs.RUNNERS


def test_every_block_runs_or_says_why_not() -> None:
    blocks = all_blocks()
    ids = [b.id for b in blocks]
    assert len(ids) == len(set(ids)), "two blocks of one file share a first line"
    runners = set(RUNNERS) | set(integration_runners())
    assert set(RUNNERS).isdisjoint(integration_runners())
    orphans = [b.id for b in blocks if b.not_run is None and b.id not in runners]
    assert orphans == [], "blocks neither run nor marked <!-- not-run: REASON -->"
    both = [b.id for b in blocks if b.not_run is not None and b.id in runners]
    assert both == [], "marked not-run, yet a runner runs them"
    stale = sorted(runners - set(ids))
    assert stale == [], "runners of blocks that are gone (or whose first line changed)"
    marked = sum(b.not_run is not None for b in blocks)
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"{len(blocks) - marked} blocks run, {marked} are marked not run" in readme


def test_the_block_parser_reads_markers_and_fences(tmp_path: Path) -> None:
    doc = tmp_path / "d.md"
    doc.write_text(
        "text\n<!-- not-run: needs Docker -->\n```bash\ndocker compose up\n```\n\n"
        "```python\nx = 1\n```\n<!-- not-run: -->\n```bash\nrm -rf /\n```\n"
    )
    blocks = doc_blocks(str(doc))
    assert [(b.lang, b.line, b.not_run) for b in blocks] == [
        ("bash", 3, "needs Docker"),
        ("python", 7, None),
        ("bash", 11, None),  # a marker without a reason is no marker
    ]
    assert blocks[1].id == f"{doc}: x = 1"


@pytest.mark.parametrize("block_id", sorted(RUNNERS), ids=short_id)
def test_doc_block_runs(block_id: str, tmp_path: Path) -> None:
    RUNNERS[block_id](tmp_path)
