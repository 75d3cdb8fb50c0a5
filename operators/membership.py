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

The rule segments are also kept as they stood in event time, from each change on
(:attr:`Membership.past`), so that a judgement made later than its time (an abandoned
cart, judged once the stream has settled past its due time, at the end of a batch) reads
them as they were then (:func:`segments_as_of`), whatever the batching.

>>> from attune.operators.user_config import ProfileConfig
>>> m = Membership(segments=frozenset({"vip"}), cluster=2)
>>> audiences(m)
('persona_2', 'vip')
>>> [(c.segment, c.change) for c in leave_all(m, "u1", 1_767_571_200_000, ProfileConfig())]
[('vip', 'EXITED'), ('persona_2', 'EXITED')]
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field

from attune.operators.clustering import ClusterVector, vector
from attune.operators.consent import ANALYTICS, ConsentState
from attune.operators.events import SegmentChange
from attune.operators.features import EVERYTHING, Features
from attune.operators.redis_sink import SegmentsWrite
from attune.operators.segments import cluster_segment, membership_changes
from attune.operators.user_config import ProfileConfig

Change = SegmentChange | SegmentsWrite | ClusterVector

#: Rule-segment states kept for judgements as of an earlier time (:attr:`Membership.past`),
#: at most; beyond it the oldest is dropped (its time given to the next).
MAX_PAST = 32
_EARLIEST = -(2**62)


@dataclass(slots=True)
class Membership:
    """Which audiences the user is in. Pickles; small."""

    segments: frozenset[str] = frozenset()  # rule segments
    #: The :attr:`RuleSet.fingerprint <attune.operators.segments.RuleSet.fingerprint>` of
    #: the rules ``segments`` was decided by (0: not yet): other rules decide it again whole.
    rules: int = 0
    cluster: int | None = None  # persona assigned from the published cluster parameters
    vectors: int = 0  # session vectors sent to the shared persona learner
    #: The rule segments as they stood in event time: ``(t, segments from t on)`` sorted
    #: by ``t`` (ties in arrival order), one entry per change not yet settled, the first
    #: one the segments before them; empty: ``segments`` throughout
    #: (:func:`segments_as_of`). Bounded by :data:`MAX_PAST`; emptied as judgements
    #: settle (:func:`settle`).
    past: list[tuple[int, frozenset[str]]] = field(default_factory=list)


def _time(entry: tuple[int, frozenset[str]]) -> int:
    return entry[0]


def _record(m: Membership, t: int, before: frozenset[str], after: frozenset[str]) -> None:
    """The rule segments changed from ``before`` to ``after`` at an event at ``t``."""
    past = m.past
    if not past:
        past.append((_EARLIEST, before))
    if t >= past[-1][0]:
        past.append((t, after))
    else:  # an event older than the latest change (a login's history, a late event)
        past.insert(bisect_right(past, t, key=_time), (t, after))
    if len(past) > MAX_PAST:
        del past[0]
        past[0] = (_EARLIEST, past[0][1])


def segments_as_of(m: Membership, t: int) -> frozenset[str]:
    """The rule segments as they stood at event time ``t``: those recorded at the latest
    change at or before ``t`` (in event time). Exact for any ``t`` not before the last
    :func:`settle`.

    >>> m = Membership()
    >>> _record(m, 1_000, frozenset(), frozenset({"vip"}))
    >>> m.segments = frozenset({"vip"})
    >>> segments_as_of(m, 999), segments_as_of(m, 1_000)
    (frozenset(), frozenset({'vip'}))
    >>> settle(m, 2_000); m.past  # nothing earlier asked for: no history needed
    []
    """
    past = m.past
    if not past:
        return m.segments
    i = bisect_right(past, t, key=_time)
    return past[i - 1][1] if i else past[0][1]


def settle(m: Membership, t: int) -> None:
    """No judgement will ask for a time before ``t`` any more: what only such a judgement
    would read is dropped."""
    past = m.past
    if not past:
        return
    i = bisect_right(past, t, key=_time) - 1
    if i > 0:
        del past[:i]
    if len(past) == 1 and past[0][1] == m.segments:
        past.clear()


def audiences(m: Membership) -> tuple[str, ...]:
    """Every audience the user is in: rule segments and the persona."""
    persona = () if m.cluster is None else (cluster_segment(m.cluster),)
    return tuple(sorted((*m.segments, *persona)))


def audiences_as_of(m: Membership, t: int) -> frozenset[str]:
    """The audiences for a judgement as of event time ``t``: the rule segments as they
    stood then (:func:`segments_as_of`) and the persona now (assigned per batch from the
    shared model, not kept in event time)."""
    segments = segments_as_of(m, t)
    return segments if m.cluster is None else segments | {cluster_segment(m.cluster)}


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
        out.append(ClusterVector(user, vector(features), t))
    rules = cfg.rules
    if rules is not None:
        if m.rules == rules.fingerprint:
            after = rules.reevaluate(features, m.segments, changed)
        else:
            after = rules.evaluate(features)
            m.rules = rules.fingerprint
        if after != m.segments:
            before, m.segments = m.segments, after
            _record(m, t, before, after)
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
