"""ONNX export and the backends behind one interface: same tensors in, same probabilities out."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from engines.backends.base import load_engine
from engines.errors import BackendUnavailable, EngineError
from engines.export import INPUT_NAME, export_onnx
from engines.weights import WeightsError, resolve_weights
from inspection_core.preprocess import InputSpec, defect_scores, normalize_tiles


@pytest.fixture(scope="module")
def engines_pair(untrained_bffn):
    ort_engine = load_engine(untrained_bffn, "onnxruntime", threads=2)
    torch_engine = load_engine(untrained_bffn, "torch", threads=2)
    yield ort_engine, torch_engine
    ort_engine.close()
    torch_engine.close()


def test_export_has_dynamic_batch_and_passes_the_checker(untrained_bffn, tmp_path):
    path = export_onnx(resolve_weights(untrained_bffn), tmp_path / "bffn.onnx")
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert model.graph.input[0].name == INPUT_NAME
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, 128, 128]
    assert len(model.graph.output) == 1, "auxiliary heads must not be exported"


def test_export_refuses_a_tile_the_backbone_cannot_take(untrained_bffn, tmp_path):
    with pytest.raises(ValueError, match="multiple of 32"):
        export_onnx(resolve_weights(untrained_bffn), tmp_path / "x.onnx", tile=100)


@pytest.mark.parametrize("batch", [1, 5])
def test_onnxruntime_matches_torch_on_real_looking_tiles(engines_pair, batch):
    ort_engine, torch_engine = engines_pair
    rng = np.random.default_rng(batch)
    tiles = rng.integers(0, 256, (batch, 128, 128), dtype=np.uint8)
    x = normalize_tiles(tiles, ort_engine.spec)
    a, b = ort_engine.infer(x), torch_engine.infer(x)
    assert a.shape == b.shape == (batch, 2, 128, 128)
    np.testing.assert_allclose(a.sum(1), 1.0, atol=1e-4)
    np.testing.assert_allclose(a, b, atol=2e-4)
    assert ort_engine.engine_id.split("@")[0] == torch_engine.engine_id.split("@")[0]


def test_wrong_batch_shape_says_what_to_cut(engines_pair):
    ort_engine, _ = engines_pair
    with pytest.raises(ValueError, match="cut tiles of 128 px"):
        ort_engine.infer(np.zeros((2, 1, 96, 96), np.float32))
    with pytest.raises(ValueError, match="float32"):
        ort_engine.infer(np.zeros((2, 1, 128, 128), np.float64))


def test_corrupt_onnx_file_gives_a_clear_error(tmp_path):
    from engines.backends.onnxruntime_backend import OnnxRuntimeEngine

    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(EngineError, match="cannot load .*Rebuild it with `engines build`"):
        OnnxRuntimeEngine(bad, "bffn", "0" * 64, InputSpec(), 128, threads=1)


def test_missing_weights_and_unknown_backend_are_explained(untrained_bffn, tmp_path):
    with pytest.raises(WeightsError, match="engines train"):
        load_engine(tmp_path / "nothing-here")
    with pytest.raises(BackendUnavailable, match="onnxruntime"):
        load_engine(untrained_bffn, "openvino")


def test_preprocessing_is_shared_and_checked():
    spec = InputSpec(channels=1, mean=0.5, std=0.25)
    x = normalize_tiles(np.full((2, 4, 4), 255, np.uint8), spec)
    assert x.shape == (2, 1, 4, 4) and x.flags.c_contiguous and np.allclose(x, 2.0)
    with pytest.raises(ValueError, match="channels"):
        normalize_tiles(np.zeros((2, 4, 4, 3), np.uint8), spec)
    probs = np.zeros((1, 3, 2, 2), np.float32)
    probs[0, 0] = 0.25
    assert np.allclose(defect_scores(probs), 0.75)


# Every registered network's export, checked against TensorRT's operator list and ONNX Runtime: test_registry.py.


def test_an_export_the_exporter_cannot_make_is_explained(tmp_path, one_torch_thread):
    from engines.models import build_model
    from engines.weights import save_weights

    model = build_model("vgg16", {"num_classes": 2}).eval()
    weights = save_weights(model, tmp_path / "w", "vgg16", {"num_classes": 2}, InputSpec(channels=3).to_dict(), 64,
                           {}, half=False)
    with pytest.raises(EngineError, match="vgg16 cannot be exported to ONNX at 64 px .*input sides of 224"):
        export_onnx(resolve_weights(weights), tmp_path / "v.onnx", with_weights=False)
    assert not list(tmp_path.glob("*.onnx"))
