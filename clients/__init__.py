"""Client library for apps downstream of Attune.

:mod:`clients.subscriber` reads behavioural triggers from the trigger topics
(typed, at-least-once) and helps act on each trigger once.

>>> from clients import ActOnce, TriggerSubscriber
"""

from clients.subscriber import (
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
    "Delivery",
    "MemoryOnceStore",
    "OnceStore",
    "ProcessStats",
    "Received",
    "RedisOnceStore",
    "TriggerSubscriber",
    "Undecodable",
    "decode_record",
]
