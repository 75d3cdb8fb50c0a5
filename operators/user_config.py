"""What the per-user step is configured with: :class:`ProfileConfig`.

The context every stage of the per-user step (:mod:`attune.operators.user_step`) reads:
tunables (session gap, dedupe window, state TTL), the rule sets, the catalogue's price
bands, the clocks, the consent policy and the boards the shared learners publish to.
Settings feed it (:func:`attune.flows.personalize.profile_config`); it is configuration,
not state: built once per worker, never snapshotted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from attune.operators.clock import DAY_MS, MINUTE_MS, Clock, SystemClock
from attune.operators.clustering import ParamsBoard
from attune.operators.consent import ConsentPolicy
from attune.operators.models import ModelReader, RecsConfig
from attune.operators.redis_keys import RedisKeys
from attune.operators.rules import TriggerRules
from attune.operators.segments import RuleSet
from attune.operators.sessions import PriceBands
from attune.operators.stream_clock import STREAM_CLOCK, StreamClock
from attune.operators.triggers import TriggerConfig


@dataclass(frozen=True, slots=True)
class ProfileConfig:
    """Tunables of the per-user step (settings feed them; defaults as documented)."""

    session_gap_ms: int = 30 * MINUTE_MS
    dedupe_window_ms: int = DAY_MS
    state_ttl: timedelta = timedelta(days=30)
    rules: RuleSet | None = None
    price_bands: PriceBands = field(default_factory=PriceBands)
    clock: Clock = field(default_factory=SystemClock)
    #: Where the latest cluster parameters are read; None: no clustering.
    board: ParamsBoard | None = None
    triggers: TriggerConfig = field(default_factory=TriggerConfig)
    #: Declarative trigger rules (operators/rules.py); None: consent check only.
    trigger_rules: TriggerRules | None = None
    #: The process's stream clock for timers of users who send nothing more.
    stream_clock: StreamClock = field(default_factory=lambda: STREAM_CLOCK)
    #: Consent that applies when a user stated none (operators/consent.py).
    consent: ConsentPolicy = field(default_factory=ConsentPolicy)
    #: Key names, for the erasure confirmation's list of deleted keys.
    keys: RedisKeys = field(default_factory=RedisKeys)
    #: Every audience set the flow writes (rule segments and personas): erasure removes
    #: the user from all of them, whatever the state still knows.
    audiences: tuple[str, ...] = ()
    #: The shared recommendation and propensity models (operators/models.py); None: no
    #: recommendations, no propensity, no session summaries.
    models: ModelReader | None = None
    recs: RecsConfig = field(default_factory=RecsConfig)
