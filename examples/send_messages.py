"""A downstream app: subscribes to Attune's trigger topics and "sends" one message per trigger.

Sending is writing one JSON line per first-time trigger (to a file or stdout);
a real app would call its email or push service in :func:`send` instead. The
app acts once per trigger id (:class:`~attune.clients.subscriber.ActOnce`) although
delivery is at-least-once, and commits only after the lines are written and
flushed. With ``--redis`` the record of ids acted on is shared by every
instance of the app; without it, it lives in this process.

    python examples/send_messages.py --bootstrap 127.0.0.1:19092 \\
        --kinds cart_abandoned long_dwell --group email-app --out messages.jsonl

examples/README.md shows it next to ``attune run``; docs/subscriber.md explains
the delivery semantics.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from typing import IO, Any

import redis

from attune.clients.subscriber import ActOnce, RedisOnceStore, TriggerSubscriber, Undecodable
from attune.flows.settings import Settings
from attune.operators.events import Trigger


def message_for(trigger: Trigger) -> dict[str, Any]:
    """The message this app sends for a trigger (what a template would be filled with)."""
    return {
        "trigger_id": trigger.trigger_id,
        "kind": trigger.kind,
        "user": trigger.user_id,
        "template_id": trigger.attributes.get("template_id"),
        "offer_code": trigger.attributes.get("offer_code"),
        "cart_value_minor": trigger.cart_value_minor,
        "currency": trigger.currency,
        "item_id": trigger.item_id,
        "cause_event_time": trigger.cause_event_time,
        "emit_time": trigger.emit_time,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="send_messages",
        description="Subscribe to Attune's trigger topics and send (write) one message per "
        "trigger, once per trigger id.",
    )
    parser.add_argument(
        "--bootstrap", help="Kafka bootstrap servers (default: ATTUNE_KAFKA_BOOTSTRAP)"
    )
    parser.add_argument(
        "--kinds",
        nargs="+",
        default=["cart_abandoned"],
        help="trigger kinds, space or comma separated (default: cart_abandoned)",
    )
    parser.add_argument(
        "--group", default="attune-example-messages", help="consumer group of this app"
    )
    parser.add_argument("--out", help="file to append JSON lines to (default: stdout)")
    parser.add_argument("--max-messages", type=int, help="stop after this many messages")
    parser.add_argument("--timeout", type=float, help="stop after this many seconds")
    parser.add_argument(
        "--redis",
        help="Redis URL for the ids acted on, shared by all instances "
        "(default: remembered in this process only)",
    )
    parser.add_argument(
        "--from-latest",
        action="store_true",
        help="a new group starts at the end of the topics (default: at the beginning)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings.from_env()
    kinds = [k for arg in args.kinds for k in arg.split(",") if k]
    once = (
        ActOnce(RedisOnceStore(redis.Redis.from_url(args.redis), args.group))
        if args.redis
        else ActOnce()
    )
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())

    out: IO[str] = open(args.out, "a", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115

    def send(trigger: Trigger) -> None:
        out.write(json.dumps(message_for(trigger), sort_keys=True) + "\n")
        out.flush()  # sent before the offset is committed: at-least-once

    def report(item: Undecodable) -> None:
        print(
            f"skipping undecodable message {item.topic}[{item.partition}]@{item.offset}: "
            f"{item.error_class.value}: {item.reason}",
            file=sys.stderr,
        )

    try:
        with TriggerSubscriber(
            args.bootstrap or settings.kafka_bootstrap,
            kinds,
            args.group,
            settings=settings,
            auto_offset_reset="latest" if args.from_latest else "earliest",
        ) as sub:
            stats = sub.process(
                send,
                once=once,
                max_messages=args.max_messages,
                timeout_s=args.timeout,
                stop=stop,
                on_undecodable=report,
            )
    except ValueError as exc:  # a setting or argument the subscriber refused
        print(f"send_messages: {exc}", file=sys.stderr)
        return 2
    finally:
        if out is not sys.stdout:
            out.close()
    print(
        f"received {stats.received}, sent {stats.acted}, duplicates skipped "
        f"{stats.duplicates}, undecodable {stats.undecodable}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
