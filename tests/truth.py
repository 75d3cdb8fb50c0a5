"""Comparing what the flow wrote with the generator's ground truth (shared by the tests)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from attune.operators.events import Trigger
from attune.workload.truth import COUNTERS, CartOutcome, GroundTruth


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
    """What cart-abandoned triggers must show for a generated stream: for the exact users
    who are not anonymous, one trigger per ``abandoned`` cart (exact lines and value) and
    none other, so none for ``converted`` carts; ``never_again`` (carts of users who send
    nothing more) is part of it and named for the tests that check it."""

    abandoned: dict[tuple[str, int], CartOutcome]
    converted: set[tuple[str, int]]
    never_again: set[tuple[str, int]]
    users: set[str]
    identified: set[str]  # users with anonymous history handed over at login


def cart_expectations(truth: GroundTruth) -> CartExpectations:
    users = {u for u in truth.exact_users() if truth.users[u].identity != "anonymous"}
    abandoned = {(c.user, c.last_activity_ms): c for c in truth.abandoned_carts if c.user in users}
    return CartExpectations(
        abandoned=abandoned,
        converted={(c.user, c.last_activity_ms) for c in truth.converted_carts},
        never_again={k for k, c in abandoned.items() if not c.later_event},
        users=users,
        identified={u for u in users if truth.users[u].identity == "identified"},
    )


def check_cart_triggers(fired: Mapping[tuple[str, int], Trigger], exp: CartExpectations) -> None:
    """Assert the cart-abandoned triggers (by user and cause time) equal the truth: the same
    carts, each with its exact lines and value, anonymous history handed over at login
    included (its carts are judged once the hand-over arrived, in whichever batch)."""
    assert not set(fired) & exp.converted
    assert exp.identified & {user for user, _ in exp.abandoned}, "no handed-over carts to check"
    assert exp.never_again and exp.never_again <= set(fired)
    assert sorted(set(fired) - set(exp.abandoned))[:5] == []  # no trigger the truth lacks
    assert sorted(set(exp.abandoned) - set(fired))[:5] == []  # every abandonment fired
    wrong = [
        (key, trig, exp.abandoned[key])
        for key, trig in fired.items()
        if trig.cart_value_minor != exp.abandoned[key].value_minor
        or sorted((x.item_id, x.quantity) for x in trig.cart_lines)
        != sorted((x.item_id, x.quantity) for x in exp.abandoned[key].lines)
    ]
    assert wrong[:3] == []
