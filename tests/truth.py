"""Comparing what the flow wrote with the generator's ground truth (shared by the tests)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from operators.events import Trigger
from operators.generator import CartOutcome, GroundTruth

#: Profile fields that must equal the truth's per-user figures exactly.
COUNTERS = (
    "events",
    "page_views",
    "product_views",
    "searches",
    "add_to_carts",
    "purchases",
    "revenue_minor",
    "sessions",
    "first_seen_ms",
    "last_seen_ms",
)


def profile_mismatches(
    profile_of: Callable[[str], Mapping[str, str] | None], truth: GroundTruth
) -> dict[str, object]:
    """Every exact user whose profile is missing or differs from the truth, with the diffs."""
    out: dict[str, object] = {}
    for user in truth.exact_users():
        profile = profile_of(user)
        if not profile:
            out[user] = "no profile"
            continue
        t = truth.users[user]
        diff = {
            c: (profile[c], getattr(t, c)) for c in COUNTERS if int(profile[c]) != getattr(t, c)
        }
        if diff:
            out[user] = diff
    return out


@dataclass(frozen=True)
class CartExpectations:
    """What cart-abandoned triggers must show for a generated stream (known users with
    consent): fired must be a subset of ``abandoned`` (exact values), disjoint from
    ``converted``, cover ``never_again`` and nearly all of ``due_while_known``."""

    abandoned: dict[tuple[str, int], CartOutcome]
    converted: set[tuple[str, int]]
    due_while_known: set[tuple[str, int]]
    never_again: set[tuple[str, int]]
    users: set[str]
    identified: set[str]  # users with anonymous history handed over at login


def cart_expectations(truth: GroundTruth) -> CartExpectations:
    users = {u for u in truth.exact_users() if truth.users[u].identity != "anonymous"}
    abandoned = {(c.user, c.last_activity_ms): c for c in truth.abandoned_carts if c.user in users}
    return CartExpectations(
        abandoned=abandoned,
        converted={(c.user, c.last_activity_ms) for c in truth.converted_carts},
        due_while_known={
            k
            for k, c in abandoned.items()
            if truth.users[c.user].identity == "known"
            or (truth.users[c.user].identified_ms or 0) <= c.due_ms
        },
        never_again={k for k, c in abandoned.items() if not c.later_event},
        users=users,
        identified={u for u in users if truth.users[u].identity == "identified"},
    )


def check_cart_triggers(fired: Mapping[tuple[str, int], Trigger], exp: CartExpectations) -> None:
    """Assert the cart-abandoned triggers (by user and cause time) against the truth.

    Users whose whole history is under their user id: no false trigger and exact
    values. Users whose anonymous history was handed over at login: at most 2% of the
    triggers may differ (an extra one, or another cart value) - docs/architecture.md,
    "Known limits": the hand-over can land in another batch than the login's events."""
    assert not set(fired) & exp.converted
    differing = set()
    for key, trig in fired.items():
        truth = exp.abandoned.get(key)
        same = (
            truth is not None
            and trig.cart_value_minor == truth.value_minor
            and {(x.item_id, x.quantity) for x in trig.cart_lines}
            == {(x.item_id, x.quantity) for x in truth.lines}
        )
        if not same:
            assert key[0] in exp.identified, (key, trig, truth)
            differing.add(key)
    assert len(differing) <= 0.02 * len(fired), sorted(differing)[:5]
    assert len(exp.due_while_known & set(fired)) >= 0.99 * len(exp.due_while_known)
    assert exp.never_again and exp.never_again <= set(fired)
