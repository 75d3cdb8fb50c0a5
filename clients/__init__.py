"""Client library for apps downstream of Attune.

:mod:`attune.clients.subscriber` reads behavioural triggers from the trigger topics
(typed, at-least-once) and helps act on each trigger once;
:mod:`attune.clients.recommendations` reads a user's recommendations from Redis,
falling back to trending for users without any, and says which it used.

>>> from attune.clients import ActOnce, RecommendationClient, TriggerSubscriber
"""

from attune.clients.recommendations import (
    CorruptRecommendationsError,
    Recommendation,
    RecommendationClient,
    Recommendations,
)
from attune.clients.subscriber import (
    ActOnce,
    Delivery,
    MemoryOnceStore,
    OnceStore,
    ProcessStats,
    Received,
    RedisOnceStore,
    TriggerSubscriber,
    Undecodable,
    decode_record,
)

__all__ = [
    "ActOnce",
    "CorruptRecommendationsError",
    "Delivery",
    "MemoryOnceStore",
    "OnceStore",
    "ProcessStats",
    "Received",
    "Recommendation",
    "RecommendationClient",
    "Recommendations",
    "RedisOnceStore",
    "TriggerSubscriber",
    "Undecodable",
    "decode_record",
]
