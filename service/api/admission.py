"""Admission control: bounds on the calls in flight, per server and per principal.

Calls fall into three classes, each with its own bounds and its own worker threads, so that
one class can never take the threads (or, for streams, the database connections) another
needs:

* ``stream``: the server-streaming queries (QueryProvenance, QueryCanaryReports). A stream
  holds a database connection of the stream pool from its first message to its last.
* ``long``: the calls that evaluate cost models over many samples (RunCanary,
  CompareGolden, PromoteCanaryRun) or read and explain a run's artifacts whole
  (ExplainCanaryRun, a stream computed before its first message): seconds of work each.
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
import threading
import time
from collections import Counter, OrderedDict, deque
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


class FairPool(Executor):
    """Worker threads that take queued work round-robin by principal, not first come first served.

    With a plain FIFO pool, a principal that has 30 calls queued delays everyone else's next
    call by all 30 of them. Here each principal with work waiting has a queue of its own, and a
    free worker takes the oldest call of the next principal in turn: another caller's call waits
    for at most one call per principal ahead of it, however much one of them has queued.

    ``per_key`` bounds how many workers one principal's calls occupy at once (half the pool by
    default, ``COSTSIM_PRINCIPAL_WORKER_SHARE``; at least one): the calls of a flooding
    principal then share the CPU with fewer of their own, and the others' calls find a worker
    free.
    """

    def __init__(self, workers: int, name: str, *, per_key: int | None = None) -> None:
        self._queues: OrderedDict[str, deque[_Work]] = OrderedDict()
        self._running: Counter[str] = Counter()
        self._per_key = per_key or max(1, workers // 2)
        self._ready = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{n}", daemon=True)
            for n in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit_as(self, key: str, fn: Callable[[], T]) -> Future[T]:
        """Queue ``fn`` as work of principal ``key``."""
        future: Future[T] = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._queues.setdefault(key, deque()).append(_Work(future, fn))
            self._ready.notify()
        return future

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Queue ``fn(*args, **kwargs)`` as work of no principal in particular."""
        return self.submit_as("", lambda: fn(*args, **kwargs))

    def queued(self) -> int:
        """Calls waiting for a worker."""
        with self._ready:
            return sum(len(q) for q in self._queues.values())

    def _eligible(self) -> str | None:
        """The first principal in turn with work waiting and a worker to spare."""
        for key in self._queues:
            if self._running[key] < self._per_key:
                return key
        return None

    def _next(self) -> tuple[str, _Work] | None:
        with self._ready:
            while (key := self._eligible()) is None:
                if self._closed and not self._queues:
                    return None  # closed and drained
                self._ready.wait()
            waiting = self._queues[key]
            work = waiting.popleft()
            if waiting:
                self._queues.move_to_end(key)  # this principal's next call after the others'
            else:
                del self._queues[key]
            self._running[key] += 1
            return key, work

    def _done(self, key: str) -> None:
        with self._ready:
            self._running[key] -= 1
            if self._running[key] <= 0:
                del self._running[key]
            if self._queues:  # work held back by ``per_key`` may be eligible now
                self._ready.notify()

    def _serve(self) -> None:
        while (item := self._next()) is not None:
            key, work = item
            try:
                if not work.future.set_running_or_notify_cancel():
                    continue  # cancelled while queued: its client went away
                try:
                    result = work.fn()
                except BaseException as exc:
                    work.future.set_exception(exc)
                else:
                    work.future.set_result(result)
            finally:
                self._done(key)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new work; cancel what is queued when asked; wait for the workers if asked."""
        with self._ready:
            self._closed = True
            if cancel_futures:
                for waiting in self._queues.values():
                    for work in waiting:
                        work.future.cancel()
                self._queues.clear()
            self._ready.notify_all()
        if wait:
            for thread in self._threads:
                thread.join()


@dataclass(frozen=True, slots=True)
class _Work:
    future: Future[Any]
    fn: Callable[[], Any]


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


def submit(executor: Executor, fn: Callable[[], T], call: Call, key: str = "") -> Future[T]:
    """Queue ``fn`` for a worker of ``executor``, as the work of ``call`` by principal ``key``.

    A :class:`FairPool` takes the work of principals in turn.

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

    context = copy_context()
    if isinstance(executor, FairPool):
        return executor.submit_as(key, lambda: context.run(work))
    return executor.submit(context.run, work)


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
