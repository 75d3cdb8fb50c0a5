"""The user's audiences: rule segments and persona, and what a change of them emits.

The segments stage of the per-user step (:mod:`attune.operators.user_step`), after the
cart and before the models. It owns :class:`Membership`, the slice of the user's state
that says which audiences the user is in: the rule segments
(:mod:`attune.operators.segments`, evaluated on the user's features after each event) and
the persona (:mod:`attune.operators.clustering`, assigned once per batch from the
published cluster parameters). Entering or leaving emits a
:class:`~attune.operators.events.SegmentChange` and a Redis set update
(:class:`~attune.operators.redis_sink.SegmentsWrite`); the trigger stage turns rule
changes into ``segment_entered``/``segment_exited`` candidates. At a session boundary
the stage also sends the shared persona learner one :class:`ClusterVector` of the
user's features (with analytics consent).

>>> from attune.operators.user_config import ProfileConfig
>>> m = Membership(segments=frozenset({"vip"}), cluster=2)
>>> audiences(m)
('persona_2', 'vip')
>>> [(c.segment, c.change) for c in leave_all(m, "u1", 1_767_571_200_000, ProfileConfig())]
[('vip', 'EXITED'), ('persona_2', 'EXITED')]
"""

from __future__ import annotations

from dataclasses import dataclass

from attune.operators.clustering import ClusterVector, vector
from attune.operators.consent import ANALYTICS, ConsentState
from attune.operators.events import SegmentChange
from attune.operators.features import EVERYTHING, Features
from attune.operators.redis_sink import SegmentsWrite
from attune.operators.segments import cluster_segment, membership_changes
from attune.operators.user_config import ProfileConfig

Change = SegmentChange | SegmentsWrite | ClusterVector


@dataclass(slots=True)
class Membership:
    """Which audiences the user is in. Pickles; small."""

    segments: frozenset[str] = frozenset()  # rule segments
    #: The :attr:`RuleSet.fingerprint <attune.operators.segments.RuleSet.fingerprint>` of
    #: the rules ``segments`` was decided by (0: not yet): other rules decide it again whole.
    rules: int = 0
    cluster: int | None = None  # persona assigned from the published cluster parameters
    vectors: int = 0  # session vectors sent to the shared persona learner


def audiences(m: Membership) -> tuple[str, ...]:
    """Every audience the user is in: rule segments and the persona."""
    persona = () if m.cluster is None else (cluster_segment(m.cluster),)
    return tuple(sorted((*m.segments, *persona)))


def every_audience(m: Membership, cfg: ProfileConfig) -> tuple[str, ...]:
    """The user's audiences and every audience set the flow writes (for forgetting)."""
    return tuple(sorted({*audiences(m), *cfg.audiences}))


def observe(
    m: Membership,
    user: str,
    t: int,
    features: Features,
    cfg: ProfileConfig,
    *,
    boundary: bool,
    consent: ConsentState | None,
    changed: int = EVERYTHING,
) -> list[Change]:
    """The segments stage at an event at ``t``: a persona vector if the event ended the
    latest session (``boundary``; one vector per session, not per event: the learner is one
    key; a shared aggregate of behaviour, so it needs analytics consent), then the rule
    segments on the features now, with the changes. Only the segments whose features the
    event may have ``changed`` (bits of :data:`~attune.operators.features.CHANGED_BY`) are
    evaluated again, when the membership was decided by these rules."""
    out: list[Change] = []
    if boundary and cfg.board is not None and cfg.consent.allowed(consent, ANALYTICS):
        m.vectors += 1
        out.append(ClusterVector(user, vector(features)))
    rules = cfg.rules
    if rules is not None:
        if m.rules == rules.fingerprint:
            after = rules.reevaluate(features, m.segments, changed)
        else:
            after = rules.evaluate(features)
            m.rules = rules.fingerprint
        if after != m.segments:
            before, m.segments = m.segments, after
            changes = rules.membership_changes(user, before, after, t, cfg.clock.now_ms())
            entered = tuple(sorted(after - before))
            exited = tuple(sorted(before - after))
            out += [*changes, SegmentsWrite(user, entered, exited)]
    return out


def assign_persona(
    m: Membership, user: str, t: int, features: Features, cfg: ProfileConfig
) -> list[Change]:
    """Once per batch: the user's persona from the latest published parameters; changes if
    it moved."""
    params = cfg.board.get() if cfg.board is not None else None
    if params is None or not params.ready:
        return []
    cluster = params.assign(vector(features))
    if cluster == m.cluster:
        return []
    before = frozenset() if m.cluster is None else frozenset({cluster_segment(m.cluster)})
    after = frozenset({cluster_segment(cluster)})
    m.cluster = cluster
    changes = membership_changes(
        user, before, after, t, cfg.clock.now_ms(), "CLUSTER", descriptions=params.descriptions()
    )
    return [*changes, SegmentsWrite(user, tuple(after), tuple(before))]


def leave_all(m: Membership, user: str, t: int, cfg: ProfileConfig) -> list[SegmentChange]:
    """Exit records for every segment (and the persona) of a state that is going away."""
    now = cfg.clock.now_ms()
    out: list[SegmentChange] = []
    if cfg.rules is None:
        out.extend(membership_changes(user, m.segments, frozenset(), t, now))
    else:
        out.extend(cfg.rules.membership_changes(user, m.segments, frozenset(), t, now))
    if m.cluster is not None:
        persona = frozenset({cluster_segment(m.cluster)})
        out.extend(membership_changes(user, persona, frozenset(), t, now, "CLUSTER"))
    return out


def evict(m: Membership, user: str, t: int, cfg: ProfileConfig) -> list[Change]:
    """The state goes (idle): the user leaves every audience (membership is computed from
    the state, which is gone); profile and key TTLs run out by themselves."""
    if not (m.segments or m.cluster is not None):
        return []
    left = audiences(m)
    return [*leave_all(m, user, t, cfg), SegmentsWrite(user, (), left)]
