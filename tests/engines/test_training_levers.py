"""What issue 12 adds to training: three-way splits, class-balanced and hard-negative sampling, prefetched batches,
backbone transfer between networks, and decision rules learned on a validation part."""
from __future__ import annotations

import json
from collections import Counter

import cv2
import numpy as np
import pytest

from engines.data.segmentation import SegSample, TileSampler, load_dataset, three_way_split
from tests.engines.test_data_train import make_generic_set


def _samples(counts: dict, size=(96, 96), seed=0) -> list[SegSample]:
    """Synthetic samples: ``counts`` images per class (``None`` = defect-free), a bright square on defects."""
    rng = np.random.default_rng(seed)
    out = []
    for category, n in counts.items():
        for i in range(n):
            image = rng.normal(100, 5, size).clip(0, 255).astype(np.uint8)
            mask = np.zeros(size, bool)
            if category is not None:
                mask[30:50, 30:50] = True
                image[mask] = 220
            out.append(SegSample(f"{category or 'free'}/{i}.png", image, mask, category))
    return out


def test_three_way_split_is_stratified_disjoint_and_repeatable():
    samples = _samples({None: 60, "crack": 20, "fray": 10})
    split = three_way_split(samples, validation=0.2, holdout=0.2, seed=4)
    parts = [set(split[p]) for p in ("train", "validation", "holdout")]
    assert sum(map(len, parts)) == 90 and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    for name in ("validation", "holdout"):
        counts = Counter(n.split("/")[0] for n in split[name])
        assert counts == {"free": 12, "crack": 4, "fray": 2}, (name, counts)
    assert three_way_split(samples, 0.2, 0.2, seed=4) == split
    assert three_way_split(samples, 0.2, 0.2, seed=5) != split


def test_three_way_split_can_keep_an_earlier_training_part():
    samples = _samples({None: 40, "crack": 10})
    earlier = {"train": [s.name for s in samples[:30]] + [s.name for s in samples[40:48]],
               "holdout": [s.name for s in samples[30:40]] + [s.name for s in samples[48:]]}
    split = three_way_split(samples, validation=0.1, holdout=0.1, seed=0, keep=earlier)
    assert set(split["train"]) == set(earlier["train"])
    assert set(split["validation"]) | set(split["holdout"]) == set(earlier["holdout"])
    assert Counter(n.split("/")[0] for n in split["validation"]) == {"free": 5, "crack": 1}


def test_three_way_split_refuses_parts_that_leave_nothing_to_train():
    with pytest.raises(ValueError, match="less than 1"):
        three_way_split(_samples({None: 4}), validation=0.5, holdout=0.5, seed=0)


def test_class_balanced_sampling_shows_a_rare_class_as_often_as_a_common_one():
    samples = _samples({"blowhole": 30, "crack": 2})
    rng_counts = Counter()
    sampler = TileSampler(samples, tile=64, defect_fraction=1.0, seed=0, augment=False, class_balanced=True)
    for _ in range(600):
        rng_counts[samples[sampler._defect_image()].category] += 1
    assert 0.4 < rng_counts["crack"] / 600 < 0.6, rng_counts
    plain = TileSampler(samples, tile=64, defect_fraction=1.0, seed=0, augment=False)
    plain_crack = sum(samples[plain._defect_image()].category == "crack" for _ in range(600)) / 600
    assert plain_crack < 0.15, "without balancing the rare class is drawn in proportion to its images"


def test_hard_negatives_are_drawn_at_their_fraction_and_by_score():
    samples = _samples({None: 4, "crack": 2}, size=(128, 128))
    samples[1].image[:64, 64:] = 255  # a bright patch the pool points at: (sample 1, y0 0, x0 64)
    pool = [(1, 0, 64, 0.9), (2, 64, 0, 1e-9)]
    sampler = TileSampler(samples, tile=64, defect_fraction=0.0, seed=1, augment=False, overlap=0,
                          hard_fraction=0.5, hard_negatives=pool)
    tiles, masks = sampler.batch(400)
    bright = np.mean([t.mean() > 250 for t in tiles])
    assert 0.4 < bright < 0.6, bright
    assert not masks[[t.mean() > 250 for t in tiles]].any(), "the mined tile carries its (empty) mask"


def test_sampler_without_the_new_options_gives_the_same_crops_as_before():
    samples = _samples({None: 3, "crack": 3}, size=(128, 128))
    a = TileSampler(samples, tile=64, defect_fraction=0.5, seed=3, overlap=16)
    b = TileSampler(samples, tile=64, defect_fraction=0.5, seed=3, overlap=16, class_balanced=False,
                    hard_fraction=0.3, hard_negatives=[])  # an empty pool draws nothing extra
    for _ in range(3):
        ta, ma = a.batch(8)
        tb, mb = b.batch(8)
        np.testing.assert_array_equal(ta, tb)
        np.testing.assert_array_equal(ma, mb)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_prefetched_batches_are_exactly_the_sequential_ones(prefetch):
    samples = _samples({None: 3, "crack": 3}, size=(128, 128))
    expected = TileSampler(samples, tile=64, seed=9, overlap=16)
    got = list(TileSampler(samples, tile=64, seed=9, overlap=16).batches(4, 5, prefetch=prefetch))
    assert len(got) == 5
    for tiles, masks in got:
        want_tiles, want_masks = expected.batch(4)
        np.testing.assert_array_equal(tiles, want_tiles)
        np.testing.assert_array_equal(masks, want_masks)


def test_prefetch_hands_a_sampling_error_to_the_consumer():
    sampler = TileSampler(_samples({"crack": 2}), tile=64, seed=0)

    def broken(size):
        raise RuntimeError("augmentation broke")

    sampler.batch = broken
    with pytest.raises(RuntimeError, match="augmentation broke"):
        list(sampler.batches(4, 3, prefetch=2))


def test_backbone_moves_from_an_rgb_classifier_to_a_grey_segmenter():
    import torch

    from engines.models import build_model
    from engines.models.backbone_transfer import BackboneTransferError, backbone_state, load_backbone

    torch.manual_seed(0)
    gr = build_model("gr", {"backbone": "resnet18", "in_channels": 3, "num_classes": 3})
    bffn = build_model("bffn", {"in_channels": 1})
    report = load_backbone(bffn, backbone_state(gr))
    assert report["adapted"] == ["conv1.weight"] and report["loaded"] > 100
    torch.testing.assert_close(bffn.stem[0].weight, gr.backbone[0].weight.sum(1, keepdim=True))
    torch.testing.assert_close(bffn.layer3[1].conv2.weight, gr.backbone[6][1].conv2.weight)
    torch.testing.assert_close(bffn.stem[1].running_var, gr.backbone[1].running_var)
    grey = torch.rand(1, 1, 64, 64)  # a grey image fed to all three channels: the same first-layer response
    torch.testing.assert_close(bffn.stem[0](grey), gr.backbone[0](grey.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-5)
    deeper = build_model("bffn", {"in_channels": 1, "backbone": "resnet34"})
    with pytest.raises(BackboneTransferError, match="same ResNet depth"):
        load_backbone(deeper, backbone_state(bffn))
    unet = build_model("unet", {"in_channels": 1})
    load_backbone(unet, backbone_state(bffn))
    torch.testing.assert_close(unet.net.encoder.layer4[0].conv1.weight, bffn.layer4[0].conv1.weight)


def test_backbone_learning_rate_of_its_own():
    import torch

    from engines.models import build_model
    from engines.train import make_optimizer, parameter_groups

    bffn = build_model("bffn", {"in_channels": 1})
    groups = parameter_groups(bffn, 1e-3, 0.1)
    backbone = {id(p) for p in groups[0]["params"]}
    assert id(bffn.stem[0].weight) in backbone and id(bffn.layer4[1].conv2.weight) in backbone
    assert id(bffn.classifier.weight) not in backbone and id(bffn.classifier.weight) in {
        id(p) for p in groups[1]["params"]}
    assert sum(len(g["params"]) for g in groups) == len(list(bffn.parameters())), "every parameter, once"
    optimizer = make_optimizer("adam", groups, 1e-3)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1e-4, 1e-3])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    optimizer.step()  # no gradients: nothing moves, but the schedule may now step
    schedule.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([5e-5, 5e-4]), "the decay scales both"
    assert len(parameter_groups(bffn, 1e-3, 1.0)) == 1
    with pytest.raises(ValueError, match="--backbone-lr: .* has no ResNet backbone"):
        parameter_groups(torch.nn.Linear(2, 2), 1e-3, 0.1)


def test_fused_adam_takes_the_steps_of_the_for_loop_adam_and_resumes_its_state():
    """The trainer's Adam is torch's fused kernel (a faster step, docs/BENCHMARKS.md); given the same gradients it
    must take the for-loop Adam's steps, and resume from a checkpoint the for-loop Adam wrote. (The gradients are
    shared because two backward passes on 2 threads differ in their last bits, which Adam's normalisation blows up
    on near-zero gradients.)"""
    import copy
    import io

    import torch

    from engines.models import build_model
    from engines.train import make_optimizer, parameter_groups, segmentation_loss
    from engines.training import load_optimizer_state

    torch.manual_seed(3)
    start = build_model("bffn", {"in_channels": 1}).train()
    x, y = torch.randn(2, 1, 64, 64), (torch.rand(2, 64, 64) > 0.9).long()
    criterion = segmentation_loss("ce+dice")
    nets = {kind: copy.deepcopy(start) for kind in ("loop", "fused", "resumed")}
    opts = {kind: make_optimizer("adam", parameter_groups(net, 1e-3, 0.1), 1e-3, fused=kind != "loop")
            for kind, net in nets.items()}
    assert opts["fused"].defaults["fused"] and not opts["loop"].defaults["fused"]

    def step(kinds):
        """One backward on the for-loop net; its gradients go to every net in ``kinds``, which then steps."""
        loop = nets["loop"]
        loop.zero_grad(set_to_none=True)
        principal, *aux = loop(x)
        (criterion(principal, y) + sum(criterion(a, y) for a in aux)).backward()
        grads = [p.grad.clone() for p in loop.parameters()]
        for kind in kinds:
            for p, g in zip(nets[kind].parameters(), grads):
                p.grad = g.clone()
            opts[kind].step()

    for _ in range(2):
        step(["loop", "fused"])
    # a run checkpointed by the for-loop Adam and resumed the way `engines train` resumes, on the fused kernel
    checkpoint = io.BytesIO()
    torch.save({"model": nets["loop"].state_dict(), "optimizer": opts["loop"].state_dict()}, checkpoint)
    checkpoint.seek(0)
    saved = torch.load(checkpoint)
    nets["resumed"].load_state_dict(saved["model"])
    load_optimizer_state(opts["resumed"], saved["optimizer"])
    assert opts["resumed"].param_groups[0]["fused"], "the resumed run keeps the fused kernel"
    step(["loop", "fused", "resumed"])
    with torch.no_grad():
        reference = dict(nets["loop"].named_parameters())
        moved = max(float((p - q).abs().max()) for p, q in zip(reference.values(), start.parameters()))
        assert moved > 1e-3, "three Adam steps at 1e-3 must move the weights"
        for kind in ("fused", "resumed"):
            gap = max(float((p - reference[n]).abs().max()) for n, p in nets[kind].named_parameters())
            assert gap < 1e-6, (kind, gap)
    assert not make_optimizer("rmsprop", start.parameters(), 1e-3).defaults.get("fused")


def test_mining_returns_only_tiles_of_defect_free_images_above_the_threshold():
    import torch

    from engines.models import build_model
    from inspection_core.preprocess import InputSpec
    from engines.train import TrainSettings, mine_hard_negatives

    torch.manual_seed(0)
    samples = _samples({None: 2, "crack": 2}, size=(128, 160))
    model = build_model("bffn", {"in_channels": 1})
    settings = TrainSettings(tile=64, overlap=16, mine_threshold=0.0)
    found = mine_hard_negatives(model, samples, settings, InputSpec(), torch.device("cpu"))
    assert {k for k, *_ in found} == {0, 1}, "every tile of the defect-free images, none of the defective ones"
    assert len(found) == 2 * 9  # 128x160 with tile 64, overlap 16: 3 x 3 tiles
    assert all(0.0 <= score <= 1.0 for *_, score in found)
    settings.mine_threshold = 1.01
    assert mine_hard_negatives(model, samples, settings, InputSpec(), torch.device("cpu")) == []
    assert model.training, "mining leaves the model in the mode it found it"


@pytest.mark.slow
def test_training_with_split_transfer_and_hard_negatives_records_everything(tmp_path, untrained_bffn):
    from engines.train import TrainSettings, train_segmentation

    data = make_generic_set(tmp_path / "set", n=8, size=(128, 128))
    samples = load_dataset(data)
    split = three_way_split(samples, validation=0.25, holdout=0.25, seed=0)
    (tmp_path / "split.json").write_text(json.dumps(split))
    settings = TrainSettings(data=str(data), out=str(tmp_path / "run"), epochs=1, steps_per_epoch=2, batch=4,
                             threads=2, split=str(tmp_path / "split.json"), init_backbone=str(untrained_bffn),
                             backbone_lr=0.1, class_balanced=True, hard_negatives=0.25, mine_threshold=0.0, amp=True)
    final = train_segmentation(settings, progress=False)
    assert final["hard_tiles"] > 0 and "best_f1" in final and final["train_tiles_per_s"] > 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    start = config["training"]["start"]
    assert start["init_backbone"] == str(untrained_bffn) and start["source_model"] == "bffn" and start["tensors"] > 100
    assert config["training"]["train_images"] == len(split["train"])
    assert config["training"]["holdout_images"] == len(split["validation"]), "validation judges each epoch"
    written = json.loads((tmp_path / "run" / "split.json").read_text())
    assert written == split, "the run keeps the three-way split it was given"
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()


def test_a_split_that_trains_on_judged_images_is_refused(tmp_path):
    from engines.train import samples_from_split

    samples = _samples({None: 4, "crack": 2})
    bad = {"train": [samples[0].name, samples[1].name], "validation": [samples[1].name], "holdout": []}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="both for training and for judging"):
        samples_from_split(samples, tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"train": ["nope.png"], "validation": []}))
    with pytest.raises(ValueError, match="not in the data folder"):
        samples_from_split(samples, tmp_path / "other.json")


def test_engines_split_keeps_named_frames_out_of_training(tmp_path, capsys):
    from engines.cli import main

    data = make_generic_set(tmp_path / "set", n=20)
    out = tmp_path / "split.json"
    assert main(["split", "--data", str(data), "--out", str(out), "--validation", "0.2", "--holdout", "0.2",
                 "--group-by", "file"]) == 0
    split = json.loads(out.read_text())
    assert split.pop("group_by") == "file"
    assert {k: len(v) for k, v in split.items()} == {"train": 12, "validation": 4, "holdout": 4}
    demo = tmp_path / "demo"
    demo.mkdir()
    cv2.imwrite(str(demo / split["train"][0]), np.zeros((8, 8), np.uint8))
    assert main(["split", "--data", str(data), "--out", str(tmp_path / "x.json"), "--not-train", str(demo),
                 "--group-by", "file"]) == 2
    assert "fall in the training part" in capsys.readouterr().err
    # by part (the default), the named frame's part is dealt to validation or held-out instead
    assert main(["split", "--data", str(data), "--out", str(tmp_path / "y.json"), "--not-train", str(demo)]) == 0
    assert split["train"][0] not in json.loads((tmp_path / "y.json").read_text())["train"]


@pytest.mark.slow
def test_engines_eval_learns_a_rule_over_thresholds_and_areas(tmp_path, untrained_bffn, capsys):
    from engines.cli import main

    data = make_generic_set(tmp_path / "set", n=6, size=(128, 128))
    report = tmp_path / "eval.json"
    assert main(["eval", "--weights", str(untrained_bffn), "--data", str(data), "--learn-min-areas", "10,400",
                 "--threads", "1", "--json", str(report)]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads(report.read_text())
    assert len(saved["rule_sweep"]) == 2 * len(saved["sweep"])
    best = printed["best_rule"]
    assert best["min_area_px"] in (10, 400)
    assert best["f1"] == max(p["f1"] for p in saved["rule_sweep"])


@pytest.mark.slow
def test_training_speed_benchmark_runs_and_reports_every_configuration(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    out = tmp_path / "speed.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_speed.py"), "--steps", "1", "--batch", "2",
                           "--images", "4", "--check-steps", "2", "--threads", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert set(report["configs"]) == {"reference", "channels_last", "channels_last+prefetch",
                                      "channels_last+prefetch+fused", "channels_last+prefetch+fused+bf16",
                                      "channels_last+prefetch+fused+bf16 batch x2"}
    assert report["configs"]["reference"]["speedup_vs_reference"] == 1.0
    for profile in ("reference_profile", "fused_adam_profile"):
        assert sum(p["share"] for p in report[profile].values()) == pytest.approx(1.0, abs=0.01)
    assert len(report["learning_check"]["curves"]["channels_last+prefetch+fused+bf16"]) == 2


def test_curves_read_a_running_log_and_a_finished_config(tmp_path):
    from engines.curves import curve_points, read_history
    from engines.cli import main

    run = tmp_path / "run"
    run.mkdir()
    records = [{"epoch": 1, "step": 500, "loss": 1.0, "f1": 0.5, "best_f1": 0.6, "pixel_iou": 0.1},
               {"epoch": 2, "step": 1000, "loss": 0.9, "f1": 0.55, "best_f1": 0.7, "pixel_iou": 0.2}]
    retried = {**records[1], "f1": 0.58}  # epoch 2 run again after a resume: the later record counts
    (run / "train.log").write_text("".join(f"2026-01-01 00:00:00,000 INFO epoch {json.dumps(r)}\n"
                                           for r in [*records, retried]) + "2026 INFO mined 3 tiles\n")
    history, per_epoch = read_history(run)
    assert per_epoch == 500 and [r["f1"] for r in history] == [0.5, 0.58]
    points = curve_points(history, per_epoch, offset=8000)
    assert points["step"] == [8500, 9000] and points["best_f1"] == [0.6, 0.7]
    assert points["station"] is False  # quick checks: labelled as such on the plot
    assert curve_points([{**r, "judged": "station"} for r in history], per_epoch)["station"] is True
    history, per_epoch = read_history("bffn-magnetic-tile")  # the shipped weights' own record
    assert per_epoch == 500 and len(history) >= 1 and "f1" in history[-1]
    out = tmp_path / "curves.png"
    assert main(["curves", "bffn-magnetic-tile", str(run), "--offset", "0,8000", "--out", str(out),
                 "--json", str(tmp_path / "c.json")]) == 0
    assert cv2.imread(str(out)) is not None
    assert json.loads((tmp_path / "c.json").read_text())[str(run)]["step"] == [8500, 9000]


@pytest.mark.slow
def test_station_validation_during_training_is_what_engines_eval_says_of_the_same_weights(tmp_path, capsys):
    from engines.cli import main
    from engines.data.segmentation import load_dataset
    from engines.evaluate import RULE_MIN_AREAS, evaluate_as_station
    from engines.train import TrainSettings, train_segmentation
    from engines.weights import load_model, resolve_weights

    data = make_generic_set(tmp_path / "set", n=8, size=(128, 128))
    names = sorted(p.name for p in (data / "images").iterdir())
    split = tmp_path / "split.json"  # img0..img7, every other one defective: both parts hold both kinds
    split.write_text(json.dumps({"train": names[:4], "validation": names[4:], "holdout": []}))
    run = tmp_path / "run"
    final = train_segmentation(TrainSettings(data=str(data), out=str(run), epochs=1, steps_per_epoch=2, batch=4,
                                             split=str(split), threads=2, optimizer="adam", lr=1e-3,
                                             validate_as="station"), progress=False)
    assert final["judged"] == "station" and final["tp"] + final["fp"] + final["fn"] + final["tn"] == 4
    assert final["best_min_area_px"] in RULE_MIN_AREAS and 0 <= final["best_f1"] <= 1
    best = json.loads((run / "best" / "config.json").read_text())["training"]["validation"]
    assert best["best_f1"] == final["best_f1"], "best/ is chosen by the station-judged figures"

    # the same judgement of the saved weights, in process and by `engines eval`: the same figures
    bundle = resolve_weights(run)
    samples = [s for s in load_dataset(data) if s.name in names[4:]]
    here = evaluate_as_station(load_model(bundle).eval(), "bffn", samples, bundle.input_spec(), 128, 32)
    report = tmp_path / "eval.json"
    assert main(["eval", "--weights", str(run), "--data", str(data), "--split", str(split), "--split-part",
                 "validation", "--backend", "torch", "--threshold", "0.5", "--min-area", "20", "--overlap", "32",
                 "--learn-min-areas", ",".join(map(str, RULE_MIN_AREAS)), "--threads", "2", "--json",
                 str(report)]) == 0
    capsys.readouterr()
    judged = json.loads(report.read_text())
    learned = judged["best_rule"]  # the rule engines eval learned and reports
    assert (here["best_f1"], here["best_threshold"], here["best_min_area_px"]) == \
           (learned["f1"], learned["threshold"], learned["min_area_px"])
    assert (here["f1"], here["fp"], here["fn"], here["pixel_iou"]) == \
           (judged["f1"], judged["fp"], judged["fn"], judged["pixel_iou"])


def test_the_weight_average_follows_the_weights_with_its_warmed_up_decay_and_can_be_put_in_and_taken_out():
    import torch

    from engines.errors import InputError
    from engines.training import WeightAverage

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(net, 0.9)
    expected = {k: v.clone() for k, v in net.state_dict().items()}
    for n in range(1, 41):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * n)
        net.train()(torch.randn(8, 3))  # batch-norm statistics and its step counter move too
        average.update(net)
        d = min(0.9, (1 + n) / (10 + n))
        for k, v in net.state_dict().items():
            expected[k] = d * expected[k] + (1 - d) * v if v.is_floating_point() else v.clone()
    for k, v in average.weights.items():
        torch.testing.assert_close(v, expected[k], msg=k)
    assert int(average.weights["1.num_batches_tracked"]) == 40
    trained = {k: v.clone() for k, v in net.state_dict().items()}
    assert not torch.equal(trained["0.weight"], average.weights["0.weight"])
    with average.applied(net):
        assert torch.equal(net.state_dict()["0.weight"], average.weights["0.weight"])
    assert all(torch.equal(net.state_dict()[k], v) for k, v in trained.items()), "the trained weights come back"
    again = WeightAverage(net, 0.9)
    again.load_state_dict(average.state_dict())
    assert again.steps == 40 and torch.equal(again.weights["0.bias"], average.weights["0.bias"])
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(InputError, match="--ema"):
            WeightAverage(net, bad)


@pytest.mark.slow
def test_ema_training_validates_saves_and_resumes_the_average(tmp_path, caplog, one_torch_thread):
    """`engines train --ema`: best/ and the written weights are the average, the trained weights go on in the
    checkpoint, and a run killed mid-way goes on, with the same command, from the average it saved."""
    import logging

    import torch

    from engines.train import SegmentationHooks, TrainSettings, train_segmentation
    from engines.training import WeightAverage
    from engines.weights import load_model, resolve_weights

    data = make_generic_set(tmp_path / "set", n=6, size=(128, 128))

    def run(name, epochs, ema=0.9):
        settings = TrainSettings(data=str(data), out=str(tmp_path / name), epochs=epochs, steps_per_epoch=2, batch=4,
                                 holdout=0.34, threads=1, ema=ema, prefetch=0)
        return train_segmentation(settings, progress=False)

    end_epoch = SegmentationHooks.end_epoch

    def stopped(self, stats):  # the run is killed in its second epoch, after the first one's checkpoint
        if stats.epoch == 1:
            raise KeyboardInterrupt
        return end_epoch(self, stats)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SegmentationHooks, "end_epoch", stopped)
        with pytest.raises(KeyboardInterrupt):
            run("ema", 2)
    saved = torch.load(tmp_path / "ema" / "checkpoint.pt", weights_only=True)["ema"]
    assert saved["steps"] == 2
    update, seen = WeightAverage.update, []

    def spied(self, model):
        seen.append((self.steps, {k: v.clone() for k, v in self.weights.items()}))
        update(self, model)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(WeightAverage, "update", spied)
        assert run("ema", 2)["ema"] == 0.9  # the same command resumes, with the average it saved
    steps, first = seen[0]
    assert steps == 2 and all(torch.equal(first[k], v) for k, v in saved["weights"].items())
    state = torch.load(tmp_path / "ema" / "checkpoint.pt", weights_only=True)
    assert state["ema"]["steps"] == 4 and state["ema"]["decay"] == 0.9
    written = load_model(resolve_weights(tmp_path / "ema")).state_dict()  # stored in float16
    for k, v in written.items():
        if v.is_floating_point():
            average, trained = state["ema"]["weights"][k].half().float(), state["model"][k].half().float()
            torch.testing.assert_close(v, average, rtol=0, atol=0, msg=k)
            assert torch.equal(v, trained) or not torch.equal(average, trained), k
    assert sum(not torch.equal(v, state["model"][k].half().float()) for k, v in written.items()
               if v.is_floating_point()) > 10, "the average is written, not the last step's weights"
    history = json.loads((tmp_path / "ema" / "config.json").read_text())["training"]["history"]
    best = json.loads((tmp_path / "ema" / "best" / "config.json").read_text())["training"]
    assert [h["ema"] for h in history] == [0.9, 0.9] and best["settings"]["ema"] == 0.9
    assert best["epoch"] == 2, "this small run does best in its last epoch"
    kept = load_model(resolve_weights(tmp_path / "ema" / "best")).state_dict()
    assert all(torch.equal(v, written[k]) for k, v in kept.items()), "best/ holds the average, as validated"
    with caplog.at_level(logging.WARNING, logger="engines.train"):
        run("ema", 3, ema=0.0)
    assert "kept a weight average (--ema 0.9)" in caplog.text
