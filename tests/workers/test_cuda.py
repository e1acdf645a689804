"""GPU checks of the micro-batcher and DenseNet-121; skipped without CUDA.

Imports torch, pytest and the two modules only (no Django, no fixtures), so the GPU machine runs it
with torch and pytest alone:

    python -m pytest -p no:django -p no:cacheprovider --noconftest tests/workers/test_cuda.py

(--noconftest: tests/conftest.py imports the product's test dependencies, pydicom and numpy.)
"""

from __future__ import annotations

import pytest
import torch

from workers.inference.batcher import MicroBatcher
from workers.models.densenet import densenet121

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_densenet_bf16_channels_last_through_the_batcher_matches_fp32_on_the_cpu():
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    torch.manual_seed(0)
    cpu_model = densenet121().eval()
    images = torch.randn(24, 3, 224, 224)
    with torch.inference_mode():
        reference = cpu_model(images)

    gpu_model = densenet121().eval()
    gpu_model.load_state_dict(cpu_model.state_dict())
    gpu_model = gpu_model.cuda().to(memory_format=torch.channels_last)

    def run(batch: torch.Tensor) -> torch.Tensor:
        assert torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == torch.bfloat16
        return gpu_model(batch.contiguous(memory_format=torch.channels_last)).float()

    with MicroBatcher(run, max_batch=8, max_wait_ms=20, device="cuda", timeout_s=120) as batcher:
        futures = [batcher.submit(image) for image in images]
        got = torch.stack([f.result(timeout=120) for f in futures])
    stats = batcher.stats()
    assert stats.completed == 24 and stats.batches >= 3 and stats.largest_batch <= 8
    assert got.device.type == "cpu" and got.dtype == torch.float32
    # bfloat16 keeps 8 bits of mantissa: measured on the CPU (autocast bf16) this model's logits
    # are off by about 1 % of their norm; 3 % leaves room for other kernels and summation orders.
    relative = ((got - reference).norm() / reference.norm()).item()
    assert relative < 0.03, relative
    assert (got - reference).abs().max().item() < 0.05 * reference.abs().max().item()


def _memory_eater(per_example: int):
    """A run that needs `per_example` bytes of GPU memory per example, for real."""

    def run(batch: torch.Tensor) -> torch.Tensor:
        scratch = torch.empty((batch.shape[0], per_example), dtype=torch.uint8, device=batch.device)
        scratch[:, :1] = 1
        return batch.flatten(1).sum(1) + scratch[:, 0].float()

    return run


def test_a_real_out_of_memory_is_split_on_the_gpu():
    torch.cuda.empty_cache()
    free, _total = torch.cuda.mem_get_info()
    examples = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 1, 2, 2).contiguous()
    # 8 examples need 8/6 of the free memory (cannot fit), 4 need 4/6 (fit).
    run = _memory_eater(free // 6)
    with MicroBatcher(run, max_batch=8, max_wait_ms=2000, device="cuda", timeout_s=120) as batcher:
        futures = [batcher.submit(x) for x in examples]
        got = [f.result(timeout=120).item() for f in futures]
    assert got == [4.0 * i + 1 for i in range(8)]
    stats = batcher.stats()
    assert stats.oom_splits >= 1 and stats.largest_batch <= 4 and stats.failed == 0
    torch.cuda.empty_cache()


def test_an_example_too_big_for_the_gpu_fails_alone_and_the_batcher_recovers():
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    free, _total = torch.cuda.mem_get_info()
    too_big = _memory_eater(2 * free)
    calls = []

    def run(batch: torch.Tensor) -> torch.Tensor:
        calls.append(batch.shape[0])
        return too_big(batch) if len(calls) <= 3 else batch.flatten(1).sum(1)  # 2, then 1 + 1

    with MicroBatcher(run, max_batch=2, max_wait_ms=2000, device="cuda", timeout_s=120) as batcher:
        futures = [batcher.submit(torch.ones(1, 2, 2)) for _ in range(2)]
        for future in futures:
            with pytest.raises(torch.OutOfMemoryError):
                future.result(timeout=120)
        assert batcher.submit(torch.ones(1, 2, 2)).result(timeout=120).item() == 4.0
    assert calls[:3] == [2, 1, 1]
    assert batcher.stats().failed == 2
    torch.cuda.empty_cache()
    assert torch.cuda.memory_allocated() <= before + 2**20  # nothing of the failed calls is kept


def test_a_state_dict_package_loads_on_cuda_in_bf16_channels_last_and_matches_the_cpu(tmp_path):
    """The loader's CUDA path: a DenseNet-121 state-dict package (14 findings, 1 channel) loaded on
    the GPU with the manifest's bf16 + channels_last, fed through the micro-batcher like a worker
    does, agrees with the same weights in fp32 on the CPU."""
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    import json

    from fhirai.routing.manifest import manifest_read
    from workers.inference.loaders import weights_load

    torch.manual_seed(1)
    cpu_model = densenet121(num_classes=14, in_channels=1).eval()
    torch.save(cpu_model.state_dict(), tmp_path / "weights.pt")
    labels = [{"name": f"f{i}", "coding": {"system": "urn:test", "code": f"f{i}"}} for i in range(14)]
    (tmp_path / "manifest.json").write_text(
        json.dumps(
            {
                "name": "cxr-cuda",
                "version": "1",
                "title": "t",
                "task": "classification",
                "format": "state_dict",
                "weights": "weights.pt",
                "architecture": {"name": "densenet121", "num_classes": 14, "in_channels": 1},
                "outputs": {"labels": labels},
                "runtime": {"precision": "bf16", "channels_last": True, "max_batch": 16},
            }
        )
    )
    loaded = weights_load(tmp_path, manifest_read(tmp_path), torch.device("cuda"))
    assert loaded.dtype == torch.bfloat16 and loaded.device.type == "cuda"
    images = torch.randn(20, 1, 224, 224)
    with torch.inference_mode():
        reference = torch.sigmoid(cpu_model(images))
    with MicroBatcher(
        loaded.run, max_batch=16, max_wait_ms=20, device=loaded.device, dtype=loaded.dtype, timeout_s=120
    ) as batcher:
        rows = torch.stack([f.result(timeout=120) for f in [batcher.submit(i) for i in images]])
    assert torch.allclose(torch.sigmoid(rows.float()), reference, atol=0.05)
