"""The rule files: segment and trigger rule YAML, validated at start-up into their evaluators.

At start-up, before the flow runs (docs/architecture.md). :func:`load_rules`
reads a segment file (shipped defaults ``flows/segments.yaml``; docs/segments.md is the
reference) into the :class:`~attune.operators.segments.RuleSet` the per-user state evaluates;
:func:`load_trigger_rules` reads the trigger rule files (shipped ``flows/rules.yaml`` and an
optional user file merged over it; docs/triggers.md) into
:class:`~attune.operators.rules.TriggerRules`. This module checks what is around the
conditions (keys, names, descriptions, actions, durations, caps, settings, policies) and hands
every condition to the one condition parser,
:class:`~attune.operators.conditions.ConditionParser`. Every file is validated once, against
the declared type of every feature, with errors that name the file, the line and the reason
(as Metarank does).

>>> rules = parse_rules('''
... segments:
...   - name: big_cart
...     description: a cart worth 100.00 or more
...     condition: {feature: cart_value_minor, op: ">=", value: 10000}
... ''')
>>> rules.names, sorted(rules.evaluate({"cart_value_minor": 12000}))
(('big_cart',), ['big_cart'])
>>> try:
...     parse_rules("segments:\\n  - name: x\\n    description: d\\n"
...                 "    condition: {feature: cart_valu, op: '>', value: 1}\\n", "my.yaml")
... except RuleError as e:
...     print(f"{e.file}:{e.line}:", e.reason, sep="\\n")
my.yaml:4:
segment 'x': unknown feature 'cart_valu' (did you mean 'cart_value_minor'?)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

import yaml

from attune.operators.conditions import (
    _NAME,
    CLUSTER_SEGMENT_PREFIX,
    TRIGGER_LEAVES,
    AllOf,
    AnyOf,
    Condition,
    ConditionParser,
    InSegment,
    Not,
    RuleError,
    _kind,
)
from attune.operators.rules import (
    _UNIT_MS,
    HISTORY_MAX,
    PURPOSES,
    RULE_ATTRIBUTE,
    Cap,
    Policies,
    RuleSettings,
    TriggerRule,
    TriggerRules,
    _zone,
)
from attune.operators.segments import RuleSet, Segment

log = logging.getLogger(__name__)

__all__ = [
    "RuleError",
    "TriggerRuleError",
    "load_rules",
    "load_trigger_rules",
    "parse_rules",
    "parse_trigger_rules",
]

_DURATION = re.compile(r"(\d+)(ms|s|m|h|d)")


# --- segment files ------------------------------------------------------------------------------


def load_rules(path: Path | None = None) -> RuleSet:
    """Load and validate a rule file; ``None`` loads the shipped defaults.

    Parameters
    ----------
    path
        A YAML rule file (docs/segments.md has the grammar). ``None`` reads
        ``flows/segments.yaml`` from the installed package.

    Returns
    -------
    RuleSet
        The compiled rules.

    Raises
    ------
    RuleError
        The file is not valid; the message names file, line and reason.
    OSError
        The file cannot be read.

    Examples
    --------
    >>> rules = load_rules()
    >>> rules.names[:2]
    ('interested_but_hesitant', 'frequent_buyer')
    >>> sorted(rules.evaluate({"purchases_30d": 4, "revenue_30d_minor": 61_000, "sessions": 5,
    ...                        "purchases": 9, "days_since_last_purchase": 1.5}))
    ['frequent_buyer', 'high_value']
    """
    if path is None:
        shipped = resources.files("attune.flows") / "segments.yaml"
        return parse_rules(shipped.read_text(encoding="utf-8"), str(shipped))
    return parse_rules(Path(path).read_text(encoding="utf-8"), str(path))


def parse_rules(text: str, source: str = "<string>") -> RuleSet:
    """Parse and validate rules from YAML text.

    Parameters
    ----------
    text
        The YAML document: a mapping with a ``segments`` list.
    source
        The file name used in error messages.

    Returns
    -------
    RuleSet
        The compiled rules.

    Raises
    ------
    RuleError
        The text is not a valid rule file.

    Examples
    --------
    >>> parse_rules("segments: []").names
    ()
    >>> parse_rules("segments:\\n  - name: Big\\n", "r.yaml")
    Traceback (most recent call last):
    ...
    attune.operators.conditions.RuleError: r.yaml:2: segment 'Big': bad name 'Big': use ...
    """
    return RuleSet(_SegmentFileParser(source).parse(text), source)


# --- trigger rule files -------------------------------------------------------------------------


class TriggerRuleError(RuleError):
    """A trigger rule file is invalid: ``str(error)`` is ``"<file>:<line>: <reason>"``.

    A :class:`attune.operators.conditions.RuleError` (so a ``ValueError``) with ``file``, ``line``
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
    user = None
    if extra is not None:
        user = _TriggerRuleParser(str(extra), segments, kinds).parse_file(
            Path(extra).read_text(encoding="utf-8")
        )
    if path is None:
        shipped = resources.files("attune.flows") / "rules.yaml"
        base_source = str(shipped)
        # The shipped rules name the shipped segments; a user's own segments file need not
        # define them: the rules that need a segment it lacks are skipped (see _skip_needing).
        base = _TriggerRuleParser(base_source, None, kinds).parse_file(
            shipped.read_text(encoding="utf-8")
        )
        if segments is not None:
            base = _skip_needing(base, frozenset(segments), user, base_source)
    else:
        base_source = str(path)
        base = _TriggerRuleParser(base_source, segments, kinds).parse_file(
            Path(path).read_text(encoding="utf-8")
        )
    if user is None:
        return base.build(base_source)
    return base.merged(user).build(f"{base_source} + {extra}")


def _segments_named(condition: Condition | None) -> set[str]:
    if isinstance(condition, InSegment):
        return set(condition.segments)
    if isinstance(condition, AllOf | AnyOf):
        return set().union(*(_segments_named(c) for c in condition.children))
    if isinstance(condition, Not):
        return _segments_named(condition.child)
    return set()


def _needs(condition: Condition | None, missing: frozenset[str]) -> bool:
    """True when ``condition`` cannot hold for a user in none of ``missing`` (``in_segment``
    on them only); ``not_in_segment`` on a missing segment always holds, so it does not need it."""
    if isinstance(condition, InSegment):
        return not condition.negate and set(condition.segments) <= missing
    if isinstance(condition, AllOf):
        return any(_needs(c, missing) for c in condition.children)
    if isinstance(condition, AnyOf):
        return all(_needs(c, missing) for c in condition.children)
    return False


def _skip_needing(
    base: _FileSpec, known: frozenset[str], user: _FileSpec | None, source: str
) -> _FileSpec:
    """``base`` without the rules that need a segment outside ``known``, reported in one line
    (not those the user's file replaces or disables: it decides about them)."""
    named_by_user = {r.name for r in user.rules} if user is not None else set()
    kept: list[TriggerRule] = []
    skipped: list[str] = []
    for rule in base.rules:
        missing = frozenset(
            name
            for name in _segments_named(rule.when)
            if name not in known and not re.fullmatch(rf"{CLUSTER_SEGMENT_PREFIX}\d+", name)
        )
        if missing and _needs(rule.when, missing):
            if rule.name not in named_by_user:
                skipped.append(f"{rule.name} (in_segment {', '.join(sorted(missing))})")
            continue
        kept.append(rule)
    if skipped:
        log.warning(
            "%s: skipped shipped trigger rule(s) needing a segment your segments file does "
            "not define: %s",
            source,
            "; ".join(skipped),
        )
    return _FileSpec(base.settings, base.policies, kept)


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


# --- the parsers: the condition parser and the file around the conditions ----------------------


class _RuleFileParser(ConditionParser):
    """The condition parser, with what both files have: a list of named entries."""

    def name_in_errors(self, node: yaml.Node, index: int) -> None:
        """Errors about the entry at ``node`` name it: by its ``name`` key, else ``#index``."""
        self.segment = f"#{index}"
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if (
                    isinstance(key_node, yaml.ScalarNode)
                    and key_node.value == "name"
                    and isinstance(value_node, yaml.ScalarNode)
                    and value_node.value
                ):
                    self.segment = repr(value_node.value)

    def named_entry(
        self, node: yaml.Node, index: int, what: str, keys: Sequence[str]
    ) -> tuple[dict[str, tuple[yaml.Node, yaml.Node]], str, yaml.Node]:
        """A list entry that must be a mapping with a valid ``name``: entries, name, node."""
        self.name_in_errors(node, index)
        entries = self.mapping(node, what, keys)
        if "name" not in entries:
            raise self.error(node, "missing 'name'")
        name_node = entries["name"][1]
        name = self.scalar(name_node)
        if not isinstance(name, str):
            raise self.error(name_node, f"name must be a string, got {name!r}")
        self.segment = repr(name)
        if not _NAME.fullmatch(name):
            raise self.error(
                name_node, f"bad name {name!r}: use lower-case letters, digits and '_'"
            )
        return entries, name, name_node


class _SegmentFileParser(_RuleFileParser):
    """A segment file: a list of named segments, each with a condition."""

    subject = "segment"

    def parse(self, text: str) -> list[Segment]:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            raise self._syntax_error(text, exc) from exc
        except yaml.YAMLError as exc:  # pragma: no cover - PyYAML raises marked errors
            raise self.make_error(0, f"YAML error: {exc}") from exc
        if root is None:
            raise self.make_error(0, "empty rule file: expected a mapping with 'segments'")
        top = self.mapping(root, "the rule file", ("segments",))
        if "segments" not in top:
            raise self.error(root, "the rule file has no 'segments' list")
        _key, seq = top["segments"]
        if not isinstance(seq, yaml.SequenceNode):
            raise self.error(seq, f"'segments' must be a list, got {_kind(seq)}")
        segments: list[Segment] = []
        lines: dict[str, int] = {}
        for index, node in enumerate(seq.value, start=1):
            segment = self.parse_segment(node, index)
            if segment.name in lines:
                self.segment = repr(segment.name)
                raise self.error(
                    node,
                    f"duplicate segment name (first declared at line {lines[segment.name]})",
                )
            lines[segment.name] = segment.line
            segments.append(segment)
        self.segment = ""
        return segments

    def parse_segment(self, node: yaml.Node, index: int) -> Segment:
        entries, name, name_node = self.named_entry(
            node, index, "a segment", ("name", "description", "condition")
        )
        if name.startswith(CLUSTER_SEGMENT_PREFIX):
            raise self.error(
                name_node,
                f"bad name {name!r}: names starting with {CLUSTER_SEGMENT_PREFIX!r} are "
                "reserved for cluster personas",
            )
        if "description" not in entries:
            raise self.error(node, "missing 'description' (say what the segment means)")
        description = self.string(entries["description"][1], "description").strip()
        if "condition" not in entries:
            raise self.error(node, "missing 'condition'")
        condition = self.parse_condition(entries["condition"][1])
        line = node.start_mark.line + 1
        self.segment = ""
        return Segment(name=name, description=description, condition=condition, line=line)


class _TriggerRuleParser(_RuleFileParser):
    """A trigger rule file: settings, policies and named rules, conditions with trigger leaves."""

    subject = "rule"

    def __init__(
        self,
        source: str,
        segments: Collection[str] | None = None,
        kinds: Collection[str] | None = None,
    ) -> None:
        super().__init__(source, TRIGGER_LEAVES, segments=segments, kinds=kinds)

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
        enabled = True
        if "enabled" in entries:
            enabled_node = entries["enabled"][1]
            enabled = self.scalar(enabled_node)
            if not isinstance(enabled, bool):
                raise self.error(enabled_node, f"enabled must be true or false, got {enabled!r}")
        # A disabled rule (``- name: x`` + ``enabled: false``, to remove a shipped one) needs
        # no description and no action; what it does give is still checked.
        if "description" in entries:
            description = self.string(entries["description"][1], "description").strip()
        elif enabled:
            raise self.error(node, "missing 'description' (say what the rule is for)")
        else:
            description = ""
        when = self.parse_condition(entries["when"][1]) if "when" in entries else None
        if enabled or "publish" in entries or "suppress" in entries:
            fields = self.rule_action(node, entries)
        else:
            fields = {"action": "suppress", "reason": "disabled"}
        overrides = self.rule_policies(entries, fields)
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

    def rule_action(
        self, node: yaml.Node, entries: dict[str, tuple[yaml.Node, yaml.Node]]
    ) -> dict[str, Any]:
        """A rule's action: publish (kind, attributes, message) or suppress (reason)."""
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
        if "message" in entries:
            if "suppress" in entries:
                raise self.error(entries["message"][0], "'message' applies to publish rules only")
            fields["message"] = self.string(entries["message"][1], "message").strip() or None
        return fields

    def rule_policies(
        self, entries: dict[str, tuple[yaml.Node, yaml.Node]], fields: dict[str, Any]
    ) -> set[str]:
        """A rule's own purpose, cap, cooldown and quiet hours into ``fields``; the names
        of the policies it overrides."""
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
        return overrides

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

    # -- scalars

    def choice(self, node: yaml.Node, key: str, choices: tuple[str, ...]) -> Any:
        value = self.scalar(node)
        if value not in choices:
            raise self.error(node, f"{key} must be one of {', '.join(choices)}, got {value!r}")
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
