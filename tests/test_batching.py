"""handler.batching.MicroBatcher: concurrent callers share batches and each gets its own answer."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from handler.batching import MicroBatcher


def slow_double(items: list[int]) -> list[int]:
    time.sleep(0.02)  # a model call: the next callers queue up meanwhile
    return [2 * item for item in items]


def test_concurrent_callers_are_batched_and_get_their_own_answers():
    batcher = MicroBatcher(slow_double, max_size=8, max_delay_s=0.0)

    async def main():
        return await asyncio.gather(*(batcher.answer(i) for i in range(20)))

    assert asyncio.run(main()) == [2 * i for i in range(20)]
    assert sum(batcher.batch_sizes) == 20 and max(batcher.batch_sizes) == 8
    assert len(batcher.batch_sizes) < 20


def test_a_lone_request_does_not_wait_with_greedy_batching():
    batcher = MicroBatcher(slow_double, max_size=8, max_delay_s=0.0)

    async def one():
        started = time.perf_counter()
        answer = await batcher.answer(21)
        return answer, time.perf_counter() - started

    answer, seconds = asyncio.run(one())
    assert answer == 42 and batcher.batch_sizes == [1]
    assert seconds < 1.0  # generous: only that it did not wait for company that never came


def test_the_delay_gathers_stragglers_into_one_batch():
    batcher = MicroBatcher(lambda items: items, max_size=4, max_delay_s=0.2)

    async def main():
        first = asyncio.create_task(batcher.answer("a"))
        await asyncio.sleep(0.02)
        return await asyncio.gather(first, batcher.answer("b"))

    assert asyncio.run(main()) == ["a", "b"] and batcher.batch_sizes == [2]


def test_a_failing_batch_fails_its_callers_and_the_next_batch_still_runs():
    calls = []

    def flaky(items: list[int]) -> list[int]:
        calls.append(list(items))
        if len(calls) == 1:
            raise RuntimeError("model bug")
        return items

    batcher = MicroBatcher(flaky, max_size=2, max_delay_s=0.0)

    async def main():
        with pytest.raises(RuntimeError, match="model bug"):
            await batcher.answer(1)
        return await batcher.answer(2)

    assert asyncio.run(main()) == 2


def test_the_model_runs_off_the_event_loop_thread():
    loop_thread = []
    model_thread = []

    def record(items):
        model_thread.append(threading.current_thread().name)
        return items

    batcher = MicroBatcher(record, max_size=2)

    async def main():
        loop_thread.append(threading.current_thread().name)
        return await batcher.answer(1)

    asyncio.run(main())
    assert model_thread[0] != loop_thread[0] and model_thread[0].startswith("model")


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        MicroBatcher(slow_double, max_size=0)
