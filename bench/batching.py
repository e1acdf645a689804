"""Micro-batching of single-image inference requests: DenseNet-121 (224 x 224, 14 outputs, random
weights, eval mode) served three ways in one run, each as images/s and p50/p99 latency:

(a) offline ceiling: the model alone on ready-made batches already on the device, at the best of a
    few batch sizes; latency is the time of one batch (on CUDA its GPU time, from CUDA events);
(b) micro-batched: --submitters threads, each sending one image through MicroBatcher and waiting
    for its result before sending the next (as Celery worker threads would); latency is submit to
    result, so it includes queueing, stacking, the copies and the fan-out;
(c) one-at-a-time: the same submitters through a MicroBatcher with max_batch=1, i.e. the model
    called once per image; what serving without batching gives under the same load.

(b)/(a) says how much of the device's batched throughput the batcher delivers to single-image
callers. On CUDA the model runs under bfloat16 autocast in channels_last; on the CPU in float32,
channels_last only when it measures faster than contiguous. Needs torch only (no Django, no
product services), so it runs as is on a GPU machine with nothing else installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workers.inference.batcher import MicroBatcher  # noqa: E402
from workers.models.densenet import densenet121  # noqa: E402

NUM_CLASSES, SIZE = 14, 224
IMAGE = (3, SIZE, SIZE)


@dataclass(frozen=True)
class Setup:
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype, None: float32
    channels_last: bool


@dataclass
class Figure:
    images_per_s: float
    p50_ms: float
    p99_ms: float
    detail: dict[str, object] = field(default_factory=dict)


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def figure(images: int, seconds: float, latencies_s: list[float], **detail: object) -> Figure:
    lat = sorted(latencies_s)
    return Figure(images / seconds, 1000 * percentile(lat, 0.50), 1000 * percentile(lat, 0.99), detail)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return (
            f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}, "
            f"cuDNN {torch.backends.cudnn.version()}, torch {torch.__version__}"
        )
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{model} ({os.cpu_count()} cores), torch {torch.__version__}, "
        f"{torch.get_num_threads()} intra-op threads"
    )


def build(setup: Setup) -> torch.nn.Module:
    torch.manual_seed(0)
    model = densenet121(num_classes=NUM_CLASSES).eval().to(setup.device)
    if setup.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def model_run(model: torch.nn.Module, setup: Setup) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function a batch goes through: layout for the model, float32 logits out (the batcher
    adds inference mode and autocast)."""

    def run(batch: torch.Tensor) -> torch.Tensor:
        if setup.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return model(batch).float()

    return run


def offline(model: torch.nn.Module, setup: Setup, batch: int, seconds: float) -> Figure:
    """(a) for one batch size: the model alone, inputs already on the device."""
    run = model_run(model, setup)
    x = torch.randn(batch, *IMAGE, device=setup.device)
    autocast = torch.autocast(setup.device.type, dtype=setup.dtype, enabled=setup.dtype is not None)
    with torch.inference_mode(), autocast:
        if setup.device.type == "cpu":
            run(x)  # warm-up: oneDNN builds its primitives for this shape
            latencies: list[float] = []
            started = time.perf_counter()
            while time.perf_counter() - started < seconds or len(latencies) < 3:
                t0 = time.perf_counter()
                run(x)
                latencies.append(time.perf_counter() - t0)
            return figure(batch * len(latencies), time.perf_counter() - started, latencies, batch=batch)
        for _ in range(3):
            run(x)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        run(x)
        torch.cuda.synchronize()
        iterations = max(10, int(seconds / (time.perf_counter() - t0)))
        # Back to back without host synchronisation (launches overlap the previous batch, as in a
        # real pipeline); each batch's GPU time from a pair of events.
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(iterations)
        ]
        started = time.perf_counter()
        for begin, end in events:
            begin.record()
            run(x)
            end.record()
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
    return figure(batch * iterations, elapsed, [b.elapsed_time(e) / 1000 for b, e in events], batch=batch)


def served(
    model: torch.nn.Module,
    setup: Setup,
    *,
    submitters: int,
    per_submitter: int,
    max_batch: int,
    max_wait_ms: float,
    warmup: int,
) -> tuple[Figure, int]:
    """(b) or (c): closed-loop single-image submitters through a MicroBatcher. Returns the figure
    and the number of wrong answers (rows not of the model's output shape)."""
    images = [torch.randn(*IMAGE) for _ in range(32)]  # shared and read-only: generation is not measured
    latencies: list[list[float]] = [[] for _ in range(submitters)]
    finished = [0.0] * submitters
    wrong = [0] * submitters
    errors: list[BaseException] = []
    ready = threading.Barrier(submitters + 1)
    with MicroBatcher(
        model_run(model, setup),
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        device=setup.device,
        dtype=setup.dtype or torch.float32,
        timeout_s=3600,
        name="bench",
    ) as batcher:

        def submitter(s: int) -> None:
            try:
                for i in range(warmup):
                    batcher.submit(images[(s + i) % len(images)]).result()
                ready.wait()
                mine = latencies[s]
                for i in range(per_submitter):
                    t0 = time.perf_counter()
                    row = batcher.submit(images[(s + i) % len(images)]).result()
                    t1 = time.perf_counter()
                    mine.append(t1 - t0)
                    if row.shape != (NUM_CLASSES,):
                        wrong[s] += 1
                finished[s] = t1
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                ready.abort()

        threads = [threading.Thread(target=submitter, args=(s,), daemon=True) for s in range(submitters)]
        for t in threads:
            t.start()
        try:
            ready.wait()
        except threading.BrokenBarrierError:
            raise errors[0] from None
        started = time.perf_counter()
        before = batcher.stats()
        for t in threads:
            t.join()
        after = batcher.stats()
    if errors:
        raise errors[0]
    batches = after.batches - before.batches
    mean_batch = (after.batched_examples - before.batched_examples) / batches if batches else 0.0
    result = figure(
        submitters * per_submitter,
        max(finished) - started,
        [v for per in latencies for v in per],
        submitters=submitters,
        requests_per_submitter=per_submitter,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        batches=batches,
        mean_batch=round(mean_batch, 2),
        oom_splits=after.oom_splits,
    )
    return result, sum(wrong)


def choose_layout(device: torch.device, batch: int, seconds: float) -> tuple[bool, float]:
    """On the CPU, channels_last only if it is faster here (oneDNN's preference varies by CPU).
    Returns the choice and channels_last's speed relative to contiguous."""
    rates = {}
    for channels_last in (False, True):
        setup = Setup(device, None, channels_last)
        rates[channels_last] = offline(build(setup), setup, batch, seconds).images_per_s
    return rates[True] > rates[False], rates[True] / rates[False]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--batch-sizes", help="offline batch sizes (default CPU 1,8,16,32,64; CUDA 1,64,128,256,512)"
    )
    parser.add_argument(
        "--submitters", type=int, help="concurrent single-image clients (default CPU 32, CUDA 512)"
    )
    parser.add_argument(
        "--requests-per-submitter",
        type=int,
        help="measured requests per submitter in (b) and (c) (default: enough for (b) to last --seconds)",
    )
    parser.add_argument(
        "--serial-requests-per-submitter",
        type=int,
        help="for (c) only (default: as (b), fewer if (c) at the batch-1 rate would last over 2 x --seconds)",
    )
    parser.add_argument(
        "--max-batch", type=int, help="(b)'s max_batch (default: the best offline size, at most submitters/2)"
    )
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, help="target length of (b) (default CPU 30, CUDA 15)")
    parser.add_argument(
        "--offline-seconds", type=float, help="per offline batch size (default CPU 3, CUDA 2)"
    )
    parser.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto")
    parser.add_argument(
        "--cudnn-benchmark", action="store_true", help="autotune cuDNN per shape (off by default)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    sizes = [
        int(s) for s in (args.batch_sizes or ("1,64,128,256,512" if cuda else "1,8,16,32,64")).split(",")
    ]
    submitters = args.submitters or (512 if cuda else 32)
    seconds = args.seconds or (15.0 if cuda else 30.0)
    offline_seconds = args.offline_seconds or (2.0 if cuda else 3.0)

    layout_note = ""
    if cuda:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        channels_last = args.channels_last != "off"
    else:
        dtype = None
        if args.channels_last == "auto":
            probe = sorted(sizes)[len(sizes) // 2]
            channels_last, speedup = choose_layout(device, probe, offline_seconds)
            layout_note = f" ({speedup:.2f}x the speed of contiguous at batch {probe})"
        else:
            channels_last = args.channels_last == "on"
    setup = Setup(device, dtype, channels_last)
    model = build(setup)

    by_size = {batch: offline(model, setup, batch, offline_seconds) for batch in sizes}
    best = max(by_size, key=lambda b: by_size[b].images_per_s)
    ceiling = by_size[best]
    serial_rate = by_size[1].images_per_s if 1 in by_size else None  # caps (c)'s length when known

    max_batch = args.max_batch or max(1, min(best, submitters // 2))
    per = args.requests_per_submitter or max(2, round(seconds * ceiling.images_per_s / submitters))
    per_serial = args.serial_requests_per_submitter or per
    if args.serial_requests_per_submitter is None and serial_rate is not None:
        per_serial = max(1, min(per, round(2 * seconds * serial_rate / submitters)))
    warmup = 1
    batched, wrong_b = served(
        model,
        setup,
        submitters=submitters,
        per_submitter=per,
        max_batch=max_batch,
        max_wait_ms=args.max_wait_ms,
        warmup=warmup,
    )
    serial, wrong_c = served(
        model,
        setup,
        submitters=submitters,
        per_submitter=per_serial,
        max_batch=1,
        max_wait_ms=0,
        warmup=warmup,
    )
    ratio = batched.images_per_s / ceiling.images_per_s

    dtype_name = str(dtype).removeprefix("torch.") + " autocast" if dtype is not None else "float32"
    layout = "channels_last" if channels_last else "contiguous"
    report = {
        "model": f"DenseNet-121 {SIZE}x{SIZE}, {NUM_CLASSES} outputs, random weights, eval",
        "device": describe(device),
        "precision": dtype_name,
        "layout": layout + layout_note,
        "offline_by_batch": {b: round(f.images_per_s, 1) for b, f in by_size.items()},
        "offline_ceiling": asdict(ceiling),
        "micro_batched": asdict(batched),
        "one_at_a_time": asdict(serial),
        "micro_batched_over_ceiling": round(ratio, 3),
        "micro_batched_over_one_at_a_time": round(batched.images_per_s / serial.images_per_s, 2),
        "wrong_answers": wrong_b + wrong_c,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(report["model"])
        print(f"device: {report['device']}; {dtype_name}, {layout}{layout_note}")
        print(
            "offline images/s by batch size: "
            + "  ".join(f"{b}: {f.images_per_s:.1f}" for b, f in by_size.items())
        )
        print(f"{'':<24} {'images/s':>9} {'p50 ms':>9} {'p99 ms':>9}  setting")
        rows = [
            ("(a) offline ceiling", ceiling, f"batch {best}, ready batches on the device, latency per batch"),
            (
                "(b) micro-batched",
                batched,
                f"{submitters} submitters x {per} requests, max_batch {max_batch}, max_wait {args.max_wait_ms:g} ms;"
                f" {batched.detail['batches']} batches, mean {batched.detail['mean_batch']}",
            ),
            ("(c) one-at-a-time", serial, f"{submitters} submitters x {per_serial} requests, max_batch 1"),
        ]
        for name, fig, setting in rows:
            print(f"{name:<24} {fig.images_per_s:>9.1f} {fig.p50_ms:>9.1f} {fig.p99_ms:>9.1f}  {setting}")
        target = (
            f"target on an H100: (b) >= 6000 images/s with p99 < 250 ms -> "
            f"{'met' if batched.images_per_s >= 6000 and batched.p99_ms < 250 else 'not met'}"
            if cuda
            else "target on the CPU: >= 0.8"
        )
        print(f"(b)/(a) = {ratio:.2f} ({target}); (b)/(c) = {report['micro_batched_over_one_at_a_time']:.2f}")
        if report["wrong_answers"]:
            print(f"wrong answers: {report['wrong_answers']}")
    if report["wrong_answers"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
