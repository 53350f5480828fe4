"""Admission control: bounds on the calls in flight, per server and per principal.

Calls fall into three classes, each with its own bounds and its own worker threads, so that
one class can never take the threads (or, for streams, the database connections) another
needs:

* ``stream``: the server-streaming queries (QueryProvenance, QueryCanaryReports). A stream
  holds a database connection of the stream pool from its first message to its last.
* ``long``: the unary calls that evaluate cost models over many samples (RunCanary,
  CompareGolden, PromoteCanaryRun): seconds of work each.
* ``unary``: every other call, and the dashboard's pages: milliseconds each.

A call over a bound is refused at once, before any work is queued, with
:class:`ResourceExhausted` (``RESOURCE_EXHAUSTED`` and a ``RetryInfo``). A call that is
admitted holds its slot until its work has really ended: a unary call whose client gave up
keeps its slot while its worker thread still runs, so the bound counts the work, not the
waiting coroutines. Queued work whose deadline has passed is never started
(:func:`submit`).

Everything here runs on the server's event loop, which is single-threaded: the counters need
no lock, and slots are given back on the loop (``call_soon_threadsafe``).

Example:
    >>> gates = Admission(AdmissionLimits(), lambda cls, reason: None)
    >>> slot = gates.enter("unary", "alice")
    >>> gates.in_flight("unary")
    1
    >>> slot.release(); slot.release()  # idempotent
    >>> gates.in_flight("unary")
    0

"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor, Future
from contextvars import copy_context
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from costsim_analytics.engines.errors import DeadlineExceeded, ResourceExhausted
from costsim_analytics.handlers.call import Call, deadline_scope

T = TypeVar("T")
CallClass = Literal["stream", "long", "unary"]
CLASSES: tuple[CallClass, ...] = ("stream", "long", "unary")

# The stable reasons of a refusal (ErrorInfo.reason; the metric's label).
TOO_MANY_CALLS = "TOO_MANY_CALLS"
TOO_MANY_CALLS_FOR_PRINCIPAL = "TOO_MANY_CALLS_FOR_PRINCIPAL"
SLOW_READER = "SLOW_READER"


@dataclass(frozen=True, slots=True)
class Bound:
    """How many calls of one class may be in flight: on the server, and for one principal."""

    total: int
    per_principal: int


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    """The bounds of every class (settings ``COSTSIM_MAX_*``, README "Admission control")."""

    stream: Bound = Bound(32, 8)
    long: Bound = Bound(4, 2)
    unary: Bound = Bound(64, 32)
    retry_after_s: float = 1.0

    def of(self, cls: CallClass) -> Bound:
        """The bound of ``cls``."""
        bound: Bound = getattr(self, cls)
        return bound


OnRefusal = Callable[[CallClass, str], None]


class Slot:
    """One admitted call's place; :meth:`release` gives it back (safe to call twice)."""

    __slots__ = ("_cls", "_gates", "_held", "_key")

    def __init__(self, gates: Admission, cls: CallClass, key: str) -> None:
        self._gates, self._cls, self._key, self._held = gates, cls, key, True

    def release(self) -> None:
        """Give the place back (on the event loop)."""
        if self._held:
            self._held = False
            self._gates._leave(self._cls, self._key)


class Admission:
    """The counters of the calls in flight, and the rule that refuses the one too many."""

    def __init__(self, limits: AdmissionLimits, on_refusal: OnRefusal) -> None:
        self.limits = limits
        self._on_refusal = on_refusal
        self._total: Counter[CallClass] = Counter()
        self._by_principal: dict[CallClass, Counter[str]] = {cls: Counter() for cls in CLASSES}

    def in_flight(self, cls: CallClass, key: str | None = None) -> int:
        """Calls of ``cls`` in flight (for ``key`` only, when given)."""
        return self._total[cls] if key is None else self._by_principal[cls][key]

    def enter(self, cls: CallClass, key: str) -> Slot:
        """A slot for one more call of ``cls`` by principal ``key``.

        Raises:
            ResourceExhausted: the server's bound or the principal's is reached.
        """
        bound = self.limits.of(cls)
        if self._total[cls] >= bound.total:
            self._refuse(
                cls,
                TOO_MANY_CALLS,
                f"the server has {bound.total} {_noun(cls)} in flight, its limit; retry later",
            )
        if self._by_principal[cls][key] >= bound.per_principal:
            self._refuse(
                cls,
                TOO_MANY_CALLS_FOR_PRINCIPAL,
                f"this caller has {bound.per_principal} {_noun(cls)} in flight, its limit;"
                " retry when one has ended",
            )
        self._total[cls] += 1
        self._by_principal[cls][key] += 1
        return Slot(self, cls, key)

    def refused(self, cls: CallClass, reason: str) -> None:
        """Count a refusal of a call of ``cls`` (also those decided elsewhere: slow readers)."""
        self._on_refusal(cls, reason)

    def _refuse(self, cls: CallClass, reason: str, message: str) -> None:
        self.refused(cls, reason)
        raise ResourceExhausted(
            message,
            reason=reason,
            retry_after_s=self.limits.retry_after_s,
            metadata={"class": cls},
        )

    def _leave(self, cls: CallClass, key: str) -> None:
        self._total[cls] -= 1
        per = self._by_principal[cls]
        per[key] -= 1
        if per[key] <= 0:
            del per[key]  # a server that saw a million principals keeps no million keys


def _noun(cls: CallClass) -> str:
    return {"stream": "streams", "long": "long calls", "unary": "calls"}[cls]


@dataclass(frozen=True, slots=True)
class WorkerPools:
    """The worker threads of each class of call."""

    stream: Executor
    long: Executor
    unary: Executor

    def of(self, cls: CallClass) -> Executor:
        """The pool of ``cls``."""
        pool: Executor = getattr(self, cls)
        return pool


def submit(executor: Executor, fn: Callable[[], T], call: Call) -> Future[T]:
    """Queue ``fn`` for a worker of ``executor``, as the work of ``call``.

    If ``call.deadline`` has passed by the time a worker picks it up, ``fn`` is not started
    (:class:`DeadlineExceeded`); while it runs, the unit of work sees the deadline
    (:func:`handlers.call.current_deadline`) and bounds its statements by it. A call that is
    cancelled while queued (its client went away) is dropped from the queue: awaiting the
    future through ``asyncio.wrap_future`` cancels it.
    """
    deadline = call.deadline

    def work() -> T:
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded(
                "the call's deadline passed while it waited for a worker; nothing was done",
                reason="DEADLINE_PASSED_IN_QUEUE",
            )
        with deadline_scope(deadline):
            return fn()

    return executor.submit(copy_context().run, work)


def release_when_done(future: Future[Any], slot: Slot) -> None:
    """Give ``slot`` back once ``future``'s work has ended (run, failed or never started).

    Work already running when its call was cancelled keeps its slot until it ends: the bounds
    count the work the server does, not the calls still waiting for it.
    """
    loop = asyncio.get_running_loop()

    def done(_future: Future[Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing left to count
            loop.call_soon_threadsafe(slot.release)

    future.add_done_callback(done)
