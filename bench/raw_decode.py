"""The raw consume + decode baseline of ``attune bench throughput``: no project code at all.

design.md ("Targets") sets the flow against "a raw consume + decode rate (no
project code) measured in the same run". This program is that rate: a
confluent-kafka consumer reads every partition it is given from the beginning
to its end, strips the wire header by slicing and decodes every message body
to a plain dict with the fastest Avro decoder installed, cavro or fastavro,
against the ``Event`` schema read straight from the ``.avsc`` files. Nothing
else: no typed events, no dead letters, no fingerprint check.

It imports only the standard library, confluent-kafka and the decoders. The
bench runs it as a file (``python -P .../raw_decode.py``), never as
``attune.bench.raw_decode``, so not even ``attune/__init__`` is imported in
that process, and the result lists the ``attune`` modules it saw (none) so the
bench can check it.

Protocol: one JSON line on stdin (the job: mode, Kafka configuration, topic,
partitions, schema folder, decoder...), then

- ``calibrate``: read up to ``sample`` messages, time every installed decoder
  on them (best of three passes), check they decode alike, print one JSON line
  (the header length, each decoder's us/message, the choice) and exit;
- ``run``: build the decoder and the consumer, read the watermarks, print
  ``{"ready": true}``, wait for a ``go`` line on stdin (the bench starts every
  consumer together), read to the end, print the result as one JSON line.

The pure parts (the schema loader, the header length) are tested in
tests/unit/test_bench.py.
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

#: The record every message of the events topic holds.
EVENT_RECORD = "attune.event.Event"
#: Avro single-object encoding: 0xC3 0x01 + the 8-byte CRC-64-AVRO fingerprint.
SINGLE_OBJECT_HEADER = 10
#: Confluent wire format: 0x00 + the 4-byte schema id.
CONFLUENT_HEADER = 5
#: The decoders, fastest first as measured on these machines (design.md, "What costs what").
DECODERS = ("cavro", "fastavro")
#: Messages the calibration decodes with each decoder.
CALIBRATION_SAMPLE = 2000
#: No message for this long: the read has stalled.
STALL_S = 60.0

Decoder = Callable[[bytes], dict[str, Any]]

_NAMED = ("record", "enum", "fixed", "error")


def _full_name(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def load_schema(folder: Path, record: str = EVENT_RECORD) -> dict[str, Any]:
    """``record`` from the ``.avsc`` files of ``folder``, with every named type it uses inline.

    Each file holds one named type; a reference by name to a type of another
    file is replaced by that type's definition the first time it appears (Avro
    forbids defining a name twice), and left as a name after that. Plain JSON:
    no decoder's schema tools are used, so either decoder parses the result.
    """
    defined: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.avsc")):
        node = json.loads(path.read_text())
        if isinstance(node, dict) and node.get("type") in _NAMED:
            defined[_full_name(node["name"], node.get("namespace"))] = node
    if record not in defined:
        raise ValueError(f"no {record} in {folder}")
    seen: set[str] = set()

    def walk(node: Any, namespace: str | None) -> Any:
        if isinstance(node, str):
            name = _full_name(node, namespace)
            if name in defined and name not in seen:
                return walk(defined[name], namespace)
            return node
        if isinstance(node, list):
            return [walk(x, namespace) for x in node]
        if not isinstance(node, dict):
            return node
        inner = namespace
        if node.get("type") in _NAMED and "name" in node:
            inner = node.get("namespace", namespace)
            if "." in node["name"]:
                inner = node["name"].rsplit(".", 1)[0]
            seen.add(_full_name(node["name"], inner))
        out = dict(node)
        for key in ("type", "items", "values"):
            if key in out:
                out[key] = walk(out[key], inner)
        if "fields" in out:
            out["fields"] = [
                {**f, "type": walk(f["type"], inner)} if isinstance(f, dict) else f
                for f in out["fields"]
            ]
        return out

    result: dict[str, Any] = walk(defined[record], None)
    return result


def header_length(first: bytes) -> int:
    """How many bytes of wire header precede the Avro body, from a message's first bytes.

    >>> header_length(b"\\xc3\\x01" + bytes(8)), header_length(bytes(5))
    (10, 5)
    """
    if first[:2] == b"\xc3\x01":
        return SINGLE_OBJECT_HEADER
    if first[:1] == b"\x00":
        return CONFLUENT_HEADER
    raise ValueError(f"unknown wire format (first bytes {first[:2].hex()})")


def make_decoder(name: str, schema: Mapping[str, Any]) -> Decoder:
    """A function from an Avro body to a plain dict, by ``cavro`` or ``fastavro``."""
    if name == "cavro":
        import cavro

        parsed = cavro.Schema(dict(schema), record_decodes_to_dict=True)
        decode: Decoder = parsed.binary_decode
        return decode
    if name == "fastavro":
        import fastavro

        parsed_fa = fastavro.parse_schema(dict(schema))
        reader = fastavro.schemaless_reader

        def decode_fa(body: bytes) -> dict[str, Any]:
            return reader(io.BytesIO(body), parsed_fa, None)  # type: ignore[return-value]

        return decode_fa
    raise ValueError(f"unknown decoder {name!r}; one of {', '.join(DECODERS)}")


def installed_decoders() -> list[str]:
    """The decoders of :data:`DECODERS` that import here."""
    out = []
    for name in DECODERS:
        try:
            __import__(name)
        except ImportError:
            continue
        out.append(name)
    return out


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def time_decoder(decode: Decoder, bodies: Sequence[bytes], passes: int = 3) -> float:
    """Seconds per message of ``decode`` over ``bodies``: the best of ``passes`` passes."""
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        for body in bodies:
            decode(body)
        best = min(best, time.perf_counter() - start)
    return best / max(len(bodies), 1)


def calibrate(
    bodies: Sequence[bytes], schema: Mapping[str, Any], names: Iterable[str]
) -> dict[str, Any]:
    """Time each decoder on ``bodies``; the fastest whose output equals the others' is chosen."""
    timings: dict[str, dict[str, Any]] = {}
    outputs: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        decode = make_decoder(name, schema)
        outputs[name] = [decode(b) for b in bodies]
        timings[name] = {
            "us_per_message": time_decoder(decode, bodies) * 1e6,
            "version": _version(name),
        }
    if not timings:
        raise RuntimeError(f"none of {', '.join(DECODERS)} is installed")
    first = next(iter(outputs.values()))
    agree = all(out == first for out in outputs.values())
    fastest = min(timings, key=lambda n: timings[n]["us_per_message"])
    # Decoders that disagree: fall back to fastavro, the flow's own decoder library.
    chosen = fastest if agree or "fastavro" not in timings else "fastavro"
    return {"decoders": timings, "agree": agree, "chosen": chosen, "sample": len(bodies)}


def _attune_modules() -> list[str]:
    return sorted(m for m in sys.modules if m == "attune" or m.startswith("attune."))


def _consumer(config: Mapping[str, Any]) -> Any:
    from confluent_kafka import Consumer

    return Consumer(dict(config))


def _watermarks(consumer: Any, topic: str, partitions: Sequence[int]) -> dict[int, tuple[int, int]]:
    """(low, high) watermark of every partition that holds messages."""
    from confluent_kafka import TopicPartition

    out = {}
    for p in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
        if high > low:
            out[p] = (low, high)
    return out


def _assign_from_start(consumer: Any, topic: str, partitions: Iterable[int]) -> None:
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])


def _sample(job: Mapping[str, Any]) -> list[bytes]:
    """Up to ``job["sample"]`` message values from the start of the job's partitions."""
    consumer = _consumer(job["config"])
    try:
        marks = _watermarks(consumer, job["topic"], job["partitions"])
        total = sum(high - low for low, high in marks.values())
        want = min(int(job.get("sample", CALIBRATION_SAMPLE)), total)
        _assign_from_start(consumer, job["topic"], marks)
        values: list[bytes] = []
        deadline = time.monotonic() + STALL_S
        while len(values) < want and time.monotonic() < deadline:
            for msg in consumer.consume(min(1000, want - len(values)), 0.1):
                if msg.error() is None and msg.value():
                    values.append(msg.value())
        return values
    finally:
        consumer.close()


def run_calibrate(job: Mapping[str, Any]) -> dict[str, Any]:
    """The ``calibrate`` mode: which decoder, and how long each takes per message."""
    values = _sample(job)
    if not values:
        raise RuntimeError(f"no messages to calibrate on in {job['topic']}")
    header = header_length(values[0])
    bodies = [v[header:] for v in values]
    schema = load_schema(Path(job["avro_dir"]))
    names = [job["decoder"]] if job.get("decoder", "auto") != "auto" else installed_decoders()
    result = calibrate(bodies, schema, names)
    result["header_length"] = header
    result["attune_modules"] = _attune_modules()
    return result


def run_consume(job: Mapping[str, Any], go: Callable[[], None]) -> dict[str, Any]:
    """The ``run`` mode: read the partitions to their end, decoding every message.

    ``go`` is called once the consumer exists and knows where the partitions
    end, right before timing starts; it returns when the bench says go.
    """
    decode = make_decoder(job["decoder"], load_schema(Path(job["avro_dir"])))
    header = int(job["header_length"])
    topic, timeout_s = job["topic"], float(job["timeout_s"])
    batch_size = int(job["batch_size"])
    consumer = _consumer(job["config"])
    try:
        ends = {p: high for p, (_, high) in _watermarks(consumer, topic, job["partitions"]).items()}
        go()
        cpu0 = time.process_time()
        start = time.monotonic()
        _assign_from_start(consumer, topic, job["partitions"])
        todo = set(ends)
        events = errors = 0
        first: float | None = None
        last_message = start
        consume = consumer.consume
        while todo:
            msgs = consume(batch_size, 0.005)
            now = time.monotonic()
            if not msgs:
                if now - last_message > STALL_S or now - start > timeout_s:
                    raise RuntimeError(
                        f"the read of {topic} stalled with partitions {sorted(todo)} "
                        f"unfinished after {events:,} messages"
                    )
                continue
            last_message = now
            if first is None:
                first = now
            for msg in msgs:
                if msg.error() is not None:
                    continue
                try:
                    decode(msg.value()[header:])
                except Exception:
                    errors += 1
                events += 1
                part, offset = msg.partition(), msg.offset()
                if offset + 1 >= ends.get(part, 0):
                    todo.discard(part)
        end = time.monotonic()
        return {
            "events": events,
            "errors": errors,
            "start": start,
            "first": first or end,
            "end": end,
            "cpu_s": time.process_time() - cpu0,
            "decoder": job["decoder"],
            "attune_modules": _attune_modules(),
        }
    finally:
        consumer.close()


def _emit(doc: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def main() -> int:
    job = json.loads(sys.stdin.readline())
    try:
        if job["mode"] == "calibrate":
            _emit(run_calibrate(job))
            return 0

        def go() -> None:
            _emit({"ready": True})
            if sys.stdin.readline().strip() != "go":
                raise RuntimeError("the bench did not say go")

        _emit(run_consume(job, go))
    except Exception as exc:
        _emit({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
