"""Training-step speed of `engines train bffn` on this machine: the landed step against the faster settings,
taking turns step by step in one run (so a busy machine slows them alike), with a breakdown of where the time
goes and a check that the faster step learns what the reference step learns.

Each configuration runs :func:`engines.train.training_step` — the step `engines train` runs — on batches from
:class:`engines.data.segmentation.TileSampler` over the real magnetic-tile images (or a synthetic set when
``../shared/data`` is absent):

* ``reference``: as landed before issue 12: float32, NCHW, tiles cut in the loop;
* ``channels_last``: NHWC tensors (the same arithmetic);
* ``channels_last+prefetch``: and the batches cut by a background thread (the same batches);
* ``channels_last+prefetch+fused``: and Adam on torch's fused kernel (the same update, up to float rounding;
  ``engines.train.make_optimizer`` since 2026-12-01);
* ``channels_last+prefetch+fused+bf16``: and the forward under bfloat16 autocast (``--amp``; this CPU has
  AVX512-BF16): what ``engines train --amp`` runs;
* ``... batch x2``: the same with twice the tiles per step, which is *not* the same learning per step (given for
  scale: per-tile throughput still rises with the batch on these cores).

The learning check trains two copies of one initial network on the same batches, float32 against bf16 autocast,
for ``--check-steps`` steps, and reports both loss curves and the largest relative gap between them.

    .venv/bin/python benchmarks/train_speed.py --steps 30 --json docs/results/train-speed.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inspection_core.defaults import DEFAULT_OVERLAP  # noqa: E402

CONFIGS = {
    "reference": {"channels_last": False, "prefetch": 0, "amp": False, "fused": False},
    "channels_last": {"channels_last": True, "prefetch": 0, "amp": False, "fused": False},
    "channels_last+prefetch": {"channels_last": True, "prefetch": 2, "amp": False, "fused": False},
    "channels_last+prefetch+fused": {"channels_last": True, "prefetch": 2, "amp": False, "fused": True},
    "channels_last+prefetch+fused+bf16": {"channels_last": True, "prefetch": 2, "amp": True, "fused": True},
    # twice the tiles per step: not the same learning per step (fewer, larger steps; the lr would be scaled)
    "channels_last+prefetch+fused+bf16 batch x2": {"channels_last": True, "prefetch": 2, "amp": True, "fused": True,
                                                   "batch_scale": 2},
}
EXACT = "channels_last+prefetch+fused"  # the fastest step that learns what the reference step learns


def load_samples(limit: int):
    from engines.data.segmentation import load_dataset

    data = REPO.parent / "shared" / "data" / "magnetic-tile"
    if data.is_dir():
        samples = load_dataset(data)
        step = max(1, len(samples) // limit)
        return samples[::step][:limit], str(data)
    import tempfile

    from tests.engines.test_data_train import make_generic_set

    root = make_generic_set(Path(tempfile.mkdtemp()) / "set", n=limit, size=(256, 256))
    return load_dataset(root), "synthetic (../shared/data absent)"


def make_runner(name: str, options: dict, samples, batch: int, seed: int):
    """A closure that runs one timed step of configuration ``name``; its network starts from seed ``seed``."""
    import torch

    from engines.data.segmentation import TileSampler
    from engines.models import build_model
    from inspection_core.preprocess import InputSpec
    from engines.train import StepParts, make_optimizer, segmentation_loss, training_step

    torch.manual_seed(seed)
    model = build_model("bffn", {"in_channels": 1}).train()
    if options["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer("adam", model.parameters(), 1e-3, fused=options["fused"])
    parts = StepParts(InputSpec(), torch.device("cpu"), segmentation_loss("ce"), 1.0, optimizer,
                      torch.amp.GradScaler("cuda", enabled=False), torch.bfloat16 if options["amp"] else None,
                      options["channels_last"])
    sampler = TileSampler(samples, 128, 0.5, seed=seed, overlap=DEFAULT_OVERLAP)
    batch = batch * options.get("batch_scale", 1)
    stream = sampler.batches(batch, 10 ** 9, prefetch=options["prefetch"])
    times = {"sample": [], "step": [], "total": []}

    def run() -> float:
        t0 = time.perf_counter()
        tiles, masks = next(stream)
        t1 = time.perf_counter()
        value = training_step(model, tiles, masks, parts)
        t2 = time.perf_counter()
        times["sample"].append(t1 - t0)
        times["step"].append(t2 - t1)
        times["total"].append(t2 - t0)
        return value

    return run, times, model


def profile_step(samples, batch: int, fused: bool = False) -> dict:
    """Seconds per float32 NCHW step in forward, backward and optimizer (the for-loop Adam of the reference, or the
    fused one), and per batch in sampling."""
    import torch

    from engines.data.segmentation import TileSampler
    from engines.models import build_model
    from inspection_core.preprocess import InputSpec, normalize_tiles
    from engines.train import make_optimizer, segmentation_loss

    torch.manual_seed(0)
    model = build_model("bffn", {"in_channels": 1}).train()
    optimizer = make_optimizer("adam", model.parameters(), 1e-3, fused=fused)
    criterion = segmentation_loss("ce")
    sampler = TileSampler(samples, 128, 0.5, seed=0, overlap=DEFAULT_OVERLAP)
    parts = {"sampling+augmentation": 0.0, "normalise": 0.0, "forward": 0.0, "loss": 0.0, "backward": 0.0,
             "optimizer": 0.0}
    n = 6
    for i in range(n + 2):
        t = [time.perf_counter()]
        tiles, masks = sampler.batch(batch)
        t.append(time.perf_counter())
        x, y = torch.from_numpy(normalize_tiles(tiles, InputSpec())), torch.from_numpy(masks)
        t.append(time.perf_counter())
        principal, *aux = model(x)
        t.append(time.perf_counter())
        loss = criterion(principal, y) + sum(criterion(a, y) for a in aux)
        float(loss.detach())
        t.append(time.perf_counter())
        optimizer.zero_grad()
        loss.backward()
        t.append(time.perf_counter())
        optimizer.step()
        t.append(time.perf_counter())
        if i >= 2:  # the first two steps warm the allocator and oneDNN's kernels
            for k, name in enumerate(parts):
                parts[name] += (t[k + 1] - t[k]) / n
    total = sum(parts.values())
    return {name: {"seconds": round(v, 4), "share": round(v / total, 3)} for name, v in parts.items()}


def learning_check(samples, batch: int, steps: int) -> dict:
    """float32 against bf16 autocast from one initial network on the same batches: both loss curves."""
    curves = {}
    for name in (EXACT, EXACT + "+bf16"):
        run, _, _ = make_runner(name, CONFIGS[name], samples, batch, seed=11)
        curves[name] = [round(run(), 5) for _ in range(steps)]
    a, b = curves.values()
    window = max(1, steps // 5)
    smooth = lambda c: [sum(c[max(0, i - window + 1):i + 1]) / len(c[max(0, i - window + 1):i + 1])  # noqa: E731
                        for i in range(len(c))]
    sa, sb = smooth(a), smooth(b)
    return {"steps": steps, "curves": curves, "window": window,
            "max_relative_gap_smoothed": round(max(abs(x - y) / max(abs(x), 1e-9) for x, y in zip(sa, sb)), 4),
            "final_smoothed": {"float32": round(sa[-1], 4), "bf16": round(sb[-1], 4)}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per configuration (default 30)")
    parser.add_argument("--batch", type=int, default=16, help="tiles per step (default 16, as the shipped run)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=120, help="images to sample tiles from (default 120)")
    parser.add_argument("--check-steps", type=int, default=60, help="steps of the float32 vs bf16 learning check "
                                                                   "(0 = skip)")
    parser.add_argument("--json", help="write every figure here")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    samples, source = load_samples(args.images)
    runners = {name: make_runner(name, opts, samples, args.batch, seed=0) for name, opts in CONFIGS.items()}
    for run, times, _ in runners.values():  # warm-up: two steps each, not timed
        run()
        run()
        for v in times.values():
            v.clear()
    for _ in range(args.steps):  # in turns, one step each
        for run, _, _ in runners.values():
            run()
    ref = sum(runners["reference"][1]["total"])
    rows = {}
    for name, (_, times, _) in runners.items():
        total = sum(times["total"])
        tiles = args.steps * args.batch * CONFIGS[name].get("batch_scale", 1)
        rows[name] = {"tiles_per_s": round(tiles / total, 2), "batch": args.batch * CONFIGS[name].get("batch_scale", 1),
                      "speedup_vs_reference": round(ref / (args.steps * args.batch) * tiles / total, 3),
                      "sampling_wait_ms": round(1000 * sum(times["sample"]) / args.steps, 2),
                      "step_ms": round(1000 * sum(times["step"]) / args.steps, 1)}
    report = {"machine": f"{torch.get_num_threads()} torch threads, torch {torch.__version__}", "data": source,
              "batch": args.batch, "steps_each": args.steps, "configs": rows,
              "reference_profile": profile_step(samples, args.batch),
              "fused_adam_profile": profile_step(samples, args.batch, fused=True)}
    if args.check_steps:
        report["learning_check"] = learning_check(samples, args.batch, args.check_steps)
    print(f"{'configuration':44s} {'tiles/s':>8s} {'× reference':>12s} {'sampling wait ms':>17s} {'step ms':>8s}")
    for name, r in rows.items():
        print(f"{name:44s} {r['tiles_per_s']:8.2f} {r['speedup_vs_reference']:12.2f} {r['sampling_wait_ms']:17.2f} "
              f"{r['step_ms']:8.1f}")
    for key, title in (("reference_profile", "reference step"), ("fused_adam_profile", "with the fused Adam")):
        print(f"{title}, where the time goes: " + ", ".join(
            f"{k} {v['share']:.0%} ({1000 * v['seconds']:.0f} ms)" for k, v in report[key].items()))
    if args.check_steps:
        c = report["learning_check"]
        print(f"learning check, {c['steps']} steps on the same batches: smoothed loss float32 "
              f"{c['final_smoothed']['float32']} vs bf16 {c['final_smoothed']['bf16']}, largest relative gap "
              f"{c['max_relative_gap_smoothed']:.1%}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
