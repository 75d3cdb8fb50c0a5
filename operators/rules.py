"""Declarative trigger rules: which behavioural triggers are published, how, and how often.

Stage 8 of the flow (docs/architecture.md). The per-user state fires raw triggers
(cart abandoned, long dwell, repeat visit, segment entered...); a :class:`TriggerRules`
decides, per trigger, what reaches the ``attune.triggers.<kind>`` topics:

- rules, in file order, match on the trigger kind, the user's features (the condition
  grammar of :mod:`attune.operators.segments`, extended with trigger leaves), segments, model
  scores, the local hour and the channel; a matching ``suppress`` rule drops the
  trigger, every matching ``publish`` rule yields one output trigger with its payload;
- policies then hold publishes back: marketing consent, quiet hours, cooldowns and
  frequency caps, per user and per output kind, kept in a small :class:`TriggerHistory`
  inside the user's state.

Every decision reads event time (the trigger's ``cause_event_time``), never the wall
clock, and output ids are hashes of the input id and the rule name, so a replay decides
the same and publishes the same ids. Rules are YAML (shipped defaults in
``flows/rules.yaml``, plus an optional user file), validated at start-up with errors that
name the file, the line and the reason. docs/triggers.md is the reference.

>>> rules = parse_trigger_rules('''
... rules:
...   - name: vip_cart_offer
...     description: abandoned cart of a high-value customer gets 10% off
...     when: {kind: cart_abandoned, in_segment: high_value}
...     publish:
...       attributes: {offer_code: TENOFF}
... ''')
>>> cart = Trigger(trigger_id="t1", kind="cart_abandoned", user_id="u1",
...                cause_event_time=1_700_000_000_000, emit_time=1_700_000_000_500,
...                reason="cart idle for 30 min")
>>> ctx = TriggerContext(segments=frozenset({"high_value"}), marketing_consent=True)
>>> decision = rules.decide(cart, ctx, TriggerHistory())
>>> [(t.kind, t.attributes) for t in decision.published]
[('cart_abandoned', {'offer_code': 'TENOFF', 'rule': 'vip_cart_offer'})]
>>> rules.decide(cart, TriggerContext(marketing_consent=False), TriggerHistory()).suppressed
[('<default>', 'no marketing consent')]
"""

from __future__ import annotations

import bisect
import difflib
import hashlib
import math
import re
import zoneinfo
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

import yaml

from attune.operators.events import Trigger
from attune.operators.features import Features
from attune.operators.segments import (
    CLUSTER_SEGMENT_PREFIX,
    EQUALITY_OPS,
    NULL_OPS,
    NUMERIC_OPS,
    AllOf,
    Compare,
    Condition,
    ConditionParser,
    Leaf,
    RuleError,
    _kind,
    compile_compare,
    compile_condition,
    describe,
)

__all__ = [
    "CHANNELS",
    "DEFAULT_RULE",
    "HISTORY_MAX",
    "Cap",
    "ChannelIs",
    "Decision",
    "HourWindow",
    "HoursIn",
    "InSegment",
    "KindIs",
    "Policies",
    "RuleSettings",
    "ScoreCompare",
    "TriggerContext",
    "TriggerHistory",
    "TriggerRule",
    "TriggerRuleError",
    "TriggerRules",
    "load_trigger_rules",
    "parse_trigger_rules",
    "trigger_id_for",
]

#: Publish times kept per output kind in a user's :class:`TriggerHistory`; a ``cap`` may
#: not allow more than this many per window.
HISTORY_MAX: Final = 16
#: The rule name reported for triggers that no rule matched (``settings.default``).
DEFAULT_RULE: Final = "<default>"
#: The symbols of ``attune.event.Channel`` (avro/attune.event.Context.avsc; a test checks).
CHANNELS: Final = ("WEB", "APP", "EMAIL", "OTHER")
#: The attribute every published trigger carries: the name of the rule that published it.
RULE_ATTRIBUTE: Final = "rule"

Purpose: TypeAlias = Literal["marketing", "service"]
PURPOSES: Final = ("marketing", "service")
SCORE_OPS: Final = (*NUMERIC_OPS, *EQUALITY_OPS, *NULL_OPS)

_NAME = re.compile(r"[a-z0-9_]+")
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d)")
_UNIT_MS: Final = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_MAX_ZONES: Final = 1024  # cached timezone lookups (names come from events: bound them)


# --- time: durations, hour windows, timezones -----------------------------------------------


def _format_duration(ms: int) -> str:
    for unit in ("d", "h", "m", "s"):
        if ms % _UNIT_MS[unit] == 0:
            return f"{ms // _UNIT_MS[unit]}{unit}"
    return f"{ms}ms"


@dataclass(frozen=True, slots=True)
class HourWindow:
    """Local hours ``[start, end)``; wraps past midnight when ``start > end`` (22 -> 8).

    >>> w = HourWindow(22, 8)
    >>> [h for h in range(24) if w.contains(h)]
    [0, 1, 2, 3, 4, 5, 6, 7, 22, 23]
    """

    start: int
    end: int

    def contains(self, hour: int) -> bool:
        if self.start < self.end:
            return self.start <= hour < self.end
        return hour >= self.start or hour < self.end

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"


_ZONES: dict[str, zoneinfo.ZoneInfo | None] = {}


def _zone(name: str) -> zoneinfo.ZoneInfo | None:
    """The zone of an IANA name, ``None`` when unknown (cached, bounded)."""
    try:
        return _ZONES[name]
    except KeyError:
        pass
    try:
        zone: zoneinfo.ZoneInfo | None = zoneinfo.ZoneInfo(name)
    except (ValueError, KeyError, OSError):  # ZoneInfoNotFoundError is a KeyError
        zone = None
    if len(_ZONES) < _MAX_ZONES:
        _ZONES[name] = zone
    return zone


# --- what a rule reads --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TriggerContext:
    """What the user's state knows when a trigger fires.

    Attributes
    ----------
    features
        The user's features (:data:`attune.operators.features.FEATURES`) at the trigger.
    segments
        The segments the user is in (rule segments and ``persona_<n>``).
    marketing_consent
        ``True``/``False`` as the user said; ``None`` when unknown
        (``settings.consent_default`` decides). In the flow: the answer of the one consent
        decision (:meth:`ConsentPolicy.allowed
        <attune.operators.consent.ConsentPolicy.allowed>`) for this trigger, from its cause
        to when it is due, the default of where the user is applied (so never ``None``).
    timezone
        IANA name from the user's latest event context (``Europe/Berlin``); ``None`` or an
        unknown name means unknown (``settings.default_timezone`` then applies).
    channel
        Channel of the user's latest event (``WEB``, ``APP``, ``EMAIL``, ``OTHER``).
    consent_floor
        Marketing consent is needed whatever a rule's purpose (``service`` too): the flow's
        privacy gate sets it (docs/privacy.md). ``False``: only ``purpose: marketing``
        needs it, as the rules say.
    """

    features: Features = field(default_factory=dict)
    segments: frozenset[str] = frozenset()
    marketing_consent: bool | None = None
    timezone: str | None = None
    channel: str | None = None
    consent_floor: bool = False


class _Env:
    """One decision's input to the compiled conditions; the local hour is computed once."""

    __slots__ = ("_hour", "ctx", "default_zone", "trigger")

    def __init__(
        self, trigger: Trigger, ctx: TriggerContext, default_zone: zoneinfo.ZoneInfo | None
    ) -> None:
        self.trigger = trigger
        self.ctx = ctx
        self.default_zone = default_zone
        self._hour = -2  # not computed yet; -1 = unknown

    def zone(self) -> zoneinfo.ZoneInfo | None:
        name = self.ctx.timezone
        zone = _zone(name) if name else None
        return zone if zone is not None else self.default_zone

    def local_hour(self) -> int:
        """Hour of the trigger's event time in the user's timezone, -1 when unknown."""
        if self._hour == -2:
            zone = self.zone()
            self._hour = (
                -1
                if zone is None
                else datetime.fromtimestamp(self.trigger.cause_event_time // 1000, zone).hour
            )
        return self._hour


# --- the trigger leaves of the condition grammar -----------------------------------------------


@dataclass(frozen=True, slots=True)
class KindIs(Leaf):
    """``kind: K`` or ``kind: [K1, K2]``: the trigger's kind is one of these."""

    kinds: tuple[str, ...]

    def describe(self) -> str:
        return (
            f"kind == {self.kinds[0]!r}" if len(self.kinds) == 1 else f"kind in {list(self.kinds)}"
        )


@dataclass(frozen=True, slots=True)
class InSegment(Leaf):
    """``in_segment: S`` (in any of) or ``not_in_segment: S`` (in none of); S a name or list."""

    segments: tuple[str, ...]
    negate: bool = False

    def describe(self) -> str:
        key = "not_in_segment" if self.negate else "in_segment"
        shown = self.segments[0] if len(self.segments) == 1 else list(self.segments)
        return f"{key} {shown}"


@dataclass(frozen=True, slots=True)
class ScoreCompare(Leaf):
    """``score: {name: N, op: OP, value: V}`` over the trigger's ``scores`` map.

    A missing score compares false (like a ``None`` feature); ``is_null`` tests absence.
    """

    compare: Compare

    def describe(self) -> str:
        return f"score {describe(self.compare)}"


@dataclass(frozen=True, slots=True)
class HoursIn(Leaf):
    """``hours: {from: A, to: B}``: the trigger's event time is in local hours ``[A, B)``.

    False when the user's timezone is unknown and no ``default_timezone`` is set.
    """

    window: HourWindow

    def describe(self) -> str:
        return f"local hour in {self.window}"


@dataclass(frozen=True, slots=True)
class ChannelIs(Leaf):
    """``channel: C`` or ``channel: [C1, C2]``: the user's channel is one of these."""

    channels: tuple[str, ...]

    def describe(self) -> str:
        return f"channel in {list(self.channels)}"


_EnvPredicate: TypeAlias = Callable[[_Env], bool]


def _compile_leaf(leaf: Compare | Leaf) -> _EnvPredicate:
    if isinstance(leaf, Compare):
        on_features = compile_compare(leaf)

        def feature(env: _Env) -> bool:
            return on_features(env.ctx.features)

        return feature
    if isinstance(leaf, KindIs):
        if len(leaf.kinds) == 1:
            only = leaf.kinds[0]

            def kind_is(env: _Env) -> bool:
                return env.trigger.kind == only

            return kind_is
        kinds = frozenset(leaf.kinds)

        def kind_in(env: _Env) -> bool:
            return env.trigger.kind in kinds

        return kind_in
    if isinstance(leaf, InSegment):
        wanted = frozenset(leaf.segments)
        if leaf.negate:

            def not_in_segment(env: _Env) -> bool:
                return wanted.isdisjoint(env.ctx.segments)

            return not_in_segment

        def in_segment(env: _Env) -> bool:
            return not wanted.isdisjoint(env.ctx.segments)

        return in_segment
    if isinstance(leaf, ScoreCompare):
        on_scores = compile_compare(leaf.compare)

        def score(env: _Env) -> bool:
            return on_scores(env.trigger.scores)

        return score
    if isinstance(leaf, HoursIn):
        window = leaf.window

        def hours(env: _Env) -> bool:
            hour = env.local_hour()
            return hour >= 0 and window.contains(hour)

        return hours
    if isinstance(leaf, ChannelIs):
        channels = frozenset(leaf.channels)

        def channel(env: _Env) -> bool:
            return env.ctx.channel in channels

        return channel
    raise TypeError(f"not a trigger rule leaf: {leaf!r}")


def _always(env: _Env) -> bool:
    return True


def _static_kinds(when: Condition | None) -> frozenset[str] | None:
    """The kinds a condition can match, when its top level says (``None``: any kind)."""
    if isinstance(when, KindIs):
        return frozenset(when.kinds)
    if isinstance(when, AllOf):
        found = [frozenset(c.kinds) for c in when.children if isinstance(c, KindIs)]
        if found:
            return frozenset.intersection(*found)
    return None


# --- rules, policies, settings -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cap:
    """At most ``max`` publishes of one kind to one user within ``per_ms`` of event time."""

    max: int
    per_ms: int

    def __str__(self) -> str:
        return f"{self.max} per {_format_duration(self.per_ms)}"


@dataclass(frozen=True, slots=True)
class Policies:
    """Global policies (``policies:``); a rule may override each of them.

    ``quiet_hours`` applies to marketing publishes only; ``cap`` and ``cooldowns`` to every
    publish of the kind (``cooldowns`` maps a kind to its cooldown, ``"*"`` to every kind).
    """

    quiet_hours: HourWindow | None = None
    cap: Cap | None = None
    cooldowns: Mapping[str, int] = field(default_factory=dict)

    def cooldown_for(self, kind: str) -> int | None:
        got = self.cooldowns.get(kind)
        return got if got is not None else self.cooldowns.get("*")


@dataclass(frozen=True, slots=True)
class RuleSettings:
    """File-wide settings (``settings:``).

    Attributes
    ----------
    default
        ``publish`` (as is, under the global policies) or ``drop`` a trigger no rule matches.
    consent_default
        ``deny`` or ``allow`` marketing when the user's consent is unknown (``None``).
    purpose
        Purpose of rules that do not say, and of triggers published by ``default``.
    default_timezone
        IANA zone for users whose timezone is unknown; ``None``: quiet hours do not apply
        to them and ``hours`` conditions are false.
    """

    default: Literal["publish", "drop"] = "publish"
    consent_default: Literal["deny", "allow"] = "deny"
    purpose: Purpose = "marketing"
    default_timezone: str | None = None


@dataclass(frozen=True, slots=True)
class TriggerRule:
    """One declared rule.

    ``overrides`` names the policies (``cap``, ``cooldown``, ``quiet_hours``) the rule sets
    itself, to a value or to ``None`` (off); the others come from :class:`Policies`.
    """

    name: str
    description: str
    when: Condition | None  # None: every trigger
    action: Literal["publish", "suppress"]
    reason: str = ""  # suppress: the reason reported
    kind: str | None = None  # publish: output kind (topic suffix); None keeps the input kind
    attributes: Mapping[str, str] = field(default_factory=dict)
    purpose: Purpose | None = None  # None: settings.purpose
    cap: Cap | None = None
    cooldown_ms: int | None = None
    quiet_hours: HourWindow | None = None
    overrides: frozenset[str] = frozenset()
    enabled: bool = True
    #: Rules with the same message publish alternatives of one message: the first of them
    #: that matches and passes its policies publishes, under an id of the message (not of
    #: the rule), so a replay that chose another alternative repeats the id. None: the name.
    message: str | None = None
    line: int = 0
    source: str = ""

    def describe(self) -> str:
        """The rule as one line (for docs and logs)."""
        when = describe(self.when) if self.when is not None else "always"
        if self.action == "suppress":
            return f"when {when}: suppress ({self.reason})"
        out = f" as {self.kind}" if self.kind else ""
        return f"when {when}: publish{out}"


@dataclass(slots=True)
class Decision:
    """What :meth:`TriggerRules.decide` did with one trigger.

    ``published``: the output triggers, in rule order. ``suppressed``: ``(rule, reason)`` for
    every publish held back and for a ``suppress`` rule that dropped the trigger (for
    metrics and logs); the rule is :data:`DEFAULT_RULE` when no rule matched.
    """

    published: list[Trigger] = field(default_factory=list)
    suppressed: list[tuple[str, str]] = field(default_factory=list)


# --- per-user state --------------------------------------------------------------------------


@dataclass(slots=True)
class TriggerHistory:
    """A user's recent publish times (event time, ms) per output kind: caps and cooldowns.

    Lives in the per-user state and pickles with it. Bounded: at most :data:`HISTORY_MAX`
    times per kind, none older than the rules' longest window (``horizon_ms``) before the
    newest; a kind with nothing left is removed.

    >>> h = TriggerHistory()
    >>> for t in (1_000, 5_000, 2_000):
    ...     h.record("cart_abandoned", t, horizon_ms=3_500)
    >>> h.times
    {'cart_abandoned': [2000, 5000]}
    >>> h.count_near("cart_abandoned", 4_000, 2_500), h.count_near("repeat_visit", 4_000, 1)
    (2, 0)
    """

    times: dict[str, list[int]] = field(default_factory=dict)

    def record(self, kind: str, t: int, horizon_ms: int = 0) -> None:
        """Record a publish of ``kind`` at event time ``t``; keep ``horizon_ms`` (0: all)."""
        ts = self.times.get(kind)
        if ts is None:
            self.times[kind] = [t]
            return
        bisect.insort(ts, t)
        if horizon_ms > 0 and ts[0] <= ts[-1] - horizon_ms:
            del ts[: bisect.bisect_right(ts, ts[-1] - horizon_ms)]
        if len(ts) > HISTORY_MAX:
            del ts[:-HISTORY_MAX]

    def count_near(self, kind: str, t: int, window_ms: int) -> int:
        """Publishes of ``kind`` less than ``window_ms`` from ``t``, before or after it."""
        ts = self.times.get(kind)
        if not ts:
            return 0
        return bisect.bisect_left(ts, t + window_ms) - bisect.bisect_right(ts, t - window_ms)

    def expire(self, before: int) -> None:
        """Forget publishes at or before event time ``before`` (for the state's expiry)."""
        for kind in list(self.times):
            ts = self.times[kind]
            del ts[: bisect.bisect_right(ts, before)]
            if not ts:
                del self.times[kind]


# --- trigger ids ------------------------------------------------------------------------------


def trigger_id_for(trigger_id: str, rule: str) -> str:
    """The id of the trigger ``rule`` publishes for input ``trigger_id``: deterministic.

    128 bits of SHA-256 over both, hex: a replay yields the same id, another rule another id.

    >>> trigger_id_for("t1", "cart_reminder") == trigger_id_for("t1", "cart_reminder")
    True
    >>> trigger_id_for("t1", "cart_reminder") != trigger_id_for("t1", "vip_cart_offer")
    True
    >>> len(trigger_id_for("t1", "cart_reminder"))
    32
    """
    return hashlib.sha256(f"{trigger_id}\x1f{rule}".encode()).hexdigest()[:32]


# --- the rule set -------------------------------------------------------------------------------


class TriggerRules:
    """Validated, compiled trigger rules; :meth:`decide` is the per-trigger call.

    Build with :func:`load_trigger_rules` or :func:`parse_trigger_rules` (which validate).
    Configuration, not state: built once per worker at start-up; it pickles (by its rules).
    """

    __slots__ = (
        "_by_kind",
        "_compiled",
        "_default_zone",
        "_other_kinds",
        "horizon_ms",
        "names",
        "output_kinds",
        "policies",
        "rules",
        "settings",
        "source",
    )

    def __init__(
        self,
        rules: Iterable[TriggerRule],
        settings: RuleSettings | None = None,
        policies: Policies | None = None,
        source: str = "<rules>",
    ) -> None:
        self.rules: tuple[TriggerRule, ...] = tuple(r for r in rules if r.enabled)
        self.settings = settings or RuleSettings()
        self.policies = policies or Policies()
        self.source = source
        self.names: tuple[str, ...] = tuple(r.name for r in self.rules)
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"{source}: duplicate rule names in {self.names}")
        tz = self.settings.default_timezone
        self._default_zone = _zone(tz) if tz else None
        if tz and self._default_zone is None:
            raise ValueError(f"{source}: unknown default_timezone {tz!r}")
        #: Output kinds named by ``publish.kind`` (their topics must exist).
        self.output_kinds: frozenset[str] = frozenset(r.kind for r in self.rules if r.kind)
        #: The longest cap window or cooldown: how much history a user needs.
        windows = [*self.policies.cooldowns.values()]
        if self.policies.cap is not None:
            windows.append(self.policies.cap.per_ms)
        for r in self.rules:
            if r.cap is not None:
                windows.append(r.cap.per_ms)
            if r.cooldown_ms is not None:
                windows.append(r.cooldown_ms)
        self.horizon_ms: int = max(windows, default=0)
        self._compiled: tuple[tuple[TriggerRule, _EnvPredicate], ...] = tuple(
            (r, _always if r.when is None else compile_condition(r.when, _compile_leaf))
            for r in self.rules
        )
        # Rules whose condition names the trigger kind at its top are skipped for other
        # kinds without evaluating them: one dict lookup instead of a predicate per rule.
        statics = [_static_kinds(r.when) for r in self.rules]
        mentioned = {k for kinds in statics if kinds is not None for k in kinds}
        self._by_kind: dict[str, tuple[tuple[TriggerRule, _EnvPredicate], ...]] = {
            kind: tuple(
                c
                for c, kinds in zip(self._compiled, statics, strict=True)
                if kinds is None or kind in kinds
            )
            for kind in mentioned
        }
        self._other_kinds: tuple[tuple[TriggerRule, _EnvPredicate], ...] = tuple(
            c for c, kinds in zip(self._compiled, statics, strict=True) if kinds is None
        )

    def decide(self, trigger: Trigger, ctx: TriggerContext, history: TriggerHistory) -> Decision:
        """Apply the rules and policies to one trigger; record what is published.

        Parameters
        ----------
        trigger
            A raw trigger from the per-user state.
        ctx
            What the state knows about the user now.
        history
            The user's :class:`TriggerHistory`; publishes are recorded in it.

        Returns
        -------
        Decision
            The output triggers and the suppressions with their reasons.

        Examples
        --------
        >>> rules = load_trigger_rules()
        >>> t = Trigger(trigger_id="t9", kind="cart_abandoned", user_id="u1",
        ...             cause_event_time=1_700_000_000_000,  # 22:13 UTC, 23:13 in Berlin
        ...             emit_time=1_700_000_000_000, reason="cart idle for 30 min")
        >>> ctx = TriggerContext(marketing_consent=True, timezone="America/New_York")
        >>> history = TriggerHistory()
        >>> [p.attributes["template_id"] for p in rules.decide(t, ctx, history).published]
        ['cart_reminder']
        >>> rules.decide(t, ctx, history).suppressed  # the same cart again: cooldown
        [('cart_reminder', 'cooldown 4h for cart_abandoned')]
        >>> berlin = TriggerContext(marketing_consent=True, timezone="Europe/Berlin")
        >>> rules.decide(t, berlin, TriggerHistory()).suppressed
        [('cart_reminder', 'quiet hours 22-8 (local hour 23)')]
        """
        env = _Env(trigger, ctx, self._default_zone)
        matched: list[TriggerRule] = []
        for rule, pred in self._by_kind.get(trigger.kind, self._other_kinds):
            if pred(env):
                if rule.action == "suppress":
                    return Decision([], [(rule.name, rule.reason)])
                matched.append(rule)
        out = Decision()
        t = trigger.cause_event_time
        if not matched:
            if self.settings.default == "drop":
                out.suppressed.append((DEFAULT_RULE, "no rule matched (default: drop)"))
                return out
            held = self._held(None, trigger.kind, env, history)
            if held:
                out.suppressed.append((DEFAULT_RULE, held))
            else:
                history.record(trigger.kind, t, self.horizon_ms)
                out.published.append(trigger)
            return out
        sent: set[str] = set()
        for rule in matched:
            message = rule.message or rule.name
            if message in sent:
                out.suppressed.append((rule.name, f"message {message} already published"))
                continue
            kind = rule.kind or trigger.kind
            held = self._held(rule, kind, env, history)
            if held:
                out.suppressed.append((rule.name, held))
                continue
            sent.add(message)
            history.record(kind, t, self.horizon_ms)
            attributes = dict(trigger.attributes)
            attributes.update(rule.attributes)
            attributes[RULE_ATTRIBUTE] = rule.name
            out.published.append(
                Trigger(
                    trigger_id=trigger_id_for(trigger.trigger_id, message),
                    kind=kind,
                    user_id=trigger.user_id,
                    cause_event_time=t,
                    emit_time=trigger.emit_time,
                    reason=trigger.reason,
                    cart_lines=trigger.cart_lines,
                    cart_value_minor=trigger.cart_value_minor,
                    currency=trigger.currency,
                    item_id=trigger.item_id,
                    segment=trigger.segment,
                    scores=trigger.scores,
                    attributes=attributes,
                )
            )
        return out

    def _held(self, rule: TriggerRule | None, kind: str, env: _Env, history: TriggerHistory) -> str:
        """Why a publish of ``kind`` is held (consent, quiet hours, cooldown, cap), or ``""``."""
        overrides = rule.overrides if rule is not None else frozenset()
        purpose = (rule.purpose if rule is not None else None) or self.settings.purpose
        if purpose == "marketing" or env.ctx.consent_floor:
            consent = env.ctx.marketing_consent
            if consent is False:
                return "no marketing consent"
            if consent is None and self.settings.consent_default == "deny":
                return "marketing consent unknown (consent_default: deny)"
        if "quiet_hours" in overrides:
            quiet = rule.quiet_hours if rule is not None else None
        else:
            quiet = self.policies.quiet_hours if purpose == "marketing" else None
        if quiet is not None:
            hour = env.local_hour()
            if hour >= 0 and quiet.contains(hour):
                return f"quiet hours {quiet} (local hour {hour})"
        t = env.trigger.cause_event_time
        if "cooldown" in overrides:
            cooldown = rule.cooldown_ms if rule is not None else None
        else:
            cooldown = self.policies.cooldown_for(kind)
        if cooldown and history.count_near(kind, t, cooldown):
            return f"cooldown {_format_duration(cooldown)} for {kind}"
        cap = rule.cap if rule is not None and "cap" in overrides else self.policies.cap
        if cap is not None and history.count_near(kind, t, cap.per_ms) >= cap.max:
            return f"cap {cap} for {kind} reached"
        return ""

    def __reduce__(
        self,
    ) -> tuple[type[TriggerRules], tuple[tuple[TriggerRule, ...], RuleSettings, Policies, str]]:
        return (TriggerRules, (self.rules, self.settings, self.policies, self.source))

    def __repr__(self) -> str:
        return f"TriggerRules({self.source!r}, names={self.names!r})"


# --- loading and validation ----------------------------------------------------------------------


class TriggerRuleError(RuleError):
    """A trigger rule file is invalid: ``str(error)`` is ``"<file>:<line>: <reason>"``.

    A :class:`attune.operators.segments.RuleError` (so a ``ValueError``) with ``file``, ``line``
    (1-based; 0 for an empty file) and ``reason`` (naming the rule when known).
    """


def load_trigger_rules(
    path: Path | None = None,
    extra: Path | None = None,
    *,
    segments: Collection[str] | None = None,
    kinds: Collection[str] | None = None,
) -> TriggerRules:
    """Load and validate trigger rules: a base file and an optional user file over it.

    Parameters
    ----------
    path
        The base rule file; ``None`` reads the shipped ``flows/rules.yaml``.
    extra
        A user file: its rules replace base rules of the same name in place (``enabled:
        false`` removes one) or are appended; its ``settings`` and ``policies`` keys
        replace the base's, key by key.
    segments
        Known segment names (e.g. ``load_rules().names``): ``in_segment`` names outside
        them (and not ``persona_<n>``) are errors. ``None``: not checked.
    kinds
        Known trigger kinds (the ``attune.triggers.<kind>`` topics): ``kind`` names outside
        them are errors. ``None``: not checked.

    Returns
    -------
    TriggerRules
        The compiled rules.

    Raises
    ------
    TriggerRuleError
        A file is invalid; the message names its file, line and reason.
    OSError
        A file cannot be read.

    Examples
    --------
    >>> rules = load_trigger_rules()
    >>> rules.names[:2]
    ('high_value_cart_offer', 'cart_reminder')
    >>> rules.policies.cap, rules.settings.consent_default
    (Cap(max=3, per_ms=86400000), 'deny')
    """
    if path is None:
        shipped = resources.files("attune.flows") / "rules.yaml"
        base_text, base_source = shipped.read_text(encoding="utf-8"), str(shipped)
    else:
        base_text, base_source = Path(path).read_text(encoding="utf-8"), str(path)
    base = _TriggerRuleParser(base_source, segments, kinds).parse_file(base_text)
    if extra is None:
        return base.build(base_source)
    user = _TriggerRuleParser(str(extra), segments, kinds).parse_file(
        Path(extra).read_text(encoding="utf-8")
    )
    return base.merged(user).build(f"{base_source} + {extra}")


def parse_trigger_rules(
    text: str,
    source: str = "<string>",
    *,
    segments: Collection[str] | None = None,
    kinds: Collection[str] | None = None,
) -> TriggerRules:
    """Parse and validate trigger rules from YAML text (one file; see :func:`load_trigger_rules`).

    Raises
    ------
    TriggerRuleError
        The text is not a valid rule file.

    Examples
    --------
    >>> parse_trigger_rules("rules: []").names
    ()
    >>> try:
    ...     parse_trigger_rules(
    ...         "rules:\\n  - name: r\\n    description: d\\n    cooldown: 6x\\n    publish: {}\\n",
    ...         "mine.yaml")
    ... except TriggerRuleError as e:
    ...     print(e)
    mine.yaml:4: rule 'r': bad duration '6x' for cooldown: ...
    """
    return _TriggerRuleParser(source, segments, kinds).parse_file(text).build(source)


@dataclass(slots=True)
class _FileSpec:
    """One parsed file: only the keys it sets, so that a user file overrides key by key."""

    settings: dict[str, Any]
    policies: dict[str, Any]
    rules: list[TriggerRule]

    def merged(self, user: _FileSpec) -> _FileSpec:
        rules = list(self.rules)
        at = {r.name: i for i, r in enumerate(rules)}
        for r in user.rules:
            if r.name in at:
                rules[at[r.name]] = r
            else:
                at[r.name] = len(rules)
                rules.append(r)
        return _FileSpec(
            {**self.settings, **user.settings}, {**self.policies, **user.policies}, rules
        )

    def build(self, source: str) -> TriggerRules:
        return TriggerRules(
            self.rules, RuleSettings(**self.settings), Policies(**self.policies), source
        )


_LEAF_KEYS: Final = ("kind", "in_segment", "not_in_segment", "score", "hours", "channel")
_COMPARE_KEYS: Final = ("feature", "op", "value")
_RULE_KEYS: Final = (
    "name",
    "description",
    "when",
    "publish",
    "suppress",
    "purpose",
    "cap",
    "cooldown",
    "quiet_hours",
    "enabled",
    "message",
)


class _TriggerRuleParser(ConditionParser):
    """The segments parser, with trigger leaves, rules, settings and policies."""

    subject = "rule"

    def __init__(
        self,
        source: str,
        segments: Collection[str] | None = None,
        kinds: Collection[str] | None = None,
    ) -> None:
        super().__init__(source)
        self.known_segments = frozenset(segments) if segments is not None else None
        self.known_kinds = frozenset(kinds) if kinds is not None else None

    def make_error(self, line: int, reason: str) -> TriggerRuleError:
        return TriggerRuleError(self.source, line, reason)

    # -- the file

    def parse_file(self, text: str) -> _FileSpec:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            raise self._syntax_error(text, exc) from exc
        if root is None:
            raise self.make_error(0, "empty rule file: expected a mapping with 'rules'")
        top = self.mapping(root, "the rule file", ("settings", "policies", "rules"))
        spec = _FileSpec({}, {}, [])
        if "settings" in top:
            spec.settings = self.parse_settings(top["settings"][1])
        if "policies" in top:
            spec.policies = self.parse_policies(top["policies"][1])
        if "rules" in top:
            seq = top["rules"][1]
            if not isinstance(seq, yaml.SequenceNode):
                raise self.error(seq, f"'rules' must be a list, got {_kind(seq)}")
            lines: dict[str, int] = {}
            for index, node in enumerate(seq.value, start=1):
                rule = self.parse_rule(node, index)
                if rule.name in lines:
                    self.segment = repr(rule.name)
                    raise self.error(
                        node, f"duplicate rule name (first declared at line {lines[rule.name]})"
                    )
                lines[rule.name] = rule.line
                spec.rules.append(rule)
            self.segment = ""
        return spec

    def parse_settings(self, node: yaml.Node) -> dict[str, Any]:
        entries = self.mapping(
            node, "settings", ("default", "consent_default", "purpose", "default_timezone")
        )
        out: dict[str, Any] = {}
        for key, choices in (
            ("default", ("publish", "drop")),
            ("consent_default", ("deny", "allow")),
            ("purpose", PURPOSES),
        ):
            if key in entries:
                out[key] = self.choice(entries[key][1], key, choices)
        if "default_timezone" in entries:
            tz_node = entries["default_timezone"][1]
            tz = self.scalar(tz_node)
            if tz is not None:
                out["default_timezone"] = self.timezone(tz_node)
            else:
                out["default_timezone"] = None
        return out

    def parse_policies(self, node: yaml.Node) -> dict[str, Any]:
        entries = self.mapping(node, "policies", ("quiet_hours", "cap", "cooldown"))
        out: dict[str, Any] = {}
        if "quiet_hours" in entries:
            out["quiet_hours"] = self.optional(entries["quiet_hours"][1], self.hour_window)
        if "cap" in entries:
            out["cap"] = self.optional(entries["cap"][1], self.cap)
        if "cooldown" in entries:
            cd_node = entries["cooldown"][1]
            if isinstance(cd_node, yaml.MappingNode):
                cooldowns: dict[str, int] = {}
                for kind, (key_node, value_node) in self.mapping(
                    cd_node, "cooldown", _AnyKey()
                ).items():
                    if kind != "*":
                        self.kind_name(key_node, kind)
                    cooldowns[kind] = self.duration(value_node, f"cooldown of {kind}")
                out["cooldowns"] = cooldowns
            else:
                got = self.optional(cd_node, lambda n: self.duration(n, "cooldown"))
                out["cooldowns"] = {} if got is None else {"*": got}
        return out

    # -- one rule

    def parse_rule(self, node: yaml.Node, index: int) -> TriggerRule:
        entries, name, _ = self.named_entry(node, index, "a rule", _RULE_KEYS)
        if "description" not in entries:
            raise self.error(node, "missing 'description' (say what the rule is for)")
        description = self.string(entries["description"][1], "description").strip()
        when = self.parse_condition(entries["when"][1]) if "when" in entries else None
        fields: dict[str, Any] = {}
        if ("publish" in entries) == ("suppress" in entries):
            raise self.error(node, "a rule needs exactly one action: 'publish' or 'suppress'")
        if "suppress" in entries:
            fields["action"] = "suppress"
            fields["reason"] = self.string(entries["suppress"][1], "suppress (the reason)")
            for key in ("purpose", "cap", "cooldown", "quiet_hours"):
                if key in entries:
                    raise self.error(entries[key][0], f"{key!r} applies to publish rules only")
        else:
            fields["action"] = "publish"
            fields.update(self.parse_publish(entries["publish"][1]))
        if "purpose" in entries:
            fields["purpose"] = self.choice(entries["purpose"][1], "purpose", PURPOSES)
        overrides: set[str] = set()
        if "cap" in entries:
            fields["cap"] = self.optional(entries["cap"][1], self.cap)
            overrides.add("cap")
        if "cooldown" in entries:
            fields["cooldown_ms"] = self.optional(
                entries["cooldown"][1], lambda n: self.duration(n, "cooldown")
            )
            overrides.add("cooldown")
        if "quiet_hours" in entries:
            fields["quiet_hours"] = self.optional(entries["quiet_hours"][1], self.hour_window)
            overrides.add("quiet_hours")
        if "message" in entries:
            if "suppress" in entries:
                raise self.error(entries["message"][0], "'message' applies to publish rules only")
            fields["message"] = self.string(entries["message"][1], "message").strip() or None
        if "enabled" in entries:
            enabled_node = entries["enabled"][1]
            enabled = self.scalar(enabled_node)
            if not isinstance(enabled, bool):
                raise self.error(enabled_node, f"enabled must be true or false, got {enabled!r}")
            fields["enabled"] = enabled
        rule = TriggerRule(
            name=name,
            description=description,
            when=when,
            overrides=frozenset(overrides),
            line=node.start_mark.line + 1,
            source=self.source,
            **fields,
        )
        self.segment = ""
        return rule

    def parse_publish(self, node: yaml.Node) -> dict[str, Any]:
        if isinstance(node, yaml.ScalarNode) and self.scalar(node) is None:
            return {}
        entries = self.mapping(node, "publish", ("kind", "attributes"))
        out: dict[str, Any] = {}
        if "kind" in entries:
            out["kind"] = self.kind_name(entries["kind"][1])
        if "attributes" in entries:
            attributes: dict[str, str] = {}
            for key, (key_node, value_node) in self.mapping(
                entries["attributes"][1], "attributes", _AnyKey()
            ).items():
                if key == RULE_ATTRIBUTE:
                    raise self.error(
                        key_node, f"attribute {key!r} is reserved: it names the publishing rule"
                    )
                value = self.scalar(value_node)
                if not isinstance(value, str):
                    raise self.error(
                        value_node,
                        f"attribute {key!r} must be a string, got {value!r} (quote it)",
                    )
                attributes[key] = value
            out["attributes"] = attributes
        return out

    # -- the trigger leaves

    def parse_leaf(self, node: yaml.MappingNode) -> Condition:
        entries = self.mapping(node, "a condition", (*_COMPARE_KEYS, *_LEAF_KEYS))
        leaf_keys = [k for k in entries if k in _LEAF_KEYS]
        if not leaf_keys:
            return self.parse_compare(node)
        compare_keys = [k for k in entries if k in _COMPARE_KEYS]
        if compare_keys:
            raise self.error(
                entries[compare_keys[0]][0],
                f"a condition mixes {compare_keys[0]!r} with {leaf_keys[0]!r}: "
                "write each as its own condition under 'all'",
            )
        # Several trigger keys in one mapping ({kind: K, in_segment: S}): all must hold.
        leaves = tuple(self.parse_trigger_leaf(key, *entries[key]) for key in leaf_keys)
        return leaves[0] if len(leaves) == 1 else AllOf(leaves)

    def parse_trigger_leaf(self, key: str, key_node: yaml.Node, node: yaml.Node) -> Leaf:
        if key == "kind":
            return KindIs(tuple(self.kind_name(n) for n in self.one_or_list(node, key)))
        if key in ("in_segment", "not_in_segment"):
            names = tuple(self.segment_name(n) for n in self.one_or_list(node, key))
            return InSegment(names, negate=key == "not_in_segment")
        if key == "channel":
            return ChannelIs(tuple(self.channel(n) for n in self.one_or_list(node, key)))
        if key == "hours":
            return HoursIn(self.hour_window(node))
        return ScoreCompare(self.score(node))

    def score(self, node: yaml.Node) -> Compare:
        entries = self.mapping(node, "score", ("name", "op", "value"))
        if "name" not in entries or "op" not in entries:
            raise self.error(node, "score needs 'name', 'op' and 'value'")
        name_node = entries["name"][1]
        name = self.string(name_node, "score name")
        if not _NAME.fullmatch(name):
            raise self.error(name_node, f"bad score name {name!r}: use [a-z0-9_]")
        op_node = entries["op"][1]
        op = self.scalar(op_node)
        if op not in SCORE_OPS:
            raise self.error(
                op_node, f"unknown op {op!r} on score {name!r}; use one of {', '.join(SCORE_OPS)}"
            )
        if op in NULL_OPS:
            if "value" in entries:
                raise self.error(entries["value"][0], f"'{op}' takes no value")
            return Compare(name, op)
        if "value" not in entries:
            raise self.error(node, f"score {name!r} {op} has no 'value'")
        value_node = entries["value"][1]
        value = self.scalar(value_node)
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise self.error(value_node, f"score {name!r}: value {value!r} is not a number")
        return Compare(name, op, value)

    # -- scalars

    def one_or_list(self, node: yaml.Node, key: str) -> list[yaml.Node]:
        if isinstance(node, yaml.SequenceNode):
            if not node.value:
                raise self.error(node, f"{key!r} has an empty list")
            return list(node.value)
        return [node]

    def choice(self, node: yaml.Node, key: str, choices: tuple[str, ...]) -> Any:
        value = self.scalar(node)
        if value not in choices:
            raise self.error(node, f"{key} must be one of {', '.join(choices)}, got {value!r}")
        return value

    def kind_name(self, node: yaml.Node, value: Any = None) -> str:
        kind = self.scalar(node) if value is None else value
        if not isinstance(kind, str) or not _NAME.fullmatch(kind):
            raise self.error(node, f"bad kind {kind!r}: use lower-case letters, digits and '_'")
        if self.known_kinds is not None and kind not in self.known_kinds:
            raise self.error(node, f"unknown kind {kind!r}{_suggest(kind, self.known_kinds)}")
        return kind

    def segment_name(self, node: yaml.Node) -> str:
        name = self.scalar(node)
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise self.error(node, f"bad segment name {name!r}: use [a-z0-9_]")
        known = self.known_segments
        if (
            known is not None
            and name not in known
            and not re.fullmatch(rf"{CLUSTER_SEGMENT_PREFIX}\d+", name)
        ):
            raise self.error(node, f"unknown segment {name!r}{_suggest(name, known)}")
        return name

    def channel(self, node: yaml.Node) -> str:
        value = self.scalar(node)
        if value not in CHANNELS:
            hint = _suggest(str(value).upper(), CHANNELS) if isinstance(value, str) else ""
            raise self.error(
                node, f"unknown channel {value!r}{hint}; use one of {', '.join(CHANNELS)}"
            )
        return str(value)

    def hour_window(self, node: yaml.Node) -> HourWindow:
        entries = self.mapping(node, "an hour window", ("from", "to"))
        if "from" not in entries or "to" not in entries:
            raise self.error(node, "an hour window needs 'from' and 'to' (local hours, 0-24)")
        start = self.hour(entries["from"][1], "from", 23)
        end = self.hour(entries["to"][1], "to", 24)
        if start == end:
            raise self.error(node, f"empty hour window: from {start} to {end}")
        return HourWindow(start, end)

    def hour(self, node: yaml.Node, key: str, highest: int) -> int:
        value = self.scalar(node)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= highest:
            raise self.error(node, f"bad hour {value!r} for {key!r}: use a whole hour 0-{highest}")
        return value

    def duration(self, node: yaml.Node, what: str) -> int:
        value = self.scalar(node)
        match = _DURATION.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            raise self.error(
                node,
                f"bad duration {value!r} for {what}: use a whole number and a unit "
                "(ms, s, m, h, d), e.g. 6h",
            )
        ms = int(match.group(1)) * _UNIT_MS[match.group(2)]
        if ms <= 0:
            raise self.error(node, f"{what} must be positive, got {value!r}")
        return ms

    def cap(self, node: yaml.Node) -> Cap:
        entries = self.mapping(node, "cap", ("max", "per"))
        if "max" not in entries or "per" not in entries:
            raise self.error(node, "cap needs 'max' and 'per', e.g. {max: 3, per: 24h}")
        max_node = entries["max"][1]
        most = self.scalar(max_node)
        if isinstance(most, bool) or not isinstance(most, int) or not 1 <= most <= HISTORY_MAX:
            raise self.error(
                max_node,
                f"cap max must be a whole number 1-{HISTORY_MAX} (the history keeps "
                f"{HISTORY_MAX} publish times per kind), got {most!r}",
            )
        return Cap(most, self.duration(entries["per"][1], "cap per"))

    def timezone(self, node: yaml.Node) -> str:
        name = self.string(node, "default_timezone")
        if _zone(name) is None:
            raise self.error(node, f"unknown timezone {name!r}: use an IANA name such as UTC")
        return name

    def optional(self, node: yaml.Node, parse: Callable[[yaml.Node], Any]) -> Any:
        """``null`` turns a policy off; anything else is parsed."""
        if isinstance(node, yaml.ScalarNode) and self.scalar(node) is None:
            return None
        return parse(node)


class _AnyKey(tuple[str, ...]):
    """An ``allowed`` for :meth:`ConditionParser.mapping` that allows every key."""

    def __contains__(self, key: object) -> bool:
        return True


def _suggest(name: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
