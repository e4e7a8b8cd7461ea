import asyncio

import pytest

from raynlp.serve.batcher import Batcher


class Model:
    """A batch call that records its batches and, while `hold` is clear, keeps running."""

    def __init__(self):
        self.batches: list[list] = []
        self.running = self.most_running = 0
        self.hold = asyncio.Event()
        self.hold.set()

    async def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        await self.hold.wait()
        self.running -= 1
        if "bad" in items:
            raise ValueError("a bad item")
        return [f"result of {item}" for item in items]


async def _until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.001)


async def _held_call(batcher: Batcher, model: Model, item) -> asyncio.Future:
    """`item`'s answer, once its call has started and is held running (until `model.hold` is set)."""
    model.hold.clear()
    answer = asyncio.ensure_future(batcher(item))
    await _until(lambda: model.batches)
    return answer


def test_texts_that_queue_while_a_call_runs_share_the_next_call():
    """The busier the model, the larger its batches: the next batch is formed when the running call ends, from
    every item that queued meanwhile (Serve's own batcher formed it while the call ran, from what arrived within
    one wait)."""

    async def scenario():
        model = Model()
        batcher = Batcher(model, max_batch_size=8, wait_timeout_s=0.002)
        first = await _held_call(batcher, model, "a")
        rest = []
        for i in range(10):  # arriving one by one, each more than a wait after the last, as requests do
            rest.append(asyncio.ensure_future(batcher(i)))
            await asyncio.sleep(0.005)
        assert model.batches == [["a"]]
        model.hold.set()
        answers = await asyncio.gather(first, *rest)
        return model, answers

    model, answers = asyncio.run(scenario())
    assert model.batches == [["a"], list(range(8)), [8, 9]]
    assert answers == ["result of a"] + [f"result of {i}" for i in range(10)]
    assert model.most_running == 1


def test_the_queue_length_is_heard_as_texts_arrive_and_as_batches_form():
    """What the replica's queue gauge shows: the texts waiting for a call, up as they arrive, down as a batch forms."""
    lengths = []

    async def scenario():
        model = Model()
        batcher = Batcher(model, max_batch_size=4, wait_timeout_s=0.002, on_queue_length=lengths.append)
        first = await _held_call(batcher, model, "a")
        rest = [asyncio.ensure_future(batcher(i)) for i in range(6)]
        await asyncio.sleep(0.05)  # all six queued behind the held call
        model.hold.set()
        await asyncio.gather(first, *rest)
        return model

    model = asyncio.run(scenario())
    assert model.batches == [["a"], [0, 1, 2, 3], [4, 5]]
    assert lengths == [1, 0, 1, 2, 3, 4, 5, 6, 2, 0]


def test_a_failing_queue_length_hook_stops_no_batch():
    def hook(length):
        raise RuntimeError("the metrics agent is gone")

    async def scenario():
        batcher = Batcher(Model(), max_batch_size=4, wait_timeout_s=0.002, on_queue_length=hook)
        return await asyncio.gather(*(batcher(i) for i in range(6))), batcher.queued

    answers, queued = asyncio.run(scenario())
    assert answers == [f"result of {i}" for i in range(6)] and queued == 0


def test_texts_that_waited_out_a_call_go_as_soon_as_it_ends():
    """A batch's wait counts from its first text's arrival: the model does not sit idle for another wait after a
    call when the next texts have waited through it."""

    async def scenario():
        model, loop = Model(), asyncio.get_running_loop()
        starts = []
        batcher = Batcher(model, max_batch_size=8, wait_timeout_s=0.3)
        first = await _held_call(batcher, model, "a")
        second = asyncio.ensure_future(batcher("b"))
        await asyncio.sleep(0.4)  # "b" waits longer than a wait
        released = loop.time()
        model.hold.set()
        await _until(lambda: len(model.batches) == 2)
        starts.append(loop.time() - released)
        await asyncio.gather(first, second)
        return model.batches, starts[0]

    batches, gap = asyncio.run(scenario())
    assert batches == [["a"], ["b"]] and gap < 0.15


def test_a_batch_waits_for_more_up_to_the_timeout_then_goes():
    async def scenario(wait_timeout_s: float):
        model = Model()
        batcher = Batcher(model, max_batch_size=8, wait_timeout_s=wait_timeout_s)
        first = asyncio.ensure_future(batcher(1))
        await asyncio.sleep(0.02)
        await asyncio.gather(first, batcher(2))
        return model.batches

    assert asyncio.run(scenario(0.5)) == [[1, 2]]
    assert asyncio.run(scenario(0.0)) == [[1], [2]]


def test_a_failed_call_reaches_each_of_its_callers_and_the_next_batch_is_served():
    async def scenario():
        model = Model()
        batcher = Batcher(model, max_batch_size=4, wait_timeout_s=0.05)
        failed = await asyncio.gather(batcher("bad"), batcher("x"), return_exceptions=True)
        return failed, await batcher("y"), model.batches

    failed, later, batches = asyncio.run(scenario())
    assert [type(e) for e in failed] == [ValueError, ValueError] and batches[0] == ["bad", "x"]
    assert later == "result of y" and batches[1] == ["y"]


def test_a_caller_that_gave_up_is_left_out_of_its_batch():
    async def scenario():
        model = Model()
        batcher = Batcher(model, max_batch_size=8, wait_timeout_s=0.0)
        running = await _held_call(batcher, model, "a")
        gone, kept = asyncio.ensure_future(batcher("gone")), asyncio.ensure_future(batcher("kept"))
        await asyncio.sleep(0.01)
        gone.cancel()
        model.hold.set()
        await asyncio.gather(running, kept)
        return model.batches

    assert asyncio.run(scenario()) == [["a"], ["kept"]]


def test_a_caller_that_leaves_while_its_batch_runs_stops_nothing():
    """A client that disconnects while the model works on its text: the others of the batch, and the texts queued
    behind it, are still answered."""

    async def scenario():
        model = Model()
        batcher = Batcher(model, max_batch_size=2, wait_timeout_s=0.0)
        model.hold.clear()
        leaving, staying = asyncio.ensure_future(batcher("leaving")), asyncio.ensure_future(batcher("staying"))
        await _until(lambda: model.batches)
        queued = asyncio.ensure_future(batcher("queued"))
        await asyncio.sleep(0.01)
        leaving.cancel()
        model.hold.set()
        return await asyncio.wait_for(asyncio.gather(staying, queued), 2.0), model.batches

    answers, batches = asyncio.run(scenario())
    assert answers == ["result of staying", "result of queued"]
    assert batches == [["leaving", "staying"], ["queued"]]


def test_a_call_that_answers_for_too_few_items_fails_its_callers():
    async def short(items):
        return items[:1]

    async def scenario():
        batcher = Batcher(short, max_batch_size=4, wait_timeout_s=0.05)
        return await asyncio.gather(batcher(1), batcher(2), return_exceptions=True)

    assert all(isinstance(e, RuntimeError) and "1 results for 2 items" in str(e) for e in asyncio.run(scenario()))


def test_settings_that_could_never_form_a_batch_are_refused():
    for size, wait in [(0, 0.0), (8, -0.001)]:
        with pytest.raises(ValueError, match="max_batch_size must be at least 1 and wait_timeout_s not negative"):
            Batcher(Model(), max_batch_size=size, wait_timeout_s=wait)
