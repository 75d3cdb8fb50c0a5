"""Declarative trigger rules: which behavioural triggers are published, how, and how often.

Stage 8 of the flow (docs/architecture.md). The per-user state fires raw triggers
(cart abandoned, long dwell, repeat visit, segment entered...); a :class:`TriggerRules`
decides, per trigger, what reaches the ``attune.triggers.<kind>`` topics:

- rules, in file order, match on the trigger kind, the user's features (the condition
  grammar of :mod:`attune.operators.conditions`, with its trigger leaves), segments, model
  scores, the local hour and the channel; a matching ``suppress`` rule drops the
  trigger, every matching ``publish`` rule yields one output trigger with its payload;
- policies then hold publishes back: marketing consent, quiet hours, cooldowns and
  frequency caps, per user and per output kind, kept in a small :class:`TriggerHistory`
  inside the user's state.

Every decision reads event time (the trigger's ``cause_event_time``), never the wall
clock, and output ids are hashes of the input id and the rule name, so a replay decides
the same and publishes the same ids. Rules are YAML (shipped defaults in
``flows/rules.yaml``, plus an optional user file), validated at start-up by
:mod:`attune.operators.rule_files` with errors that name the file, the line and the
reason. docs/triggers.md is the reference.

>>> from attune.operators.rule_files import parse_trigger_rules
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
import hashlib
import zoneinfo
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal, TypeAlias

from attune.operators.conditions import (
    AllOf,
    ChannelIs,
    Compare,
    Condition,
    HoursIn,
    HourWindow,
    InSegment,
    KindIs,
    Leaf,
    ScoreCompare,
    compile_compare,
    compile_condition,
    describe,
)
from attune.operators.events import Trigger
from attune.operators.features import Features

__all__ = [
    "DEFAULT_RULE",
    "HISTORY_MAX",
    "Cap",
    "Decision",
    "Policies",
    "RuleSettings",
    "TriggerContext",
    "TriggerHistory",
    "TriggerRule",
    "TriggerRules",
    "trigger_id_for",
]

#: Publish times kept per output kind in a user's :class:`TriggerHistory`; a ``cap`` may
#: not allow more than this many per window.
HISTORY_MAX: Final = 16
#: The rule name reported for triggers that no rule matched (``settings.default``).
DEFAULT_RULE: Final = "<default>"
#: The attribute every published trigger carries: the name of the rule that published it.
RULE_ATTRIBUTE: Final = "rule"

Purpose: TypeAlias = Literal["marketing", "service"]
PURPOSES: Final = ("marketing", "service")

_UNIT_MS: Final = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_MAX_ZONES: Final = 1024  # cached timezone lookups (names come from events: bound them)


# --- time: durations, timezones ---------------------------------------------------------------


def _format_duration(ms: int) -> str:
    for unit in ("d", "h", "m", "s"):
        if ms % _UNIT_MS[unit] == 0:
            return f"{ms // _UNIT_MS[unit]}{unit}"
    return f"{ms}ms"


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


# --- compiling the trigger leaves (:mod:`attune.operators.conditions`) over a decision's input ---


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

    Build with :func:`~attune.operators.rule_files.load_trigger_rules` or
    :func:`~attune.operators.rule_files.parse_trigger_rules` (which validate).
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
        >>> from attune.operators.rule_files import load_trigger_rules
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
