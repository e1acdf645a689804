"""Dynamic micro-batching: many callers each with one example, one model call per batch.

A GPU runs a CNN one image at a time at a small fraction of what it does at batch 64-512: each
call pays the same launch overhead and leaves most of the device idle. Inference requests arrive
one by one (one Celery task, one study, one image), so MicroBatcher gathers them for a few
milliseconds and runs them together:

- `submit(x)` queues one example (a CPU tensor, e.g. C x H x W) and returns a Future at once;
- a launcher thread takes up to `max_batch` waiting requests as soon as that many wait or the
  oldest has waited `max_wait_ms`, stacks them (into pinned memory on CUDA, so the host-to-device
  copy is asynchronous), runs `run` under inference mode (and autocast when a dtype is set), and
  starts the copy of the output back to the host;
- a completer thread waits for that copy and gives each future its own row, as a CPU tensor with
  its own storage (a caller keeping one row does not keep the batch alive).

On CUDA the two threads overlap: while the GPU computes batch k the launcher already stacks and
launches batch k+1 on the batcher's own stream (at most two batches in flight, which bounds the
memory held), so the GPU does not idle while Python gathers the next batch. On the CPU the model
call is synchronous and the pipeline only moves the fan-out of results off the launcher.

Failures: an out-of-memory error (torch.OutOfMemoryError, or a RuntimeError saying "out of memory")
empties the allocator cache and runs the batch again as two halves, recursively, so a burst never
fails requests that fit on their own; one example that still does not fit gets the error. Any
other error goes to every request of the batch (sub-batch after a split). A request not answered
within `timeout_s` of its submission fails with TimeoutError, whether it still waits in the queue
(an overloaded worker) or its batch hangs (a stuck device); a result that arrives later is dropped.

This file imports torch only, so the benchmark runs on a machine without the product installed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from contextlib import ExitStack
from dataclasses import dataclass, field
from types import TracebackType

import torch

log = logging.getLogger(__name__)
__all__ = ["BatcherStats", "MicroBatcher", "is_out_of_memory"]

_STOP = object()
_IN_FLIGHT = 2  # batches launched but not yet answered (on CUDA: overlap without piling up memory)


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's own OOM error (CUDA and other accelerators) or an allocator RuntimeError that only
    says so in its text (cuDNN/cuBLAS workspace failures, older builds)."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


@dataclass(frozen=True)
class BatcherStats:
    """A snapshot of the counters. `batches` counts model calls that returned (after an OOM
    split, each half that ran counts), `batched_examples` the examples they covered."""

    submitted: int = 0
    completed: int = 0
    failed: int = 0
    timed_out: int = 0
    batches: int = 0
    batched_examples: int = 0
    largest_batch: int = 0
    oom_splits: int = 0

    @property
    def mean_batch_size(self) -> float:
        return self.batched_examples / self.batches if self.batches else 0.0


@dataclass(eq=False)
class _Request:
    x: torch.Tensor
    future: Future[torch.Tensor]
    submitted: float  # time.monotonic()
    deadline: float  # submitted + timeout_s (infinite without a timeout)


@dataclass(eq=False)
class _Launched:
    """One batch handed from the launcher to the completer: per contiguous slice of `requests`,
    the host output (to split by row) or the exception for all of the slice."""

    requests: list[_Request]
    chunks: list[tuple[int, int, torch.Tensor | BaseException]] = field(default_factory=list)
    ready: torch.cuda.Event | None = None


class MicroBatcher:
    """Batches single-example requests for one model; safe to call from any number of threads.

    `run` takes a batch (N x example shape, on `device`) and returns a tensor whose first dimension
    is N. `dtype` is the autocast dtype: None picks bfloat16 on a CUDA device that supports it and
    no autocast elsewhere; torch.float32 turns autocast off. Use as a context manager, or call
    close(), which answers everything already submitted before the threads stop.
    """

    def __init__(
        self,
        run: Callable[[torch.Tensor], torch.Tensor],
        *,
        max_batch: int,
        max_wait_ms: float,
        device: torch.device | str,
        dtype: torch.dtype | None = None,
        timeout_s: float | None = 30.0,
        name: str = "microbatcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must not be negative, got {max_wait_ms}")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive (or None), got {timeout_s}")
        self._run = run
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.timeout_s = timeout_s
        self.device = torch.device(device)
        self._cuda = self.device.type == "cuda"
        if self._cuda and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        if dtype is None and self._cuda and torch.cuda.is_bf16_supported():
            dtype = torch.bfloat16
        self.dtype = None if dtype == torch.float32 else dtype
        # How often the completer looks for requests past their deadline: often enough that a
        # timeout fires within about a tenth of itself late, rarely enough to cost nothing.
        self._poll_s = min(0.05, timeout_s / 10) if timeout_s is not None else 0.05

        self._cond = threading.Condition()
        self._queue: deque[_Request] = deque()
        self._inflight: dict[int, list[_Request]] = {}
        self._example: tuple[torch.Size, torch.dtype] | None = None
        self._closing = False
        self._counts = dict.fromkeys(BatcherStats.__dataclass_fields__, 0)
        self._launched: queue.Queue[object] = queue.Queue(maxsize=_IN_FLIGHT)
        self._threads = [
            threading.Thread(target=self._launch_loop, name=f"{name}-launch", daemon=True),
            threading.Thread(target=self._complete_loop, name=f"{name}-complete", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # -- callers' side ---------------------------------------------------------------------------

    def submit(self, x: torch.Tensor) -> Future[torch.Tensor]:
        """Queue one example; the future's result is the model's row for it, on the CPU. Every
        example must have the shape and dtype of the first one (they are stacked), live on the
        CPU, and stay unmodified until its future is done (it is not copied before batching)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"submit() takes a tensor, got {type(x).__name__}")
        if x.device.type != "cpu":
            raise ValueError(f"submit() takes CPU tensors (the batcher copies batches), got {x.device}")
        future: Future[torch.Tensor] = Future()
        now = time.monotonic()
        deadline = now + self.timeout_s if self.timeout_s is not None else float("inf")
        with self._cond:
            if self._closing:
                raise RuntimeError("the batcher is closed")
            if self._example is None:
                self._example = (x.shape, x.dtype)
            elif (x.shape, x.dtype) != self._example:
                shape, dtype = self._example
                raise ValueError(
                    f"example of shape {tuple(x.shape)} {x.dtype}; this batcher takes {tuple(shape)} {dtype}"
                )
            self._queue.append(_Request(x, future, now, deadline))
            self._counts["submitted"] += 1
            # The launcher sleeps either for a first request or for a batch to fill: wake it on
            # exactly those two events, not on every submit (hundreds of submitters).
            if len(self._queue) in (1, self.max_batch):
                self._cond.notify()
        return future

    def stats(self) -> BatcherStats:
        with self._cond:
            return BatcherStats(**self._counts)

    def close(self, timeout: float | None = None) -> None:
        """Refuse new requests, answer the queued ones, stop the threads. Idempotent."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            if thread is threading.current_thread():
                continue
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def __enter__(self) -> MicroBatcher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- launcher thread -------------------------------------------------------------------------

    def _launch_loop(self) -> None:
        try:
            with ExitStack() as stack:
                stream = None
                if self._cuda:
                    # Device and stream are per thread. A stream of our own keeps other users of
                    # the GPU in this process (and their synchronisations) out of our pipeline.
                    torch.cuda.set_device(self.device)
                    stream = torch.cuda.Stream(self.device)
                    stack.enter_context(torch.cuda.stream(stream))
                while (requests := self._next_batch()) is not None:
                    self._launched.put(self._launch(requests, stream))
        except BaseException:  # pragma: no cover - a bug here must not leave callers hanging forever
            log.exception("micro-batcher launcher died")
            with self._cond:
                self._closing = True
                orphans = list(self._queue)
                self._queue.clear()
            self._settle_all(orphans, RuntimeError("the micro-batcher's launcher thread died"))
        finally:
            self._launched.put(_STOP)

    def _next_batch(self) -> list[_Request] | None:
        """Block until a batch is due; None once closed and drained."""
        with self._cond:
            while True:
                if not self._queue:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                if len(self._queue) >= self.max_batch or self._closing:
                    break
                left = self._queue[0].submitted + self.max_wait_s - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            taken = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
        now = time.monotonic()
        requests, late = [], []
        for request in taken:
            if request.deadline <= now:
                late.append(request)
            elif request.future.set_running_or_notify_cancel():  # False: the caller cancelled it
                requests.append(request)
        self._time_out(late)
        if requests:
            with self._cond:
                self._inflight[id(requests)] = requests
        return requests

    def _launch(self, requests: list[_Request], stream: torch.cuda.Stream | None) -> _Launched:
        launched = _Launched(requests)
        if not requests:
            return launched
        try:
            batch = self._stack([r.x for r in requests])
        except Exception as exc:  # noqa: BLE001 - whatever it is, these callers get it
            launched.chunks.append((0, len(requests), _detached(exc)))
            return launched
        launched.chunks = self._run_split(batch, 0, len(requests))
        if stream is not None:
            launched.ready = torch.cuda.Event()
            launched.ready.record(stream)
        return launched

    def _stack(self, xs: list[torch.Tensor]) -> torch.Tensor:
        if not self._cuda:
            return torch.stack(xs).to(self.device)
        pinned = torch.empty((len(xs), *xs[0].shape), dtype=xs[0].dtype, pin_memory=True)
        torch.stack(xs, out=pinned)
        return pinned.to(self.device, non_blocking=True)

    def _run_split(
        self, batch: torch.Tensor, lo: int, hi: int
    ) -> list[tuple[int, int, torch.Tensor | BaseException]]:
        """Run rows lo:hi; on OOM, again as two halves. Returns (lo, hi, host output or error)."""
        try:
            with ExitStack() as stack:
                stack.enter_context(torch.inference_mode())
                if self.dtype is not None:
                    stack.enter_context(torch.autocast(device_type=self.device.type, dtype=self.dtype))
                out = self._run(batch[lo:hi])
            if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[0] != hi - lo:
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"run() returned {shape} for a batch of {hi - lo}")
            host = self._to_host(out)
        except Exception as exc:  # noqa: BLE001 - handed to the callers below
            if hi - lo == 1 or not is_out_of_memory(exc):
                log.warning("micro-batch of %d failed", hi - lo, exc_info=True)
                return [(lo, hi, _detached(exc))]
            # Split only after leaving the except block: the exception's traceback holds the
            # frames of the failed call and, through them, its partial activations.
        else:
            with self._cond:
                self._counts["batches"] += 1
                self._counts["batched_examples"] += hi - lo
                self._counts["largest_batch"] = max(self._counts["largest_batch"], hi - lo)
            return [(lo, hi, host)]
        with self._cond:
            self._counts["oom_splits"] += 1
        if self._cuda:
            torch.cuda.empty_cache()
        mid = (lo + hi) // 2
        log.info("micro-batch of %d ran out of memory; retrying as %d + %d", hi - lo, mid - lo, hi - mid)
        return self._run_split(batch, lo, mid) + self._run_split(batch, mid, hi)

    def _to_host(self, out: torch.Tensor) -> torch.Tensor:
        if out.device.type == "cpu":
            return out
        host = torch.empty(out.shape, dtype=out.dtype, pin_memory=self._cuda)
        host.copy_(out, non_blocking=self._cuda)  # ordered after the model on this thread's stream
        return host

    # -- completer thread ------------------------------------------------------------------------

    def _complete_loop(self) -> None:
        next_reap = time.monotonic() + self._poll_s
        while True:
            try:
                item = self._launched.get(timeout=self._poll_s)
            except queue.Empty:
                item = None
            if item is _STOP:
                break
            if isinstance(item, _Launched):
                try:
                    self._complete(item)
                except Exception as exc:  # noqa: BLE001 - e.g. an asynchronous CUDA error at the sync
                    log.exception("micro-batch results could not be collected")
                    self._settle_all(item.requests, _detached(exc))
                finally:
                    with self._cond:
                        self._inflight.pop(id(item.requests), None)
            if time.monotonic() >= next_reap:
                self._reap()
                next_reap = time.monotonic() + self._poll_s
        self._reap()

    def _complete(self, launched: _Launched) -> None:
        if launched.ready is not None:
            launched.ready.synchronize()
        done = failed = 0
        for lo, hi, out in launched.chunks:
            for i in range(lo, hi):
                future = launched.requests[i].future
                if isinstance(out, BaseException):
                    failed += _settle(future, exception=out)
                else:
                    # clone(): the row gets its own storage (a normal tensor, not an inference
                    # tensor, and not a view that would keep the whole batch's buffer alive).
                    done += _settle(future, result=out[i - lo].clone())
        with self._cond:
            self._counts["completed"] += done
            self._counts["failed"] += failed

    def _reap(self) -> None:
        """Fail every request past its deadline: in the queue (oldest first, so a prefix) or in a
        batch that has not come back."""
        if self.timeout_s is None:
            return
        now = time.monotonic()
        expired: list[_Request] = []
        with self._cond:
            while self._queue and self._queue[0].deadline <= now:
                expired.append(self._queue.popleft())
            for requests in self._inflight.values():
                if requests[0].deadline <= now:
                    expired.extend(r for r in requests if r.deadline <= now and not r.future.done())
        self._time_out(expired)

    # -- both ------------------------------------------------------------------------------------

    def _time_out(self, requests: list[_Request]) -> None:
        if not requests:
            return
        error = TimeoutError(f"no result within {self.timeout_s} s of submission")
        timed_out = sum(_settle(r.future, exception=error) for r in requests)
        with self._cond:
            self._counts["timed_out"] += timed_out

    def _settle_all(self, requests: list[_Request], error: BaseException) -> None:
        failed = sum(_settle(r.future, exception=error) for r in requests)
        with self._cond:
            self._counts["failed"] += failed


def _settle(
    future: Future[torch.Tensor],
    *,
    result: torch.Tensor | None = None,
    exception: BaseException | None = None,
) -> bool:
    """Answer a future unless it is already done (timed out, cancelled); True if this answered it."""
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except InvalidStateError:
        return False
    return True


def _detached(exc: BaseException) -> BaseException:
    """The exception without its traceback (already logged): the futures keep it for as long as
    their callers do, and its frames would keep the failed batch's tensors (GPU memory) alive."""
    return exc.with_traceback(None)
