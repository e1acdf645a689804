"""Micro-batching across Celery tasks: N single-image inference requests sent as N Celery tasks to a
worker like the product's inference worker (`-P threads`, one process, the model loaded once at
start, one MicroBatcher shared by every task thread), micro-batched versus one-at-a-time, next to
the offline ceiling (the model alone at its best batch size) measured in the same run.

bench/batching.py drives the batcher from threads in its own process; that leaves out what a request
pays in the product: the broker round trip, the worker's message handling (JSON, acks, the thread
pool), a blob read, the result store, and the worker's Python threads sharing one GIL and two cores
with the model. This script measures that path end to end, so the gap between the micro-batched
Celery figure and the ceiling is the Celery path's own overhead with the same batcher.

- offline ceiling: in this process, the model alone on ready-made batches of the benchmark's images
  at each of --batch-sizes (torch threads as the worker's); images/s, latency = one batch. Its
  outputs are also the reference answers every task's answer is checked against.
- micro-batched: a worker subprocess (`celery -A bench.celery_batching worker -P threads -c
  --threads`) whose `infer(image_key)` reads a preprocessed image (C x H x W float32 .npy, as the
  product reads a blob), submits it to the process's MicroBatcher, and returns its logits, argmax
  and the wall-clock time it finished. All --requests tasks are sent at once (apply_async in a
  loop: all outstanding together); throughput is N / (last completion - first submit), latency
  each task's completion - its submit (same machine, same clock).
- one-at-a-time: the same worker, tasks and images through a MicroBatcher with max_batch=1. That is
  the fair baseline: the same code path (the same hand-off to the batcher's thread, inference mode,
  a model call serialised on one thread, as a lock would), so the difference is the batching alone,
  and it matches bench/batching.py's (c). Calling the model from each task thread without a lock
  would run up to --threads forward passes at once on 2 cores, each with its own intra-op threads:
  oversubscription, not a baseline anyone would deploy.

Each row also says where the time went: the share of the run the model was computing and its rate
meanwhile (from the worker's batcher), CPU per image of the worker and of this process, and the CPU
the rest of the machine used (Redis, and anything else running: with 2 cores, other work shows up
directly in the figures; rerun when it is near 0). Layout: channels_last when a probe at a middle
batch size finds it faster (--channels-last on|off to force), the same on both sides; float32.

Broker and result backend are Redis (json serializer), the task options the product's (acks late,
prefetch multiplier 1). No Django: the app is defined here and needs torch, numpy, celery and
redis-py only. The device is the CPU (the batcher's CUDA path is bench/batching.py's). The worker
learns its settings from one environment variable (BENCH_CELERY_WORKER, JSON) set by this script;
it follows its client: when the benchmark process goes away, the worker stops itself rather than
keep the CPU busy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult, ResultSet
from celery.signals import celeryd_after_setup, worker_shutdown
from kombu import Exchange, Queue

from bench.batching import Figure, describe, figure
from workers.inference.batcher import MicroBatcher
from workers.models.densenet import DenseNet, densenet121

ROOT = Path(__file__).resolve().parents[1]
CONFIG_ENV = "BENCH_CELERY_WORKER"
BROKER_ENV = "BENCH_CELERY_BROKER"
DEFAULT_BROKER = "redis://127.0.0.1:6379/14"
NUM_CLASSES = 14
MODES = ("batched", "single")
MODE_NAMES = {"batched": "micro-batched", "single": "one-at-a-time"}
# A task's logits may differ from the reference row by this much relative to the row's largest
# value: oneDNN picks other kernels (other summation orders) for other batch sizes.
TOLERANCE = 1e-3


def _configured(app: Celery, broker: str) -> Celery:
    """Broker and result backend on the same Redis; the product's task options otherwise."""
    app.conf.update(
        broker_url=broker,
        result_backend=broker,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        result_expires=3600,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        # Nothing here uses remote control; without it the worker leaves no pidbox keys behind.
        worker_enable_remote_control=False,
    )
    return app


# set_as_current=False: importing this module (the test does) must not make this app the default
# of the process, where the product's Celery app may live too.
app = _configured(
    Celery("bench_celery_batching", set_as_current=False), os.environ.get(BROKER_ENV, DEFAULT_BROKER)
)


# -- the model, as both sides build it ----------------------------------------------------------


def build_model(name: str, channels_last: bool) -> torch.nn.Module:
    """Seeded, so the benchmark process and the worker build the same weights."""
    torch.manual_seed(0)
    if name == "densenet121":
        model: torch.nn.Module = densenet121(num_classes=NUM_CLASSES)
    elif name == "tiny":  # a two-block DenseNet: the same code path, milliseconds per batch
        model = DenseNet((2, 2), growth_rate=8, bn_size=2, init_features=16, num_classes=NUM_CLASSES)
    else:
        raise ValueError(f"unknown model {name!r}")
    model = model.eval()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def model_run(model: torch.nn.Module, channels_last: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(batch: torch.Tensor) -> torch.Tensor:
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return model(batch)

    return run


def set_torch_threads(intra_op: int) -> None:
    torch.set_num_threads(intra_op)
    try:
        torch.set_num_interop_threads(1)  # the model is one graph of sequential ops: no inter-op work
    except RuntimeError:  # already set, or inter-op work already ran in this process
        pass


# -- the worker side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerConfig:
    mode: str  # "batched" or "single"
    model: str
    size: int
    channels_last: bool
    max_batch: int
    max_wait_ms: float
    images: str  # the directory of the preprocessed images (the product's blob store)
    client_pid: int
    torch_threads: int = 2


@dataclass
class _Server:
    """What a worker process serves with: loaded once at start, shared by every task thread."""

    config: WorkerConfig
    batcher: MicroBatcher
    images: Path
    model_seconds: list[float] = field(default_factory=lambda: [0.0])  # wall time inside the model


_SERVERS: dict[int, _Server] = {}  # registry: this worker process's one server, by pid


def _server() -> _Server:
    try:
        return _SERVERS[os.getpid()]
    except KeyError:
        raise RuntimeError("no model server in this process: not a bench.celery_batching worker") from None


@celeryd_after_setup.connect
def _serve(sender: str, instance: Any, **kwargs: Any) -> None:
    """Load and warm the model and start the batcher before the worker consumes its first task,
    as the product's inference worker does (workers/tasks.py inference_warm_up)."""
    if getattr(instance, "app", None) is not app:
        return
    config = WorkerConfig(**json.loads(os.environ[CONFIG_ENV]))
    set_torch_threads(config.torch_threads)
    model = build_model(config.model, config.channels_last)
    run = model_run(model, config.channels_last)
    max_batch = config.max_batch if config.mode == "batched" else 1
    with torch.inference_mode():
        # oneDNN builds its primitives per shape on the first call: pay that before the clock runs.
        for n in sorted({1, max_batch}):
            run(torch.zeros(n, 3, config.size, config.size))
    spent = [0.0]

    def timed(batch: torch.Tensor) -> torch.Tensor:
        started = time.perf_counter()
        out = run(batch)
        spent[0] += time.perf_counter() - started  # one launcher thread: no race
        return out

    batcher = MicroBatcher(
        timed,
        max_batch=max_batch,
        max_wait_ms=config.max_wait_ms if config.mode == "batched" else 0.0,
        device="cpu",
        dtype=torch.float32,
        timeout_s=600,
        name=f"bench-{config.mode}",
    )
    _SERVERS[os.getpid()] = _Server(config, batcher, Path(config.images), spent)
    threading.Thread(target=_follow_client, args=(config.client_pid,), daemon=True).start()


@worker_shutdown.connect
def _close(sender: Any = None, **kwargs: Any) -> None:
    server = _SERVERS.pop(os.getpid(), None)
    if server is not None:
        server.batcher.close(timeout=10)


def _follow_client(client_pid: int) -> None:
    """Stop this worker (warm shutdown) once the benchmark that started it is gone."""
    while os.getppid() == client_pid:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


@app.task(name="bench.celery_batching.infer")
def infer(image_key: str) -> dict[str, Any]:
    """One single-image request: read the image, batch it with the other tasks' images, return
    this image's logits and argmax and when it finished (time.time(), compared with the sender's)."""
    server = _server()
    if Path(image_key).name != image_key:
        raise ValueError(f"not an image key: {image_key!r}")
    image = torch.from_numpy(np.load(server.images / image_key))
    logits = server.batcher.submit(image).result()
    return {"argmax": int(logits.argmax()), "logits": logits.tolist(), "done": time.time()}


@app.task(name="bench.celery_batching.stats")
def stats() -> dict[str, Any]:
    """The batcher's counters, the time spent in the model and the process's CPU time."""
    server = _server()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        **asdict(server.batcher.stats()),
        "model_seconds": server.model_seconds[0],
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "max_batch": server.batcher.max_batch,
        "torch_threads": torch.get_num_threads(),
    }


# -- the benchmark side ------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    requests: int = 512
    broker: str = DEFAULT_BROKER
    model: str = "densenet121"
    size: int = 224
    threads: int = 64
    max_batch: int | None = None  # default: the best offline batch size, at most threads / 2
    max_wait_ms: float = 10.0
    images: int | None = None  # distinct images (default: min(requests, 64)); task i reads i % images
    batch_sizes: tuple[int, ...] = (8, 16, 32, 64)
    offline_images: int = 64  # measured per offline batch size (whole batches, at least one)
    channels_last: bool | None = None  # None: whichever a probe at a middle batch size finds faster
    torch_threads: int = 2
    modes: tuple[str, ...] = MODES
    timeout_s: float = 900.0  # for one mode's results to come back
    start_timeout_s: float = 300.0  # for a worker to load its model and answer


@dataclass
class ModeRun:
    mode: str
    figure: Figure | None  # None when no task succeeded
    outputs: list[list[float] | None]  # logits per request, None where it failed or is missing
    argmax: list[int | None]
    failed: int
    missing: int
    wrong: int
    errors: list[str]
    stats: dict[str, Any]


@dataclass
class Report:
    options: Options
    device: str
    channels_last: bool
    layout_note: str
    offline_by_batch: dict[int, Figure]
    offline_rest_of_machine_cores: float  # CPU of everything else while the ceiling was measured
    best_batch: int
    max_batch: int
    reference: torch.Tensor  # the model's logits for each distinct image, offline
    runs: dict[str, ModeRun]

    @property
    def ceiling(self) -> Figure:
        return self.offline_by_batch[self.best_batch]

    @property
    def ok(self) -> bool:
        return all(
            r.figure is not None and not (r.failed or r.missing or r.wrong) for r in self.runs.values()
        )


def write_images(directory: Path, count: int, size: int) -> tuple[list[str], torch.Tensor]:
    """`count` preprocessed images (3 x size x size float32, normalised-looking noise) as .npy
    files; returns their keys and the images stacked."""
    generator = torch.Generator().manual_seed(1)
    pool = torch.randn(count, 3, size, size, generator=generator)
    keys = []
    for i in range(count):
        key = f"image-{i:04d}.npy"
        np.save(directory / key, pool[i].numpy())
        keys.append(key)
    return keys, pool


def offline(
    model: torch.nn.Module, channels_last: bool, pool: torch.Tensor, batch_sizes: tuple[int, ...], images: int
) -> tuple[dict[int, Figure], torch.Tensor]:
    """The model alone on ready batches of the pool at each size: the figures, and the logits of
    every pool image (the reference answers)."""
    run = model_run(model, channels_last)
    count = pool.shape[0]
    reference = torch.full((count, NUM_CLASSES), float("nan"))
    by_size = {}
    with torch.inference_mode():
        for size in batch_sizes:
            batches = [
                torch.arange(k * size, (k + 1) * size) % count for k in range(max(1, -(-images // size)))
            ]
            run(pool[batches[0]])  # warm-up: oneDNN builds its primitives for this shape
            latencies = []
            started, cpu = time.perf_counter(), _cpu_seconds()
            for index in batches:
                x = pool[index]  # gathering is not the model's time
                t0 = time.perf_counter()
                out = run(x)
                latencies.append(time.perf_counter() - t0)
                reference[index] = out.float()
            wall, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
            by_size[size] = figure(
                size * len(batches),
                sum(latencies) or wall,
                latencies,
                batch=size,
                cpu_per_image_ms=round(1000 * cpu / (size * len(batches)), 1),
                cores=round(cpu / wall, 2),
            )
        missing = torch.isnan(reference).any(1).nonzero().flatten()
        if len(missing):
            reference[missing] = run(pool[missing]).float()
    return by_size, reference


@contextmanager
def worker(config: WorkerConfig, options: Options, queue: str) -> Iterator[subprocess.Popen[bytes]]:
    """A Celery worker on its own queue, stopped (SIGTERM, then SIGKILL) however the block ends."""
    env = {
        **os.environ,
        CONFIG_ENV: json.dumps(asdict(config)),
        BROKER_ENV: options.broker,
        "OMP_NUM_THREADS": str(config.torch_threads),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "bench.celery_batching",
        "--quiet",  # no banner
        "worker",
        "-P",
        "threads",
        "-c",
        str(options.threads),
        "--without-mingle",
        "--without-gossip",
        "-Q",
        queue,
        "-n",
        f"{queue}@%h",
        "--loglevel",
        "WARNING",
    ]
    log_path = Path(config.images) / f"{queue}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    except BaseException:
        _print_tail(log_path)
        raise
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        _delete_queue(queue)


def _print_tail(log_path: Path, lines: int = 40) -> None:
    """The end of the worker's output, to say why a run went wrong."""
    try:
        tail = log_path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return
    print(f"--- the worker's output ({log_path.name}), last {lines} lines ---", file=sys.stderr)
    print("\n".join(tail), file=sys.stderr)


def _delete_queue(name: str) -> None:
    """Leave nothing of this run's queue in Redis (results expire on their own)."""
    try:
        with app.connection_for_write() as connection:
            queue = Queue(name, Exchange(name), routing_key=name)(connection.default_channel)
            queue.declare()  # a channel deletes only the bindings it knows of: the worker's are its own
            queue.delete()
    except Exception as exc:  # noqa: BLE001 - cleanup only: say so and carry on
        print(f"could not delete queue {name}: {exc}", file=sys.stderr)


def _wait(result: AsyncResult, process: subprocess.Popen[bytes], timeout: float, what: str) -> Any:
    """The task's result, giving up as soon as the worker process has exited."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the worker exited with {process.returncode} ({what})")
        try:
            return result.get(timeout=min(1.0, max(0.01, deadline - time.monotonic())))
        except CeleryTimeoutError:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"no answer from the worker within {timeout:g} s ({what})") from None


def run_mode(
    mode: str,
    options: Options,
    *,
    keys: list[str],
    images_dir: Path,
    channels_last: bool,
    max_batch: int,
    reference: torch.Tensor,
) -> ModeRun:
    """Start a worker for `mode`, send every request at once, collect, check, stop the worker."""
    config = WorkerConfig(
        mode=mode,
        model=options.model,
        size=options.size,
        channels_last=channels_last,
        max_batch=max_batch,
        max_wait_ms=options.max_wait_ms,
        images=str(images_dir),
        client_pid=os.getpid(),
        torch_threads=options.torch_threads,
    )
    queue = f"bench-celery-{mode}-{os.getpid()}"
    n = options.requests
    with worker(config, options, queue) as process:
        before = _wait(stats.apply_async(queue=queue), process, options.start_timeout_s, "start-up")
        client_before, machine_before, window_start = _cpu_seconds(), _machine_busy_seconds(), time.time()
        submitted: list[float] = []
        results: list[AsyncResult] = []
        for i in range(n):
            submitted.append(time.time())
            results.append(infer.apply_async((keys[i % len(keys)],), queue=queue))
        arrived: dict[str, tuple[float, Any]] = {}

        def collected(task_id: str, value: Any) -> None:
            arrived[task_id] = (time.time(), value)

        def check_worker() -> None:
            if process.poll() is not None:
                raise RuntimeError(f"the worker exited with {process.returncode} (results)")

        try:
            ResultSet(results).join_native(
                timeout=options.timeout_s, propagate=False, callback=collected, on_interval=check_worker
            )
        except CeleryTimeoutError:
            pass  # counted as missing below
        client_cpu, window = _cpu_seconds() - client_before, time.time() - window_start
        machine = _machine_busy_seconds() - machine_before
        after = _wait(stats.apply_async(queue=queue), process, 60, "stats")
        run = _tally(mode, results, submitted, arrived, before, after, reference)
        if run.figure is not None:
            run.figure.detail["client_cpu_per_image_ms"] = round(1000 * client_cpu / n, 1)
            others = machine - client_cpu - (after["cpu_seconds"] - before["cpu_seconds"])
            run.figure.detail["rest_of_machine_cores"] = round(max(0.0, others) / window, 2)
        if run.failed or run.missing:
            _print_tail(images_dir / f"{queue}.log")
    return run


def _tally(
    mode: str,
    results: list[AsyncResult],
    submitted: list[float],
    arrived: dict[str, tuple[float, Any]],
    before: dict[str, Any],
    after: dict[str, Any],
    reference: torch.Tensor,
) -> ModeRun:
    outputs: list[list[float] | None] = []
    argmax: list[int | None] = []
    latencies, done, seen = [], [], []
    failed = missing = wrong = 0
    errors: list[str] = []
    for i, result in enumerate(results):
        if result.id not in arrived:
            missing += 1
            outputs.append(None)
            argmax.append(None)
            continue
        seen_at, value = arrived[result.id]
        if not isinstance(value, dict):
            failed += 1
            errors.append(repr(value))
            outputs.append(None)
            argmax.append(None)
            continue
        logits = torch.tensor(value["logits"])
        expected = reference[i % len(reference)]
        if logits.shape != expected.shape or (logits - expected).abs().max() > TOLERANCE * max(
            1.0, float(expected.abs().max())
        ):
            wrong += 1
        outputs.append(value["logits"])
        argmax.append(value["argmax"])
        latencies.append(value["done"] - submitted[i])
        done.append(value["done"])
        seen.append(seen_at)
    delta = {k: after[k] - before[k] for k in ("batches", "batched_examples", "model_seconds", "cpu_seconds")}
    result_figure = None
    if done:
        elapsed = max(done) - submitted[0]
        result_figure = figure(
            len(done),
            elapsed,
            latencies,
            batches=delta["batches"],
            mean_batch=round(delta["batched_examples"] / delta["batches"], 2) if delta["batches"] else 0.0,
            largest_batch=after["largest_batch"],
            max_batch=after["max_batch"],
            submit_s=round(submitted[-1] - submitted[0], 3),
            client_images_per_s=round(len(seen) / (max(seen) - submitted[0]), 2),
            model_busy=round(delta["model_seconds"] / elapsed, 3),
            model_images_per_s=round(delta["batched_examples"] / delta["model_seconds"], 2)
            if delta["model_seconds"]
            else 0.0,
            worker_cpu_per_image_ms=round(1000 * delta["cpu_seconds"] / len(done), 1),
            worker_cores=round(delta["cpu_seconds"] / elapsed, 2),
        )
    return ModeRun(mode, result_figure, outputs, argmax, failed, missing, wrong, errors[:5], after)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores; 0 where /proc/stat is missing).
    Minus this process's and the worker's CPU, what is left is the rest of the machine: Redis,
    and anything else running that competes with the model for the cores (then rerun)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields)
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def choose_layout(options: Options, pool: torch.Tensor) -> tuple[bool, str]:
    """channels_last or contiguous: as asked, or whichever is faster here at a middle batch size
    (oneDNN's preference varies by CPU). Returns the choice and a note saying how it was made."""
    if options.channels_last is not None:
        return options.channels_last, "as asked"
    probe = sorted(options.batch_sizes)[(len(options.batch_sizes) - 1) // 2]
    rates = {}
    for channels_last in (False, True):
        model = build_model(options.model, channels_last)
        rates[channels_last] = offline(model, channels_last, pool, (probe,), 2 * probe)[0][probe].images_per_s
    note = f"channels_last at {rates[True] / rates[False]:.2f}x contiguous, batch {probe}"
    return rates[True] > rates[False], note


def run_benchmark(options: Options) -> Report:
    """The offline ceiling in this process, then one worker per mode; the worker is always stopped."""
    if options.requests < 1 or options.threads < 1:
        raise ValueError("--requests and --threads must be at least 1")
    _configured(app, options.broker)
    count = options.images or min(options.requests, 64)
    threads_before = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="bench-celery-") as tmp:
        keys, pool = write_images(Path(tmp), count, options.size)
        torch.set_num_threads(options.torch_threads)
        try:
            channels_last, layout_note = choose_layout(options, pool)
            model = build_model(options.model, channels_last)
            own, machine, started = _cpu_seconds(), _machine_busy_seconds(), time.time()
            by_size, reference = offline(
                model, channels_last, pool, options.batch_sizes, options.offline_images
            )
            others = (_machine_busy_seconds() - machine) - (_cpu_seconds() - own)
            offline_others = round(max(0.0, others) / (time.time() - started), 2)
            device = describe(torch.device("cpu"))
        finally:
            torch.set_num_threads(threads_before)
        del model, pool
        best = max(by_size, key=lambda b: by_size[b].images_per_s)
        max_batch = options.max_batch or max(1, min(best, options.threads // 2))
        runs = {
            mode: run_mode(
                mode,
                options,
                keys=keys,
                images_dir=Path(tmp),
                channels_last=channels_last,
                max_batch=max_batch,
                reference=reference,
            )
            for mode in options.modes
        }
    return Report(
        options, device, channels_last, layout_note, by_size, offline_others, best, max_batch, reference, runs
    )


# -- output ------------------------------------------------------------------------------------


def as_json(report: Report, command: str) -> dict[str, Any]:
    figures = {MODE_NAMES[m]: asdict(r.figure) if r.figure else None for m, r in report.runs.items()}
    out: dict[str, Any] = {
        "command": command,
        "model": report.options.model,
        "size": report.options.size,
        "layout": ("channels_last" if report.channels_last else "contiguous") + f" ({report.layout_note})",
        "device": report.device,
        "torch": torch.__version__,
        "options": asdict(report.options),
        "offline_by_batch": {b: round(f.images_per_s, 2) for b, f in report.offline_by_batch.items()},
        "offline_ceiling": asdict(report.ceiling),
        "offline_rest_of_machine_cores": report.offline_rest_of_machine_cores,
        **figures,
        "max_batch": report.max_batch,
        "problems": {
            MODE_NAMES[m]: {"failed": r.failed, "missing": r.missing, "wrong": r.wrong, "errors": r.errors}
            for m, r in report.runs.items()
        },
    }
    batched = report.runs.get("batched")
    if batched and batched.figure:
        out["micro_batched_over_ceiling"] = round(
            batched.figure.images_per_s / report.ceiling.images_per_s, 3
        )
        single = report.runs.get("single")
        if single and single.figure:
            out["micro_batched_over_one_at_a_time"] = round(
                batched.figure.images_per_s / single.figure.images_per_s, 2
            )
    return out


def print_report(report: Report, command: str) -> None:
    o = report.options
    name = "DenseNet-121" if o.model == "densenet121" else "tiny DenseNet (2 blocks)"
    layout = ("channels_last" if report.channels_last else "contiguous") + f" ({report.layout_note})"
    print(f"{name} {o.size}x{o.size}, {NUM_CLASSES} outputs, random weights, eval, float32, {layout}")
    print(f"device: {report.device}")
    print(f"command: {command}")
    print(
        "offline images/s by batch size: "
        + "  ".join(f"{b}: {f.images_per_s:.1f}" for b, f in report.offline_by_batch.items())
    )
    print(f"{'':<24} {'images/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'mean batch':>11}  setting")
    c = report.ceiling
    print(
        f"{'offline ceiling':<24} {c.images_per_s:>9.1f} {c.p50_ms:>9.1f} {c.p99_ms:>9.1f} "
        f"{report.best_batch:>11}  ready batches in this process, latency per batch"
    )
    print(
        f"{'':<24} CPU per image {c.detail['cpu_per_image_ms']} ms ({c.detail['cores']} cores);"
        f" rest of the machine {report.offline_rest_of_machine_cores} cores"
    )
    for mode, run in report.runs.items():
        f = run.figure
        if f is None:
            print(f"{MODE_NAMES[mode] + ' (Celery)':<24} no task succeeded")
        else:
            d = f.detail
            label = MODE_NAMES[mode] + " (Celery)"
            print(
                f"{label:<24} {f.images_per_s:>9.1f} {f.p50_ms:>9.1f} {f.p99_ms:>9.1f} "
                f"{d['mean_batch']:>11}  {o.requests} tasks at once, -P threads -c {o.threads}, "
                f"max_batch {d['max_batch']}"
                + (f", max_wait {o.max_wait_ms:g} ms" if mode == "batched" else "")
            )
            print(
                f"{'':<24} model busy {100 * d['model_busy']:.0f}% of the run, at "
                f"{d['model_images_per_s']} images/s; CPU per image: worker {d['worker_cpu_per_image_ms']} ms"
                f" ({d['worker_cores']} cores), client {d['client_cpu_per_image_ms']} ms;"
                f" rest of the machine {d['rest_of_machine_cores']} cores; sent in {d['submit_s']} s;"
                f" results at the client {d['client_images_per_s']} images/s"
            )
        if run.failed or run.missing or run.wrong:
            print(
                f"  {MODE_NAMES[mode]}: {run.failed} failed, {run.missing} missing, {run.wrong} wrong answers"
            )
            for error in run.errors:
                print(f"    {error}")
    summary = as_json(report, command)
    if "micro_batched_over_ceiling" in summary:
        ratio = summary["micro_batched_over_ceiling"]
        line = f"micro-batched / offline ceiling = {ratio:.2f} (target on the CPU: >= 0.8)"
        if "micro_batched_over_one_at_a_time" in summary:
            line += f"; micro-batched / one-at-a-time = {summary['micro_batched_over_one_at_a_time']:.2f}"
        print(line)


def parse_args(argv: list[str] | None = None) -> tuple[Options, Path | None]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=512, help="tasks sent at once per mode")
    parser.add_argument("--broker", default=DEFAULT_BROKER, help="Redis URL: broker and result backend")
    parser.add_argument("--model", choices=("densenet121", "tiny"), default="densenet121")
    parser.add_argument("--size", type=int, default=224, help="image side (3 x size x size)")
    parser.add_argument("--threads", type=int, default=64, help="worker threads (-P threads -c)")
    parser.add_argument(
        "--max-batch",
        type=int,
        help="micro-batched max_batch (default: best offline size, at most threads/2)",
    )
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--images", type=int, help="distinct images (default: min(requests, 64))")
    parser.add_argument("--batch-sizes", default="8,16,32,64", help="offline batch sizes")
    parser.add_argument("--offline-images", type=int, default=64, help="images measured per offline size")
    parser.add_argument(
        "--channels-last",
        choices=("auto", "on", "off"),
        default="auto",
        help="layout, both sides (auto: whichever a probe at a middle batch size finds faster)",
    )
    parser.add_argument("--torch-threads", type=int, default=2, help="intra-op threads, offline and worker")
    parser.add_argument("--modes", default="batched,single", help="which Celery modes to run")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds for one mode's results")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    modes = tuple(m for m in args.modes.split(",") if m)
    if not set(modes) <= set(MODES):
        parser.error(f"--modes: choose from {', '.join(MODES)}")
    options = Options(
        requests=args.requests,
        broker=args.broker,
        model=args.model,
        size=args.size,
        threads=args.threads,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        images=args.images,
        batch_sizes=tuple(int(s) for s in args.batch_sizes.split(",")),
        offline_images=args.offline_images,
        channels_last=None if args.channels_last == "auto" else args.channels_last == "on",
        torch_threads=args.torch_threads,
        modes=modes,
        timeout_s=args.timeout,
    )
    return options, args.json


def main(argv: list[str] | None = None) -> int:
    options, json_path = parse_args(argv)
    command = shlex.join([Path(sys.executable).name, "-m", "bench.celery_batching", *(argv or sys.argv[1:])])
    set_torch_threads(options.torch_threads)
    report = run_benchmark(options)
    print_report(report, command)
    if json_path is not None:
        json_path.write_text(json.dumps(as_json(report, command), indent=2) + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
