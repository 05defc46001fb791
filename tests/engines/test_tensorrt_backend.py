"""The TensorRT backend: without TensorRT (every CPU machine) it imports, and every entry point says what is missing
and which backends this machine has; with TensorRT and a GPU, a real build and inference of a tiny network."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import warnings

import numpy as np
import pytest

from engines.backends.gpu import gpu_info
from engines.backends.tensorrt_backend import TensorRTEngine, available_backends, import_tensorrt, tensorrt_version
from engines.backends.tensorrt_build import atomic_write, build_engine
from engines.errors import BackendUnavailable, EngineError
from inspection_core.preprocess import InputSpec

TRT_INSTALLED = importlib.util.find_spec("tensorrt") is not None
no_tensorrt = pytest.mark.skipif(TRT_INSTALLED, reason="tensorrt is installed here; these tests are for its absence")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """A tiny segmentation-like network (conv → relu → conv → softmax over 2 classes), exported the way
    engines/export.py exports: opset 17, dynamic batch, TorchScript exporter."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1),
                              torch.nn.Softmax(dim=1)).eval()
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter, as engines/export.py uses
        torch.onnx.export(net, (torch.zeros(2, 1, 32, 32),), str(path), input_names=["tiles"],
                          output_names=["probabilities"], opset_version=17, dynamo=False,
                          dynamic_axes={"tiles": {0: "batch"}, "probabilities": {0: "batch"}})
    return path


def test_importing_the_module_does_not_import_tensorrt_or_torch():
    code = ("import sys, engines.backends.tensorrt_backend, engines.backends.tensorrt_build, engines.backends.gpu, "
            "engines.onnx_check; "
            "print(sorted(m for m in ('tensorrt', 'torch', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_available_backends_lists_what_this_machine_has():
    import onnxruntime
    import torch

    found = available_backends()
    assert found[:1] == ["onnxruntime:cpu"] and "torch:cpu" in found
    assert ("onnxruntime:cuda" in found) == ("CUDAExecutionProvider" in onnxruntime.get_available_providers())
    assert ("torch:cuda" in found) == torch.cuda.is_available()
    assert ("tensorrt:cuda" in found) == (tensorrt_version() is not None and torch.cuda.is_available()
                                          and tensorrt_version().startswith("10."))


@no_tensorrt
def test_without_tensorrt_the_version_is_none_and_import_explains():
    assert tensorrt_version() is None
    with pytest.raises(BackendUnavailable) as caught:
        import_tensorrt()
    message = str(caught.value)
    assert "TensorRT is not installed" in message and "pip install" in message and ">=10,<11" in message
    assert "onnxruntime:cpu" in message and "--backend onnxruntime" in message


@no_tensorrt
def test_without_tensorrt_build_engine_explains(tiny_onnx, tmp_path):
    with pytest.raises(BackendUnavailable, match="(?s)not installed.*--backend onnxruntime"):
        build_engine(tiny_onnx, tmp_path / "tiny.engine", input_name="tiles", input_shape=(1, 32, 32),
                     batch=(1, 2, 4), precision="fp16", timing_cache=tmp_path / "timing.cache")
    assert not (tmp_path / "tiny.engine").exists() and not (tmp_path / "timing.cache").exists()


@no_tensorrt
def test_without_tensorrt_the_engine_explains(tmp_path):
    with pytest.raises(BackendUnavailable, match="(?s)not installed.*onnxruntime"):
        TensorRTEngine(tmp_path / "bffn.engine", "bffn", "0" * 64, InputSpec(), 128, precision="fp16")


def test_build_arguments_are_checked_before_anything_is_loaded(tiny_onnx, tmp_path):
    common = dict(input_name="tiles", input_shape=(1, 32, 32))
    with pytest.raises(ValueError, match="precision 'fp8'"):
        build_engine(tiny_onnx, tmp_path / "x.engine", batch=(1, 2, 4), precision="fp8", **common)
    with pytest.raises(ValueError, match="1:8:32"):
        build_engine(tiny_onnx, tmp_path / "x.engine", batch=(4, 2, 8), **common)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        build_engine(tiny_onnx, tmp_path / "x.engine", input_name="tiles", input_shape=(32, 32), batch=(1, 2, 4))
    with pytest.raises(FileNotFoundError, match="engines export"):
        build_engine(tmp_path / "absent.onnx", tmp_path / "x.engine", batch=(1, 2, 4), **common)
    with pytest.raises(EngineError, match="INT8 engine needs calibration data"):
        build_engine(tiny_onnx, tmp_path / "x.engine", batch=(1, 2, 4), precision="int8", **common)


def test_engine_files_are_written_atomically(tmp_path):
    target = tmp_path / "sub" / "x.engine"
    assert atomic_write(target, b"abc") == 3
    assert atomic_write(target, memoryview(b"defg")) == 4
    assert target.read_bytes() == b"defg"
    assert [p.name for p in target.parent.iterdir()] == ["x.engine"]


def test_gpu_info_describes_the_gpu_or_is_none():
    info = gpu_info()
    if not _cuda():
        assert info is None
        return
    assert set(info) >= {"name", "compute_capability", "driver_version", "cuda_runtime", "memory_mib"}
    major, minor = info["compute_capability"].split(".")
    assert major.isdigit() and minor.isdigit()


# ------------------------------------------------------------------------------------------------------------------
# A real TensorRT build and inference: runs only where TensorRT and an NVIDIA GPU are both present.


@pytest.fixture(scope="module")
def real_tensorrt():
    if not TRT_INSTALLED:
        pytest.skip('TensorRT is not installed (pip install "tensorrt-cu13>=10,<11" on a machine with an NVIDIA GPU)')
    if not _cuda():
        pytest.skip("TensorRT is installed, but torch sees no CUDA device")
    return import_tensorrt()


@pytest.mark.gpu
@pytest.mark.slow
def test_real_build_and_infer_match_onnxruntime(real_tensorrt, tiny_onnx, tmp_path):
    import onnxruntime as ort

    cache = tmp_path / "timing.cache"
    info = build_engine(tiny_onnx, tmp_path / "tiny-fp32.engine", input_name="tiles", input_shape=(1, 32, 32),
                        batch=(1, 4, 8), precision="fp32", timing_cache=cache)
    assert info["engine_bytes"] == (tmp_path / "tiny-fp32.engine").stat().st_size > 0
    assert info["timing_cache_bytes"] == cache.stat().st_size and not info["timing_cache_loaded"]
    assert info["batch"] == {"min": 1, "opt": 4, "max": 8} and info["tensorrt"].startswith("10.")

    x = np.random.default_rng(0).standard_normal((5, 1, 32, 32)).astype(np.float32)
    expected = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"]).run(None, {"tiles": x})[0]
    engine = TensorRTEngine(tmp_path / "tiny-fp32.engine", "tiny", "0" * 64, InputSpec(), 32, precision="fp32")
    try:
        assert engine.batch_profile == (1, 4, 8)
        np.testing.assert_allclose(engine.infer(x), expected, atol=1e-4)
        np.testing.assert_allclose(engine.infer(x[:1]), expected[:1], atol=1e-4)  # a new input shape
        with pytest.raises(EngineError, match="engines build --batch 1:4:9"):
            engine.infer(np.zeros((9, 1, 32, 32), np.float32))
    finally:
        engine.close()

    info16 = build_engine(tiny_onnx, tmp_path / "tiny-fp16.engine", input_name="tiles", input_shape=(1, 32, 32),
                          batch=(1, 4, 8), precision="fp16", timing_cache=cache)
    assert info16["timing_cache_loaded"]
    engine16 = TensorRTEngine(tmp_path / "tiny-fp16.engine", "tiny", "0" * 64, InputSpec(), 32, precision="fp16")
    try:
        np.testing.assert_allclose(engine16.infer(x), expected, atol=1e-2)
    finally:
        engine16.close()


@pytest.mark.gpu
@pytest.mark.slow
def test_real_int8_build_calibrates_and_reuses_its_cache(real_tensorrt, tiny_onnx, tmp_path):
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal((4, 1, 32, 32)).astype(np.float32) for _ in range(4)]
    calibration = tmp_path / "calibration.cache"
    info = build_engine(tiny_onnx, tmp_path / "tiny-int8.engine", input_name="tiles", input_shape=(1, 32, 32),
                        batch=(1, 4, 8), precision="int8", calibration_batches=lambda: iter(batches),
                        calibration_cache=calibration)
    assert info["calibration"]["batches"] == 4 and calibration.stat().st_size > 0
    again = build_engine(tiny_onnx, tmp_path / "tiny-int8b.engine", input_name="tiles", input_shape=(1, 32, 32),
                         batch=(1, 4, 8), precision="int8", calibration_cache=calibration)
    assert again["engine_bytes"] > 0


@pytest.mark.gpu
def test_real_engine_from_elsewhere_asks_for_a_rebuild(real_tensorrt, tmp_path):
    bad = tmp_path / "other-gpu.engine"
    bad.write_bytes(b"not an engine built here")
    with pytest.raises(EngineError, match="engines build"):
        TensorRTEngine(bad, "tiny", "0" * 64, InputSpec(), 32)
