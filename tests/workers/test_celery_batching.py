"""bench/celery_batching.py's machinery at CI size: real Celery worker processes (threads pool) on
Redis DB 15, a tiny DenseNet at 64 x 64. Checks what the benchmark's figures rest on: every task
comes back with its own image's answer, and the micro-batched worker really batches requests from
different tasks. No timings (speed is the benchmark's business)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bench import celery_batching
from bench.celery_batching import Options, Report

REQUESTS = 64


def _workers_of_this_process() -> list[int]:
    """Pids of this process's children that run a bench.celery_batching worker (Linux /proc)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == os.getpid() and b"bench.celery_batching" in cmdline:
            pids.append(int(stat.parent.name))
    return pids


@pytest.fixture(scope="module")
def report() -> Iterator[Report]:
    """Both modes, once for the module's tests. run_mode stops each worker in a `finally`; this
    checks that none outlives the run, and kills any that does."""
    try:
        yield celery_batching.run_benchmark(
            Options(
                requests=REQUESTS,
                broker="redis://127.0.0.1:6379/15",
                model="tiny",
                size=64,
                threads=16,
                max_batch=16,
                max_wait_ms=20,
                images=REQUESTS,  # one image per task: a row handed to the wrong task shows
                batch_sizes=(8, 16),
                offline_images=16,
                timeout_s=120,
                start_timeout_s=120,
            )
        )
    finally:
        leftovers = _workers_of_this_process()
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        assert leftovers == [], "a worker was still running after the benchmark"


@pytest.mark.parametrize("mode", ["batched", "single"])
def test_every_task_returns_the_models_own_answer_for_its_image(report: Report, mode: str):
    run = report.runs[mode]
    assert (run.failed, run.missing, run.errors) == (0, 0, [])
    assert len(run.outputs) == REQUESTS
    for i, logits in enumerate(run.outputs):
        expected = report.reference[i]
        assert logits is not None
        torch.testing.assert_close(torch.tensor(logits), expected, rtol=1e-3, atol=1e-4)
        assert run.argmax[i] == int(expected.argmax())
    assert run.wrong == 0
    assert run.stats["completed"] == REQUESTS and run.stats["failed"] == 0


def test_requests_from_many_tasks_are_batched_together(report: Report):
    batched, single = report.runs["batched"], report.runs["single"]
    assert batched.figure is not None and single.figure is not None
    assert batched.figure.detail["mean_batch"] > 1
    assert 1 < batched.stats["largest_batch"] <= 16
    assert single.stats["largest_batch"] == 1  # the baseline really runs one image per model call
    assert report.ok
