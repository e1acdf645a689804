from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest
import torch

from workers.inference.batcher import MicroBatcher, is_out_of_memory

CPU = torch.device("cpu")


def _example(index: int) -> torch.Tensor:
    """A 1 x 2 x 2 example whose every value is its index."""
    return torch.full((1, 2, 2), float(index))


def _sum_rows(batch: torch.Tensor) -> torch.Tensor:
    """Each row's sum: 4 x the index its example encodes."""
    return batch.flatten(1).sum(1)


def _hammer(batcher: MicroBatcher, submitters: int, per: int) -> dict[int, float]:
    """`submitters` threads, each sending its next request when the last was answered."""
    results: dict[int, float] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(submitters)

    def submitter(s: int) -> None:
        try:
            start.wait()
            for i in range(per):
                index = s * per + i
                results[index] = batcher.submit(_example(index)).result(timeout=10).item()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=submitter, args=(s,)) for s in range(submitters)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    return results


def test_every_request_gets_its_own_row_and_batches_form_under_concurrency():
    with MicroBatcher(_sum_rows, max_batch=16, max_wait_ms=20, device=CPU, timeout_s=10) as batcher:
        results = _hammer(batcher, submitters=64, per=8)
    assert results == {i: 4.0 * i for i in range(64 * 8)}
    stats = batcher.stats()
    assert stats.submitted == stats.completed == 512
    assert stats.batched_examples == 512
    assert stats.mean_batch_size > 1
    assert stats.largest_batch <= 16


def test_hundreds_of_submitters_with_a_model_that_reorders_nothing():
    """A model that returns a row per example (not a reduction) still maps rows to requests."""
    with MicroBatcher(lambda b: b * 2 + 1, max_batch=64, max_wait_ms=5, device=CPU, timeout_s=10) as batcher:
        futures = {}
        lock = threading.Lock()

        def send(i: int) -> None:
            future = batcher.submit(_example(i))
            with lock:
                futures[i] = future

        threads = [threading.Thread(target=send, args=(i,)) for i in range(300)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        for i, future in futures.items():
            assert torch.equal(future.result(timeout=10), torch.full((1, 2, 2), 2.0 * i + 1))
    assert len(futures) == 300


def test_results_are_independent_cpu_tensors():
    with MicroBatcher(lambda b: b.flatten(1), max_batch=4, max_wait_ms=50, device=CPU) as batcher:
        a, b = (batcher.submit(_example(i)) for i in (1, 2))
        row_a, row_b = a.result(timeout=5), b.result(timeout=5)
    row_a.add_(10)  # in place, outside inference mode: a normal tensor with its own storage
    assert row_a.tolist() == [11.0] * 4 and row_b.tolist() == [2.0] * 4
    assert row_a.device == CPU


@pytest.mark.parametrize(
    "error",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA error: out of memory"),
    ],
)
def test_an_out_of_memory_batch_is_split_until_it_fits(error):
    def run(batch: torch.Tensor) -> torch.Tensor:
        if batch.shape[0] > 4:
            raise error
        return _sum_rows(batch)

    with MicroBatcher(run, max_batch=16, max_wait_ms=2000, device=CPU, timeout_s=10) as batcher:
        futures = [batcher.submit(_example(i)) for i in range(16)]  # one full batch, at once
        assert [f.result(timeout=5).item() for f in futures] == [4.0 * i for i in range(16)]
    stats = batcher.stats()
    assert stats.oom_splits == 3  # 16 -> 8 + 8 -> 4 + 4 + 4 + 4
    assert (stats.batches, stats.largest_batch, stats.completed, stats.failed) == (4, 4, 16, 0)


def test_a_single_example_that_does_not_fit_gets_the_error_and_the_others_their_results():
    def run(batch: torch.Tensor) -> torch.Tensor:
        if batch.shape[0] > 1 or batch[0, 0, 0, 0] == 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
        return _sum_rows(batch)

    with MicroBatcher(run, max_batch=4, max_wait_ms=2000, device=CPU, timeout_s=10) as batcher:
        futures = [batcher.submit(_example(i)) for i in range(4)]
        error = futures[3].exception(timeout=5)
        assert isinstance(error, torch.OutOfMemoryError)
        assert error.__traceback__ is None  # no frames of the failed call (and their tensors) kept
        assert [f.result(timeout=5).item() for f in futures[:3]] == [0.0, 4.0, 8.0]
    assert batcher.stats().failed == 1


def test_other_errors_go_to_the_whole_batch_and_the_batcher_carries_on():
    calls = []

    def run(batch: torch.Tensor) -> torch.Tensor:
        calls.append(batch.shape[0])
        if len(calls) == 1:
            raise ValueError("bad weights")
        return _sum_rows(batch)

    with MicroBatcher(run, max_batch=2, max_wait_ms=50, device=CPU, timeout_s=10) as batcher:
        first = [batcher.submit(_example(i)) for i in range(2)]
        for future in first:
            with pytest.raises(ValueError, match="bad weights"):
                future.result(timeout=5)
        assert batcher.submit(_example(5)).result(timeout=5).item() == 20.0
    assert calls[0] == 2 and batcher.stats().oom_splits == 0


def test_a_run_returning_the_wrong_number_of_rows_fails_its_requests():
    with MicroBatcher(lambda b: b[:1], max_batch=2, max_wait_ms=2000, device=CPU) as batcher:
        futures = [batcher.submit(_example(i)) for i in range(2)]
        with pytest.raises(ValueError, match="for a batch of 2"):
            futures[0].result(timeout=5)


def test_requests_time_out_when_the_run_blocks():
    release = threading.Event()

    def run(batch: torch.Tensor) -> torch.Tensor:
        release.wait(5)
        return _sum_rows(batch)

    batcher = MicroBatcher(run, max_batch=1, max_wait_ms=0, device=CPU, timeout_s=0.2)
    try:
        started = time.monotonic()
        in_run = batcher.submit(_example(1))  # taken at once; its run blocks
        queued = batcher.submit(_example(2))  # waits behind it
        for future in (in_run, queued):
            with pytest.raises(TimeoutError):
                future.result(timeout=3)
        assert time.monotonic() - started < 1.5
        assert batcher.stats().timed_out == 2
    finally:
        release.set()
        batcher.close(timeout=5)
    assert not batcher.running
    assert batcher.stats().completed == 0  # the late result was dropped, not delivered


def test_close_answers_what_was_queued_then_stops_the_threads():
    batcher = MicroBatcher(_sum_rows, max_batch=100, max_wait_ms=60_000, device=CPU)
    futures = [batcher.submit(_example(i)) for i in range(10)]
    started = time.monotonic()
    batcher.close(timeout=5)
    assert time.monotonic() - started < 2  # close() does not wait out max_wait_ms
    assert [f.result(timeout=0).item() for f in futures] == [4.0 * i for i in range(10)]
    assert not batcher.running
    assert not [t for t in threading.enumerate() if t.name.startswith("microbatcher-")]
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(_example(0))
    batcher.close()  # idempotent


def test_a_cancelled_request_is_skipped():
    seen: list[int] = []

    def run(batch: torch.Tensor) -> torch.Tensor:
        seen.extend(int(v) for v in batch[:, 0, 0, 0])
        return _sum_rows(batch)

    with MicroBatcher(run, max_batch=3, max_wait_ms=2000, device=CPU) as batcher:
        futures: list[Future[torch.Tensor]] = [batcher.submit(_example(i)) for i in range(2)]
        assert futures[0].cancel()
        futures.append(batcher.submit(_example(2)))
        assert futures[2].result(timeout=5).item() == 8.0
    assert seen == [1, 2]


def test_examples_must_share_shape_and_dtype_and_be_tensors():
    with MicroBatcher(_sum_rows, max_batch=2, max_wait_ms=1, device=CPU) as batcher:
        batcher.submit(_example(0)).result(timeout=5)
        with pytest.raises(ValueError, match="shape"):
            batcher.submit(torch.zeros(1, 3, 3))
        with pytest.raises(ValueError):
            batcher.submit(torch.zeros(1, 2, 2, dtype=torch.float64))
        with pytest.raises(TypeError):
            batcher.submit([0.0])  # type: ignore[arg-type]


def test_autocast_dtype_applies_inside_run():
    dtypes = []

    def run(batch: torch.Tensor) -> torch.Tensor:
        dtypes.append((torch.is_inference_mode_enabled(), torch.get_autocast_dtype("cpu")))
        dtypes.append(torch.is_autocast_enabled("cpu"))
        return _sum_rows(batch)

    with MicroBatcher(run, max_batch=1, max_wait_ms=0, device=CPU, dtype=torch.bfloat16) as batcher:
        batcher.submit(_example(1)).result(timeout=5)
    assert dtypes == [(True, torch.bfloat16), True]
    default = MicroBatcher(run, max_batch=1, max_wait_ms=0, device=CPU)
    default.close()
    assert default.dtype is None  # on the CPU no autocast unless asked for


def test_is_out_of_memory():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("x"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))
