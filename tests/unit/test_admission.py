"""Admission control: the bounds, the refusals, and slots that last as long as the work."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from costsim_analytics.api.admission import (
    SLOW_READER,
    TOO_MANY_CALLS,
    TOO_MANY_CALLS_FOR_PRINCIPAL,
    Admission,
    AdmissionLimits,
    Bound,
    CallClass,
    FairPool,
    release_when_done,
    submit,
)
from costsim_analytics.api.errors import status_of
from costsim_analytics.engines.errors import DeadlineExceeded, ResourceExhausted
from costsim_analytics.handlers.call import Call, current_deadline
from costsim_analytics.settings import Settings
from tests.unit.test_api_errors import decode_status


def gates(**bounds: Bound) -> tuple[Admission, list[tuple[CallClass, str]]]:
    refusals: list[tuple[CallClass, str]] = []
    limits = AdmissionLimits(**bounds, retry_after_s=2.5)
    return Admission(limits, lambda cls, reason: refusals.append((cls, reason))), refusals


def test_the_call_over_the_server_bound_is_refused_with_retry_advice():
    admission, refusals = gates(stream=Bound(2, 2))
    admission.enter("stream", "a")
    admission.enter("stream", "b")
    with pytest.raises(ResourceExhausted) as refused:
        admission.enter("stream", "c")
    assert refused.value.reason == TOO_MANY_CALLS
    assert refused.value.retry_after_s == 2.5
    assert refusals == [("stream", TOO_MANY_CALLS)]
    # The refusal goes out as RESOURCE_EXHAUSTED with a RetryInfo of the configured delay.
    status = status_of(refused.value, "r-1")
    rich, info, retry = decode_status(status)
    assert (rich.code, info.reason, info.metadata["class"]) == (8, TOO_MANY_CALLS, "stream")
    assert retry is not None and retry.retry_delay.ToTimedelta().total_seconds() == 2.5
    # And in the trailer gRPC's own retry policy honours (gRFC A6 server pushback).
    assert ("grpc-retry-pushback-ms", "2500") in status.trailing_metadata


def test_one_principal_cannot_take_the_whole_server():
    admission, refusals = gates(unary=Bound(10, 3))
    for _ in range(3):
        admission.enter("unary", "greedy")
    with pytest.raises(ResourceExhausted) as refused:
        admission.enter("unary", "greedy")
    assert refused.value.reason == TOO_MANY_CALLS_FOR_PRINCIPAL
    admission.enter("unary", "polite")  # the others still get in
    assert admission.in_flight("unary") == 4
    assert admission.in_flight("unary", "greedy") == 3
    assert refusals == [("unary", TOO_MANY_CALLS_FOR_PRINCIPAL)]


def test_classes_have_separate_bounds():
    admission, _ = gates(stream=Bound(1, 1), unary=Bound(1, 1))
    admission.enter("stream", "a")
    admission.enter("unary", "a")  # a full stream class takes nothing from the unary class
    admission.enter("long", "a")
    with pytest.raises(ResourceExhausted):
        admission.enter("stream", "b")


def test_refusals_decided_elsewhere_are_counted_by_reason():
    admission, refusals = gates()
    admission.refused("stream", SLOW_READER)
    assert refusals == [("stream", SLOW_READER)]


@given(st.lists(st.tuples(st.sampled_from(["enter", "release"]), st.sampled_from("abc"))))
def test_counts_never_exceed_the_bounds_and_return_to_zero(steps):
    admission, _ = gates(unary=Bound(4, 2))
    held = []
    for action, key in steps:
        if action == "enter":
            with contextlib.suppress(ResourceExhausted):  # over a bound: nothing is held
                held.append(admission.enter("unary", key))
        elif held:
            held.pop(0).release()
        assert admission.in_flight("unary") <= 4
        assert all(admission.in_flight("unary", k) <= 2 for k in "abc")
        assert admission.in_flight("unary") == len(held)
    for slot in held:
        slot.release()
        slot.release()  # a second release gives nothing back twice
    assert admission.in_flight("unary") == 0
    assert admission._by_principal["unary"] == {}  # no key kept for a principal gone


def test_a_call_whose_deadline_passed_in_the_queue_is_not_started():
    started = []
    with ThreadPoolExecutor(1) as pool:
        future = submit(pool, lambda: started.append(1), Call(deadline=time.monotonic() - 0.001))
        with pytest.raises(DeadlineExceeded) as exc:
            future.result(5)
    assert exc.value.reason == "DEADLINE_PASSED_IN_QUEUE"
    assert started == []


def test_the_work_sees_its_deadline_and_nothing_else_does():
    deadline = time.monotonic() + 60
    with ThreadPoolExecutor(1) as pool:
        assert submit(pool, current_deadline, Call(deadline=deadline)).result(5) == deadline
        assert submit(pool, current_deadline, Call()).result(5) is None
    assert current_deadline() is None


def test_handlers_give_up_at_their_deadline():
    Call(deadline=time.monotonic() + 60).check_deadline("the comparison")
    with pytest.raises(DeadlineExceeded, match="before the comparison"):
        Call(deadline=time.monotonic() - 1).check_deadline("the comparison")


def test_a_slot_is_held_until_the_work_ends_even_when_its_caller_gave_up():
    admission, _ = gates(long=Bound(1, 1))
    running, finish = threading.Event(), threading.Event()

    def work():
        running.set()
        finish.wait(5)
        return "done"

    async def scenario():
        with ThreadPoolExecutor(1) as pool:
            slot = admission.enter("long", "a")
            future = submit(pool, work, Call())
            release_when_done(future, slot)
            waiter = asyncio.ensure_future(asyncio.wrap_future(future))
            await asyncio.to_thread(running.wait, 5)
            waiter.cancel()  # the client went away; the worker is still busy
            await asyncio.sleep(0.05)
            busy = admission.in_flight("long")
            finish.set()
            await asyncio.to_thread(future.result, 5)
            await asyncio.sleep(0.05)  # the release runs on the loop
            return busy, admission.in_flight("long")

    assert asyncio.run(scenario()) == (1, 0)


def test_work_cancelled_while_queued_never_runs_and_frees_its_slot():
    admission, _ = gates(unary=Bound(5, 5))
    gate, ran = threading.Event(), []

    async def scenario():
        with ThreadPoolExecutor(1) as pool:
            pool.submit(gate.wait, 5)  # the only worker is busy
            slot = admission.enter("unary", "a")
            future = submit(pool, lambda: ran.append(1), Call())
            release_when_done(future, slot)
            waiter = asyncio.ensure_future(asyncio.wrap_future(future))
            await asyncio.sleep(0.01)
            waiter.cancel()
            await asyncio.sleep(0.05)
            gate.set()
            return future.cancelled(), admission.in_flight("unary")

    assert asyncio.run(scenario()) == (True, 0)
    assert ran == []


def test_a_principal_bound_above_the_server_bound_is_refused_at_start():
    with pytest.raises(ValidationError, match="COSTSIM_MAX_STREAMS_PER_PRINCIPAL"):
        Settings(max_streams=4, max_streams_per_principal=5)


def test_a_fair_pool_serves_principals_in_turn_not_in_arrival_order():
    pool = FairPool(1, "t")
    gate, busy = threading.Event(), threading.Event()
    order: list[str] = []

    def block() -> None:
        busy.set()
        gate.wait(5)

    try:
        pool.submit_as("x", block)  # the only worker is busy
        assert busy.wait(5)
        futures = [pool.submit_as("flood", partial(order.append, f"flood-{n}")) for n in range(5)]
        futures.append(pool.submit_as("other", lambda: order.append("other")))
        futures.append(pool.submit_as("flood", lambda: order.append("flood-5")))
        assert pool.queued() == 7
        gate.set()
        for future in futures:
            future.result(5)
    finally:
        pool.shutdown()
    # The other caller's call waited for one of the flood's, not for all six.
    assert order[:2] == ["flood-0", "other"]
    assert order[2:] == [f"flood-{n}" for n in range(1, 6)]


def test_a_fair_pool_drops_cancelled_work_and_cancels_the_queue_at_shutdown():
    pool = FairPool(1, "t")
    gate, ran = threading.Event(), []
    pool.submit_as("a", lambda: gate.wait(5))
    dropped = pool.submit_as("a", lambda: ran.append("dropped"))
    left = pool.submit_as("b", lambda: ran.append("left"))
    assert dropped.cancel()
    pool.shutdown(wait=False, cancel_futures=True)
    gate.set()
    pool.shutdown(wait=True)
    assert left.cancelled() and ran == []
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit_as("a", lambda: None)


def test_a_fair_pool_hands_exceptions_to_the_caller():
    pool = FairPool(2, "t")
    try:
        with pytest.raises(ZeroDivisionError):
            pool.submit(lambda: 1 / 0).result(5)
        assert pool.submit(lambda a, b: a + b, 2, b=3).result(5) == 5
    finally:
        pool.shutdown()


def test_one_principal_occupies_at_most_its_share_of_the_workers():
    pool = FairPool(4, "t")  # per principal: half, two workers
    lock, running, peak = threading.Lock(), [0], [0]
    gate = threading.Event()

    def work() -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        gate.wait(5)
        with lock:
            running[0] -= 1

    try:
        flood = [pool.submit_as("flood", work) for _ in range(6)]
        other = pool.submit_as("other", lambda: "served")
        assert other.result(5) == "served"  # a worker was left for the other caller
        gate.set()
        for future in flood:
            future.result(5)
    finally:
        pool.shutdown()
    assert peak[0] == 2
