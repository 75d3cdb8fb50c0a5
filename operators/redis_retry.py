"""Redis outages: retry with backoff, hold the flow's writes back, give up past a limit.

Redis that stops answering for a while (restarted, frozen, a network partition) must
not kill the flow, and must not lose writes: the sink's batch and the readers' requests
(the published models, the cluster parameters, the stream clock's marks) are retried
with a growing delay, and while they are, the step that made them waits, so Bytewax
stops feeding the flow: writes are held back, never dropped. Past
``ATTUNE_REDIS_OUTAGE_LIMIT_S`` of silence the flow stops with one line naming Redis and
its URL (:class:`RedisUnavailableError`); restarted from its recovery store, the flow replays
from its last snapshot and rewrites what was not written (every write is idempotent:
:mod:`attune.operators.redis_sink`).

Retrying a batch whose first send may have reached Redis is safe for the same reason: it
sets the same absolute values again. The next batch is sent only after the retried one
was answered, so writes keep their order.

Only failures that say nothing about the request itself are retried: the connection
refused, reset or timed out, Redis loading its dataset. A refused command, a wrong
password or an ACL denial fails at once: waiting would not change its answer.

:class:`OutagePolicy` is the policy, with an injectable clock and sleep so that its
tests need no Redis and no waiting; :class:`OutageRetry` gives it to redis-py (every
command and pipeline of a client made with it follows the policy).

>>> now = [0.0]
>>> def clock() -> float:
...     return now[0]
>>> def sleep(s: float) -> None:
...     now[0] += s
>>> policy = OutagePolicy("redis://cache:6379/0", limit_s=10, clock=clock, sleep=sleep)
>>> answers = iter([redis.ConnectionError("refused"), redis.TimeoutError("timeout"), "OK"])
>>> def send() -> str:
...     answer = next(answers)
...     if isinstance(answer, Exception):
...         raise answer
...     return answer
>>> policy.call(send), round(now[0], 3)
('OK', 0.15)
>>> policy.delay(1), policy.delay(2), policy.delay(3), policy.delay(20)
(0.05, 0.1, 0.2, 2.0)
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthorizationError
from redis.retry import Retry

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Failures that say Redis did not answer (not that it refused the request): retried.
RETRIED: tuple[type[Exception], ...] = (
    redis.ConnectionError,  # refused, reset, closed; BusyLoadingError (loading) is one
    redis.TimeoutError,
    socket.timeout,
    ConnectionError,  # OSError subclasses: refused, reset, broken pipe
)
#: ConnectionError subclasses whose answer would not change by waiting: raised at once.
NOT_RETRIED: tuple[type[Exception], ...] = (redis.AuthenticationError, AuthorizationError)

#: Default of ``ATTUNE_REDIS_OUTAGE_LIMIT_S``: how long Redis may stay silent.
DEFAULT_OUTAGE_LIMIT_S = 120.0


class RedisUnavailableError(RuntimeError):
    """Redis did not answer for longer than the outage limit: the flow stops, one line."""


def retried(error: BaseException) -> bool:
    """Whether ``error`` means Redis did not answer (retry) rather than refused (raise).

    >>> retried(redis.TimeoutError()), retried(redis.AuthenticationError("bad password"))
    (True, False)
    >>> retried(redis.ResponseError("WRONGTYPE")), retried(ConnectionRefusedError())
    (False, True)
    """
    return isinstance(error, RETRIED) and not isinstance(error, NOT_RETRIED)


@dataclass(frozen=True)
class OutagePolicy:
    """Retry with exponential backoff (``first_delay_s`` doubling up to ``max_delay_s``)
    for as long as Redis has been silent less than ``limit_s``; then
    :class:`RedisUnavailableError`.

    The silence is counted from the start of the first failed attempt of the call, so an
    attempt that waited for its socket timeout counts in full. ``limit_s <= 0``: no
    retry at all (the first failure raises :class:`RedisUnavailableError`). ``url`` is only
    for the messages: give it without a password.
    """

    url: str
    limit_s: float = DEFAULT_OUTAGE_LIMIT_S
    first_delay_s: float = 0.05
    max_delay_s: float = 2.0
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)

    def delay(self, failures: int) -> float:
        """The wait after the ``failures``-th failure in a row."""
        return float(min(self.max_delay_s, self.first_delay_s * 2 ** (failures - 1)))

    def call(
        self,
        do: Callable[[], T],
        on_failure: Callable[[Exception, int], Any] | None = None,
        is_retryable: Callable[[Exception], bool] | None = None,
    ) -> T:
        """``do()``, retried while Redis does not answer and the limit is not reached.

        ``on_failure(error, failures)`` runs after each failed attempt (redis-py
        disconnects there); ``is_retryable`` narrows :func:`retried` further.
        """
        failures = 0
        silent_since: float | None = None
        while True:
            started = self.clock()
            try:
                result = do()
            except Exception as error:
                if not retried(error) or (is_retryable is not None and not is_retryable(error)):
                    raise
                failures += 1
                if on_failure is not None:
                    on_failure(error, failures)
                if silent_since is None:
                    silent_since = started
                silent = self.clock() - silent_since
                if silent >= self.limit_s:
                    raise self.unavailable(silent, error) from error
                if failures == 1:
                    log.warning(
                        "Redis at %s does not answer (%s); holding writes back and retrying "
                        "for up to %g s (ATTUNE_REDIS_OUTAGE_LIMIT_S)",
                        self.url,
                        _reason(error),
                        self.limit_s,
                    )
                self.sleep(min(self.delay(failures), self.limit_s - silent))
                continue
            if silent_since is not None:
                log.warning(
                    "Redis at %s answers again after %.1f s (%d failed attempts)",
                    self.url,
                    self.clock() - silent_since,
                    failures,
                )
            return result

    def unavailable(self, silent_s: float, error: BaseException) -> RedisUnavailableError:
        """The one line the flow stops with."""
        return RedisUnavailableError(
            f"Redis at {self.url} did not answer for {silent_s:.0f} s ({_reason(error)}), "
            f"longer than ATTUNE_REDIS_OUTAGE_LIMIT_S={self.limit_s:g}: check that Redis is "
            "running and reachable (`attune local status` for local servers), then start the "
            "flow again with the same recovery store (--recovery-dir) to rewrite what was "
            "not written"
        )


def _reason(error: BaseException) -> str:
    """The error in a few words, one line.

    >>> _reason(redis.TimeoutError("Timeout reading from socket"))
    'Timeout reading from socket'
    >>> _reason(socket.timeout())
    'TimeoutError'
    """
    text = " ".join(str(error).split())
    return text or type(error).__name__


class OutageRetry(Retry):
    """:class:`OutagePolicy` as redis-py's ``retry=``: every command, pipeline and
    (re)connection of the client follows the policy.

    redis-py copies the object into each connection (``copy.deepcopy``); the copies share
    the policy, which is immutable (and its clock, which a test may have injected).
    """

    def __init__(self, policy: OutagePolicy) -> None:
        super().__init__(NoBackoff(), -1, RETRIED)
        self.policy = policy

    def __deepcopy__(self, memo: dict[int, Any]) -> OutageRetry:
        return OutageRetry(self.policy)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OutageRetry):
            return NotImplemented
        return self.policy == other.policy

    def __hash__(self) -> int:
        return hash(self.policy)

    def call_with_retry(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        def on_failure(error: Exception, failures: int) -> None:
            if with_failure_count:
                fail(error, failures)
            else:
                fail(error)

        return self.policy.call(do, on_failure, is_retryable)
