"""Bring-your-own image classifiers: a tiny DenseNet trained on synthetic chest radiographs
(tests/support/tiny_cxr.py), packaged as a state dict, TorchScript and ONNX, loaded and run by
the runtime's ImageClassifier; and the preprocessing each image goes through."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from fhirai.routing.manifest import MANIFEST, file_sha256, manifest_parse, manifest_read
from tests.support.tiny_cxr import (
    INPUT,
    LABELS,
    TEST_SYSTEM,
    cxr_case,
    cxr_cases,
    dx_dataset,
    tiny_model_package,
    trained_state,
)
from workers.inference.errors import ModelInputError
from workers.inference.loaders import ModelPackageError, weights_load
from workers.inference.preprocess import image_preprocess, input_spec
from workers.models.classifier import ImageClassifier

# TorchScript is a package format the product accepts; torch deprecates it, not this code.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
CPU = torch.device("cpu")
FORMATS = ("state_dict", "torchscript", "onnx")
HELD_OUT_SEED = 20_000  # training used seeds 10_000 on


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("packages")
    runtime = {
        "device": "cpu",
        "precision": "bf16",
        "max_batch": 16,
        "max_wait_ms": 5.0,
        "channels_last": True,
    }
    return {
        "state_dict": tiny_model_package(base, "state_dict", runtime=runtime),
        "torchscript": tiny_model_package(base, "torchscript"),
        "onnx": tiny_model_package(base, "onnx"),
    }


@pytest.fixture(scope="module")
def classifiers(packages: dict[str, Path]):
    loaded = {fmt: ImageClassifier(path, manifest_read(path), CPU) for fmt, path in packages.items()}
    yield loaded
    for classifier in loaded.values():
        classifier.close()


@pytest.fixture(scope="module")
def held_out():
    return cxr_cases(20, seed=HELD_OUT_SEED)


def _rewrite(package: Path, **changes: object) -> None:
    data = json.loads((package / MANIFEST).read_text())
    data.update(changes)
    (package / MANIFEST).write_text(json.dumps(data))


# -- the three formats -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_classifies_held_out_images(classifiers, held_out, fmt):
    model = classifiers[fmt]
    right = {label: 0 for label in LABELS}
    for case in held_out:
        result = model([case.dataset])
        assert result["instances"] == 1
        assert [f["name"] for f in result["findings"]] == list(LABELS)
        for finding in result["findings"]:
            assert finding["coding"]["system"] == TEST_SYSTEM
            assert finding["threshold"] == 0.5
            assert finding["instance"] == case.dataset.SOPInstanceUID
            assert 0.0 <= finding["probability"] <= 1.0
            assert finding["present"] == (finding["probability"] >= 0.5)
            right[finding["name"]] += finding["present"] == getattr(case, finding["name"])
    assert right["opacity"] >= 18 and right["line"] >= 18, right


def test_an_opacity_is_present_and_its_absence_is_absent(classifiers):
    positive = classifiers["onnx"]([cxr_case(HELD_OUT_SEED + 100, opacity=True, line=False).dataset])
    negative = classifiers["onnx"]([cxr_case(HELD_OUT_SEED + 101, opacity=False, line=False).dataset])
    assert positive["findings"][0]["present"] is True
    assert positive["conclusion"].startswith("Findings above threshold: opacity (")
    assert negative["findings"][0]["present"] is False
    assert negative["conclusion"] == "No finding above its threshold."


def test_the_three_formats_give_the_same_probabilities(classifiers, held_out):
    for case in held_out[:6]:
        results = [classifiers[fmt]([case.dataset])["findings"] for fmt in FORMATS]
        for findings in zip(*results, strict=True):
            probabilities = [f["probability"] for f in findings]
            assert max(probabilities) - min(probabilities) < 2e-3, probabilities


def test_a_series_reports_each_labels_highest_image_and_skips_non_images(classifiers):
    normal = cxr_case(HELD_OUT_SEED + 200, opacity=False, line=False).dataset
    opacity = cxr_case(HELD_OUT_SEED + 201, opacity=True, line=False).dataset
    line = cxr_case(HELD_OUT_SEED + 202, opacity=False, line=True).dataset
    report = dx_dataset(np.zeros((4, 4), np.uint16), uid_seed="sr")
    del report.PixelData  # e.g. a structured report in the same study
    result = classifiers["state_dict"]([normal, report, opacity, line])
    assert result["instances"] == 3
    by_name = {f["name"]: f for f in result["findings"]}
    assert by_name["opacity"]["present"] and by_name["opacity"]["instance"] == opacity.SOPInstanceUID
    assert by_name["line"]["present"] and by_name["line"]["instance"] == line.SOPInstanceUID
    assert result["conclusion"].startswith("Findings above threshold: opacity (")
    assert ", line (" in result["conclusion"]


def test_a_series_without_a_usable_image_is_an_input_error(classifiers):
    broken = cxr_case(HELD_OUT_SEED + 300, opacity=False, line=False).dataset
    broken.PixelData = broken.PixelData[:100]
    with pytest.raises(ModelInputError, match="no usable image.*cannot be decoded"):
        classifiers["torchscript"]([broken])
    report = dx_dataset(np.zeros((4, 4), np.uint16), uid_seed="sr")
    del report.PixelData
    with pytest.raises(ModelInputError, match="no usable image among 1"):
        classifiers["torchscript"]([report])


def test_an_undecodable_image_is_skipped_when_the_series_has_others(classifiers):
    broken = cxr_case(HELD_OUT_SEED + 301, opacity=False, line=False).dataset
    broken.PixelData = broken.PixelData[:100]
    good = cxr_case(HELD_OUT_SEED + 302, opacity=True, line=False).dataset
    result = classifiers["torchscript"]([broken, good])
    assert result["instances"] == 1
    assert result["findings"][0]["instance"] == good.SOPInstanceUID


def test_softmax_activation_gives_probabilities_that_sum_to_one(packages, tmp_path):
    package = tiny_model_package(tmp_path, "torchscript")
    _rewrite(
        package, outputs={**json.loads((package / MANIFEST).read_text())["outputs"], "activation": "softmax"}
    )
    model = ImageClassifier(package, manifest_read(package), CPU)
    try:
        findings = model([cxr_case(HELD_OUT_SEED + 400, opacity=True, line=False).dataset])["findings"]
    finally:
        model.close()
    assert sum(f["probability"] for f in findings) == pytest.approx(1.0, abs=2e-4)


# -- concurrency -------------------------------------------------------------------------------


def test_concurrent_calls_are_batched_and_each_thread_gets_its_own_result(tmp_path):
    package = tiny_model_package(
        tmp_path, "state_dict", runtime={"precision": "fp32", "max_batch": 32, "max_wait_ms": 25.0}
    )
    model = ImageClassifier(package, manifest_read(package), CPU)
    series = [
        [
            cxr_case(HELD_OUT_SEED + 500 + 2 * t + i, opacity=bool(t & 1), line=bool(t & 2)).dataset
            for i in range(2)
        ]
        for t in range(16)
    ]
    try:
        alone = [model(datasets) for datasets in series]
        before = model.stats()
        results: dict[int, dict] = {}
        errors: list[BaseException] = []
        start = threading.Barrier(16)

        def caller(t: int) -> None:
            try:
                start.wait()
                results[t] = model(series[t])
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)

        threads = [threading.Thread(target=caller, args=(t,)) for t in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        after = model.stats()
    finally:
        model.close()
    assert errors == []
    batches = after.batches - before.batches
    examples = after.batched_examples - before.batched_examples
    assert examples == 32
    assert examples / batches > 1
    for t in range(16):
        got, expected = results[t], alone[t]
        assert [f["instance"] for f in got["findings"]] == [f["instance"] for f in expected["findings"]]
        for g, e in zip(got["findings"], expected["findings"], strict=True):
            assert g["probability"] == pytest.approx(e["probability"], abs=2e-4)
        truth = {"opacity": bool(t & 1), "line": bool(t & 2)}
        assert {f["name"]: f["present"] for f in got["findings"]} == truth


# -- loading -----------------------------------------------------------------------------------


def test_weights_that_do_not_match_the_manifests_checksum_are_refused(tmp_path):
    package = tiny_model_package(tmp_path, "state_dict")
    manifest = manifest_read(package)
    weights = package / manifest.weights
    state = dict(trained_state())
    state["classifier.bias"] = state["classifier.bias"] + 1.0
    torch.save(state, weights)  # swapped after registration
    with pytest.raises(ModelPackageError, match="sha256"):
        ImageClassifier(package, manifest, CPU)


def test_a_state_dict_for_another_network_names_the_keys(tmp_path):
    package = tiny_model_package(tmp_path, "state_dict")
    state = {f"backbone.{k}" if k.startswith("classifier.") else k: v for k, v in trained_state().items()}
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, package / "weights.pt")
    _rewrite(package, sha256=file_sha256(package / "weights.pt"))
    with pytest.raises(ModelPackageError) as caught:
        ImageClassifier(package, manifest_read(package), CPU)
    message = str(caught.value)
    assert "2 missing key(s): classifier.weight, classifier.bias" in message
    assert "3 unexpected key(s):" in message and "backbone.classifier.weight" in message
    assert "extra.weight" in message
    assert isinstance(caught.value, ModelInputError) and isinstance(caught.value, ValueError)


def test_a_checkpoint_of_a_data_parallel_model_loads(tmp_path):
    package = tiny_model_package(tmp_path, "state_dict")
    wrapped = {"state_dict": {f"module.{k}": v for k, v in trained_state().items()}, "epoch": 16}
    torch.save(wrapped, package / "weights.pt")
    _rewrite(package, sha256=file_sha256(package / "weights.pt"))
    manifest = manifest_read(package)
    loaded = weights_load(package, manifest, CPU)
    x = torch.stack(
        [image_preprocess(c.dataset, input_spec(INPUT)) for c in cxr_cases(4, seed=HELD_OUT_SEED)]
    )
    reference = tiny_model_package(tmp_path / "plain", "state_dict")
    plain = weights_load(reference, manifest_read(reference), CPU)
    with torch.inference_mode():
        assert torch.allclose(loaded.run(x), plain.run(x))


def test_a_pickle_that_is_not_only_tensors_is_refused(tmp_path):
    package = tiny_model_package(tmp_path, "state_dict")
    torch.save({"state_dict": trained_state(), "optimiser": object()}, package / "weights.pt")
    _rewrite(package, sha256="")
    with pytest.raises(ModelPackageError, match="tensors-only"):
        weights_load(package, manifest_read(package), CPU)


def test_a_model_with_more_outputs_than_labels_is_refused_at_load(tmp_path):
    package = tiny_model_package(tmp_path, "torchscript")
    outputs = json.loads((package / MANIFEST).read_text())["outputs"]
    _rewrite(package, outputs={**outputs, "labels": outputs["labels"][:1]})
    with pytest.raises(ModelPackageError, match="gives 2 output.*has 1 label"):
        ImageClassifier(package, manifest_read(package), CPU)


def test_a_model_that_cannot_take_the_manifests_input_size_is_refused_at_load(tmp_path):
    package = tiny_model_package(tmp_path, "onnx", onnx_dynamic_batch=False)
    _rewrite(package, input={**INPUT, "channels": 3, "mean": [0.5], "std": [0.25]})
    with pytest.raises(ModelPackageError, match="does not run on a 3 x 48 x 48 input"):
        ImageClassifier(package, manifest_read(package), CPU)


def test_an_onnx_model_with_a_fixed_batch_of_one_runs_batches_in_chunks(tmp_path, packages):
    fixed = tiny_model_package(tmp_path, "onnx", onnx_dynamic_batch=False)
    x = torch.stack(
        [image_preprocess(c.dataset, input_spec(INPUT)) for c in cxr_cases(5, seed=HELD_OUT_SEED)]
    )
    chunked = weights_load(fixed, manifest_read(fixed), CPU).run(x)
    dynamic = weights_load(packages["onnx"], manifest_read(packages["onnx"]), CPU).run(x)
    assert chunked.shape == (5, 2)
    assert torch.allclose(chunked, dynamic, atol=1e-5)


def test_reduced_precision_is_autocast_on_cuda_only(packages):
    manifest = manifest_read(packages["state_dict"])  # asks for bf16
    assert manifest.runtime["precision"] == "bf16"
    assert weights_load(packages["state_dict"], manifest, CPU).dtype == torch.float32


def test_the_manifest_is_checked_like_the_registry_checks_it(packages):
    data = json.loads((packages["onnx"] / MANIFEST).read_text())
    manifest = manifest_parse(data)
    assert manifest.format == "onnx" and manifest.sha256 == file_sha256(packages["onnx"] / "model.onnx")


# -- preprocessing -----------------------------------------------------------------------------


def _spec(**changes: object):
    return input_spec({"size": [4, 4], "channels": 1, "mean": [0.0], "std": [1.0], **changes})


RAMP = np.arange(16, dtype=np.uint16).reshape(4, 4) * 20  # 0 .. 300


def test_monochrome1_is_inverted_so_that_dense_is_bright():
    plain = image_preprocess(dx_dataset(RAMP, photometric="MONOCHROME2"), _spec())
    inverted = image_preprocess(dx_dataset(RAMP, photometric="MONOCHROME1"), _spec())
    assert plain[0, 0, 0] == 0.0 and plain[0, 3, 3] == 1.0
    assert torch.allclose(inverted, 1.0 - plain)


def test_the_manifests_window_is_in_modality_units_and_wins_over_the_images():
    ds = dx_dataset(RAMP, window=(40.0, 10.0), slope=2.0, intercept=-100.0)  # modality -100 .. 500
    out = image_preprocess(ds, _spec(window={"center": 100, "width": 200}))
    modality = torch.from_numpy(RAMP.astype(np.float32)) * 2 - 100
    assert torch.allclose(out[0], ((modality - 100) / 200 + 0.5).clamp(0, 1))


def test_the_images_own_first_window_is_used_when_the_manifest_has_none():
    ds = dx_dataset(RAMP)
    ds.WindowCenter, ds.WindowWidth = [150, 40], [101, 400]
    out = image_preprocess(ds, _spec())
    values = torch.from_numpy(RAMP.astype(np.float32))
    assert torch.allclose(out[0], ((values - 149.5) / 100 + 0.5).clamp(0, 1))  # PS3.3 C.11.2.1.2.1
    ds.VOILUTFunction = "SIGMOID"
    assert torch.allclose(image_preprocess(ds, _spec())[0], torch.sigmoid(4 * (values - 150) / 101))


def test_without_any_window_the_image_is_scaled_min_to_max():
    out = image_preprocess(dx_dataset(RAMP + 1000), _spec())
    assert torch.allclose(out[0], torch.from_numpy(RAMP.astype(np.float32)) / 300)
    flat = image_preprocess(dx_dataset(np.full((4, 4), 7, np.uint16)), _spec())
    assert torch.equal(flat, torch.zeros(1, 4, 4))


def test_three_channels_replicate_the_grey_and_normalise_per_channel():
    out = image_preprocess(dx_dataset(RAMP), _spec(channels=3, mean=[0.1, 0.2, 0.3], std=[1.0, 2.0, 0.5]))
    grey = image_preprocess(dx_dataset(RAMP), _spec())[0]
    assert out.shape == (3, 4, 4) and out.dtype == torch.float32
    for c, (mean, std) in enumerate([(0.1, 1.0), (0.2, 2.0), (0.3, 0.5)]):
        assert torch.allclose(out[c], (grey - mean) / std)


def test_letterbox_pads_to_a_square_instead_of_stretching():
    wide = np.full((4, 8), 100, np.uint16)
    window = {"center": 50, "width": 100}  # 100 -> 1.0
    stretched = image_preprocess(dx_dataset(wide), _spec(size=[8, 8], window=window))
    boxed = image_preprocess(dx_dataset(wide), _spec(size=[8, 8], window=window, letterbox=True))
    assert torch.equal(stretched, torch.ones(1, 8, 8))
    assert torch.equal(boxed[0, 2:6], torch.ones(4, 8))
    assert torch.equal(boxed[0, :2], torch.zeros(2, 8)) and torch.equal(boxed[0, 6:], torch.zeros(2, 8))


def test_images_are_resized_to_the_manifests_size():
    case = cxr_case(HELD_OUT_SEED + 600, opacity=True, line=False, size=96)
    out = image_preprocess(case.dataset, input_spec(INPUT))
    assert out.shape == (1, 48, 48) and torch.isfinite(out).all()


def test_colour_becomes_grey_by_luminance():
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[1, 0] = (0, 0, 255)
    rgb[1, 1] = (255, 255, 255)
    out = image_preprocess(dx_dataset(rgb), _spec(size=[2, 2], window={"center": 127.5, "width": 255}))
    assert torch.allclose(out[0], torch.tensor([[0.299, 0.587], [0.114, 1.0]]), atol=1e-4)


def test_a_multi_frame_image_gives_its_first_frame():
    frames = np.stack([RAMP, RAMP[::-1].copy()])
    out = image_preprocess(dx_dataset(frames), _spec())
    assert torch.allclose(out, image_preprocess(dx_dataset(RAMP), _spec()))


def test_undecodable_or_missing_pixels_are_input_errors():
    ds = dx_dataset(RAMP)
    ds.PixelData = ds.PixelData[:7]
    with pytest.raises(ModelInputError, match="cannot be decoded"):
        image_preprocess(ds, _spec())
    del ds.PixelData
    with pytest.raises(ModelInputError, match="no pixel data"):
        image_preprocess(ds, _spec())


def test_an_invalid_input_spec_is_refused():
    with pytest.raises(ValueError, match="input.window.width"):
        input_spec({"size": [4, 4], "window": {"center": 0, "width": 0}})
    with pytest.raises(ValueError, match="input.std"):
        input_spec({"size": [4, 4], "channels": 3, "mean": [0.0], "std": [1.0, 1.0]})
