"""Comparing what the flow wrote with the generator's ground truth (shared by the tests)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from operators.generator import GroundTruth

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
