"""The model registry, and one shared check run on every network it holds: built by name, a forward pass at a small
side its registry entry says it takes, ONNX export (checked against TensorRT's ONNX operator list) and parity with
ONNX Runtime, in every scoring mode it has. A network added to the registry is checked here without editing this
file; only a smaller config to keep it fast on a CPU may be worth adding to ``SMALL``."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from engines.models import (
    CLASSIFICATION_MODELS,
    MODEL_NAMES,
    MODELS,
    SEGMENTATION_MODELS,
    ModelSpec,
    Sides,
    Task,
    model_spec,
    register,
)
from inspection_core.preprocess import InputSpec

SMALL = {"gr": {"backbone": "resnet18", "label_dim": 16, "proj_dim": 16}}  # defaults elsewhere
ABLATIONS = [("bffn", {"use_sam": False, "fusion": "sum"}), ("bffn", {"fusion": "concat"})]  # Table 4's variants
SMALL_SIDE = 64  # each network runs at its smallest exportable side of at least this
NUM_CLASSES = 3


def _cases():
    for name, spec in MODELS.items():
        for mode in spec.modes:
            yield pytest.param(name, SMALL.get(name, {}), mode, id=f"{name}-{mode}" if spec.has_modes else name)
    for name, config in ABLATIONS:
        yield pytest.param(name, config, "batch", id=f"{name}-" + "-".join(f"{k}={v}" for k, v in config.items()))


# ----------------------------------------------------------------------------------------------- the registry


class TestRegistry:
    def test_lists_every_network_by_task(self):
        assert SEGMENTATION_MODELS == ("bffn", "fcn", "unet", "deeplabv3plus", "bisenet")
        assert CLASSIFICATION_MODELS == ("gr", "resnet50", "vgg16", "inceptionv3")
        assert MODEL_NAMES == tuple(MODELS) == SEGMENTATION_MODELS + CLASSIFICATION_MODELS
        assert all(model_spec(n).task is Task.SEGMENTATION for n in SEGMENTATION_MODELS)

    def test_declares_what_each_network_can_do(self):
        assert model_spec("gr").modes == ("batch", "bank") and model_spec("gr").pretrains
        assert not any(MODELS[n].has_modes or MODELS[n].pretrains for n in MODEL_NAMES if n != "gr")
        assert model_spec("bffn").sides.accepts(96) and not model_spec("bffn").sides.accepts(100)
        assert model_spec("inceptionv3").sides.smallest() == 75
        vgg = model_spec("vgg16")
        assert vgg.sides.accepts(64) and not vgg.onnx_sides.accepts(64) and vgg.onnx_sides.accepts(448)
        assert [model_spec(n).channels[0] for n in ("bffn", "gr")] == [1, 3]

    def test_says_which_sides_would_work(self):
        with pytest.raises(ValueError, match="not a multiple of 32 .*try 96 or 128"):
            model_spec("unet").check_side(100)
        with pytest.raises(ValueError, match="at least 75 px"):
            model_spec("inceptionv3").check_side(64)
        with pytest.raises(ValueError, match="224·k to 224·k\\+31 px, not 300.*try 224 or 448"):
            model_spec("vgg16").check_side(300, export=True)
        with pytest.raises(ValueError, match="unknown model 'alexnet'; known models: bffn, fcn"):
            model_spec("alexnet")

    def test_refuses_a_name_twice(self):
        with pytest.raises(ValueError, match="registered already"):
            register(ModelSpec("bffn", Task.SEGMENTATION, "", "engines.models.bffn", "BFFNConfig", "BFFN"))
        assert Sides(224, multiple=7, stride=32).nearest(500) == [448, 672]

    def test_metadata_and_the_command_import_no_torch(self):
        code = ("import sys, engines.models, engines.cli; "
                "print(sorted(m for m in ('torch', 'torchvision', 'onnxruntime') if m in sys.modules))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip() == "[]"

    def test_the_command_offers_the_registered_networks(self):
        from engines.cli import build_parser

        parser = build_parser()
        for name in MODEL_NAMES:
            assert parser.parse_args(["train", name, "--data", "d", "--out", "o"]).model == name
        with pytest.raises(SystemExit):
            parser.parse_args(["train", "alexnet", "--data", "d", "--out", "o"])


# ---------------------------------------------------------------------------------- every registered network


@pytest.mark.slow
class TestEveryRegisteredNetwork:
    """build → forward at a valid small side → ONNX export → ONNX Runtime parity, for each entry and mode."""

    @pytest.mark.parametrize("name, config, mode", list(_cases()))
    def test_builds_runs_exports_and_matches_onnxruntime(self, name, config, mode, tmp_path, one_torch_thread):
        import onnxruntime as ort
        import torch

        from engines.export import INPUT_NAME, export_onnx, inference_module
        from engines.models import build_model
        from engines.onnx_check import check_onnx
        from engines.weights import resolve_weights, save_weights

        spec = model_spec(name)
        side = spec.onnx_sides.smallest(at_least=SMALL_SIDE)
        channels = spec.channels[0]
        torch.manual_seed(0)
        model = build_model(name, {"num_classes": NUM_CLASSES, "in_channels": channels, **config}).eval()
        x = torch.randn(2, channels, side, side)
        if mode == "bank":  # a bank of label-level features, as training stores one
            with torch.no_grad():
                model.set_reference_bank(model.label_features(torch.randn(3, channels, side, side)))
        with torch.no_grad():
            logits = model(x)
            expected = inference_module(model, spec.task.value, mode)(x).numpy()
        want = (2, NUM_CLASSES, side, side) if spec.task is Task.SEGMENTATION else (2, NUM_CLASSES)
        assert tuple(logits.shape) == want and torch.isfinite(logits).all()

        weights = save_weights(model, tmp_path / "w", name, model.config.to_dict(),
                               InputSpec(channels=channels).to_dict(), side, {}, half=False)
        # VGG-16 is exported without its 0.5 GB of weights: the same graph and operators; its parameters are fed
        # to ONNX Runtime as inputs below.
        big = sum(p.numel() for p in model.parameters()) > 50_000_000
        path = export_onnx(resolve_weights(weights), tmp_path / f"{name}.onnx", mode=mode, with_weights=not big)
        report = check_onnx(path, tensorrt=True)
        assert report["unsupported_tensorrt_ops"] == {}
        assert report["inputs"][0]["shape"][0] == "batch" and len(report["outputs"]) == 1

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {INPUT_NAME: x.numpy()}
        if big:
            state = {k: v.numpy() for k, v in inference_module(model, spec.task.value, mode).state_dict().items()}
            feed.update({i.name: state[i.name] for i in session.get_inputs() if i.name != INPUT_NAME})
        (got,) = session.run(None, feed)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-3)
