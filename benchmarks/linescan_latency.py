"""Line-scan latency: stream a synthetic screen as line blocks at a line rate, inspect it while it arrives, and
report how long the verdict takes after the last line.

    .venv/bin/python benchmarks/linescan_latency.py                       # 5120 x 10240 screen, 20 kHz, GR 256 px
    .venv/bin/python benchmarks/linescan_latency.py --line-rate 200       # a rate the CPU can keep up with
    .venv/bin/python benchmarks/linescan_latency.py --input-size 128      # patches of 256 px resized to 128 px
    .venv/bin/python benchmarks/linescan_latency.py --bffn --json out.json

What runs is the station's own code: :class:`station.sources.linescan.LineScanReplay` (blocks on the wall-clock
schedule of the line rate) → :class:`station.strips.StripAssembler` → the streaming form of the one inspector
(:class:`inspection.inspector.StreamingInspector`) with the GR patch classifier (:class:`station.classify.PatchClassifier`, ONNX Runtime on the CPU by default), and optionally BFFN
segmentation (the shipped weights, ONNX Runtime), on the station's line (:class:`station.pipeline.Line`).

GR weights: ``--weights DIR`` uses trained weights; by default an *untrained* ResNet-18 GR (4 classes, the trainer's
defaults: 3-channel stem, 512-d label features, reference bank of 31) is written to a temporary folder. Its labels
mean nothing, but its speed is that of a trained one: the work does not depend on the weight values.

Printed: acquisition time (first to last line), the time from the last line to the verdict, the work done after
the last line (the finish: last tile row, stitch, verdict) and how long it waited behind earlier rows, the time per
tile row, patches per second, and whether inspection keeps up with the line rate (the arithmetic is printed).

Exit codes: 0 done, 2 bad arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from engines.backends.registry import backend_names  # noqa: E402  (plain data, no backend library)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="linescan_latency.py", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lines", type=int, default=10240, help="lines of the screen (default: 10240)")
    p.add_argument("--width", type=int, default=5120, help="pixels per line (default: 5120)")
    p.add_argument("--seed", type=int, default=0, help="synthetic screen seed (default: 0)")
    p.add_argument("--block-lines", type=int, default=512, help="lines per block (default: 512)")
    p.add_argument("--line-rate", type=float, default=20000.0,
                   help="lines per second of the replay (default: 20000; 0 = as fast as possible)")
    p.add_argument("--patch", type=int, default=256, help="GR patch side cut from the screen (default: 256)")
    p.add_argument("--input-size", type=int, default=256,
                   help="the network's input side: patches are resized to it (the weights' tile; default: 256)")
    p.add_argument("--backbone", default="resnet18", choices=["resnet18", "resnet34", "resnet50"],
                   help="GR backbone of the untrained weights (default: resnet18)")
    p.add_argument("--mode", default="batch", choices=["batch", "bank"],
                   help="GR mode: the part's patches as GR's batch (chunks of 32), or each patch against the bank")
    p.add_argument("--weights", help="trained GR weights folder instead of untrained ones")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores this process may use)")
    p.add_argument("--backend", choices=backend_names(device="cpu"), default="onnxruntime",
                   help="GR's engine (built into an engine folder in the cache, loaded by manifest)")
    p.add_argument("--bffn", action="store_true",
                   help="also run BFFN segmentation (shipped weights, ONNX Runtime, 128 px tiles, no overlap)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON ('-' for standard output)")
    return p


def _untrained_gr(folder: Path, backbone: str, size: int) -> Path:
    import torch

    from engines.models.gr import GR, GRConfig
    from inspection_core.preprocess import InputSpec
    from engines.weights import save_weights

    torch.manual_seed(0)
    model = GR(GRConfig(num_classes=4, backbone=backbone)).eval()
    model.set_reference_bank(torch.randn(31, 4, model.config.label_dim))
    return save_weights(model, folder, "gr", model.config.to_dict(), InputSpec(channels=3).to_dict(), size,
                        {"classes": ["bubble", "pinhole", "scratch", "tin_ash"], "note": "untrained, for timing"},
                        half=False)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for name in ("lines", "width", "block_lines", "patch", "input_size"):
        if getattr(args, name) < 1:
            print(f"linescan_latency.py: error: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    if args.line_rate < 0:
        print("linescan_latency.py: error: --line-rate must be >= 0", file=sys.stderr)
        return 2

    import numpy as np
    import torch

    from engines.backends.base import default_threads
    from engines.data.synthetic_screen import ScreenSpec, make_screen
    from station.classify import MAX_BATCH, PatchClassifier
    from station.pipeline import Line
    from station.recipe import QueuePolicy
    from station.sources.linescan import LineScanReplay, LineScanSource
    from inspection.inspector import StreamingInspector

    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    tmp = tempfile.TemporaryDirectory(prefix="linescan-bench-")
    weights = args.weights or str(_untrained_gr(Path(tmp.name) / "gr", args.backbone, args.input_size))
    classifier = PatchClassifier(weights, patch=args.patch, overlap=0, mode=args.mode, threads=threads,
                                 backend=args.backend)
    engine = None
    if args.bffn:
        from engines.backends.base import load_engine

        engine = load_engine("bffn-magnetic-tile", "onnxruntime", threads=threads)
    print(f"screen {args.width} x {args.lines} (seed {args.seed}), blocks of {args.block_lines} lines at "
          f"{args.line_rate:g} lines/s; GR {classifier.model_name} ({args.backbone if not args.weights else weights}) on "
          f"{args.patch} px patches -> {classifier.size} px input, mode {args.mode}, {args.backend} {threads} threads"
          + (", + BFFN (ONNX Runtime)" if engine else "") + "\n", flush=True)
    image = make_screen(args.seed, ScreenSpec(size=(args.lines, args.width))).image

    # warm up (first calls allocate and pick kernels), outside the measured stream
    warm = np.repeat(image[None, : args.patch, : args.patch], MAX_BATCH, axis=0)
    classifier.score_patches(warm)
    if engine is not None:
        from inspection_core.preprocess import normalize_tiles

        engine.infer(normalize_tiles(np.zeros((4, engine.tile, engine.tile), np.uint8), engine.spec))

    streaming = StreamingInspector(engine, overlap=0, batch=32, classifier=classifier)
    replay = LineScanReplay(image, block_lines=args.block_lines, line_rate_hz=args.line_rate)
    source = LineScanSource(replay, part_lines=args.lines, line_rate_hz=args.line_rate, listener=streaming,
                            late_tolerance_ms=1e9)  # lateness is reported below, not warned about per block
    results = []
    line = Line(source, streaming, None, frames_queue=2, frames_policy=QueuePolicy.BLOCK, max_frames=1,
                on_result=results.append)
    started = time.monotonic()
    line.run()
    wall = time.monotonic() - started
    streaming.close()
    if line.failure is not None or not results:
        print(f"linescan_latency.py: the run failed: {line.failure}", file=sys.stderr)
        return 1
    result, report, stats = results[0], streaming.reports[-1], source.stats
    frame = result.frame

    first_line_ns = frame.meta["first_line_ns"] or replay.started_ns
    acquisition_s = (frame.timestamp_ns - replay.started_ns) / 1e9
    cls_rows = [r for r in report.rows if r.stage == "classify"]
    seg_rows = [r for r in report.rows if r.stage == "segment"]
    patches = sum(r.tiles for r in cls_rows)
    cls_s = result.timings.get("classify", 0.0) / 1e3
    cls_calls = [c for c in report.calls if c.stage == "classify"]
    scored_before_last_line = sum(c.tiles for c in cls_calls if c.done_ns <= frame.timestamp_ns)
    scored_after_last_line = patches - scored_before_last_line
    patches_per_row = -(-args.width // args.patch)
    row_budget_s = args.patch / args.line_rate if args.line_rate else float("nan")
    row_s = cls_s / len(cls_rows) if cls_rows else float("nan")
    seg_s = sum(result.timings.get(k, 0.0) for k in ("prepare", "tile", "infer", "stitch")) / 1e3
    seg_row_s = seg_s / len(seg_rows) if seg_rows else 0.0
    seg_rows_per_cls_row = (len(seg_rows) / len(cls_rows)) if cls_rows else 0.0
    work_per_row_s = row_s + seg_row_s * seg_rows_per_cls_row
    required_pps = args.line_rate / args.patch * patches_per_row if args.line_rate else float("nan")
    measured_pps = patches / cls_s if cls_s else float("nan")
    sustainable_rate = args.patch / work_per_row_s if work_per_row_s else float("nan")
    figures = {
        "screen": [args.lines, args.width], "block_lines": args.block_lines, "line_rate_hz": args.line_rate,
        "patch": args.patch, "input_size": classifier.size, "mode": args.mode, "threads": threads,
        "backbone": args.backbone if not args.weights else None, "weights": weights if args.weights else "untrained",
        "bffn": bool(engine), "cpu_count": os.cpu_count(), "load_avg_1min": round(os.getloadavg()[0], 2),
        "acquisition_s": round(acquisition_s, 3),
        "first_to_last_line_s": round((frame.timestamp_ns - first_line_ns) / 1e9, 3),
        "last_line_to_verdict_s": round(result.latency_ms / 1e3, 3),
        "backlog_after_last_line_s": round(report.backlog_ms / 1e3, 3),
        "finish_s": round(report.finish_ms / 1e3, 3),
        "gr_rows": len(cls_rows), "gr_patches_scored_before_last_line": scored_before_last_line,
        "gr_patches_scored_after_last_line": scored_after_last_line,
        "gr_chunk_seconds": [round(c.seconds, 3) for c in cls_calls],
        "gr_patches": patches, "gr_seconds": round(cls_s, 2), "gr_seconds_per_row": round(row_s, 3),
        "gr_patches_per_s": round(measured_pps, 2), "bffn_seconds": round(seg_s, 2),
        "bffn_tiles": sum(r.tiles for r in seg_rows), "work_per_patch_row_s": round(work_per_row_s, 3),
        "row_budget_s": round(row_budget_s, 4), "required_patches_per_s": round(required_pps, 1),
        "keeps_up": bool(args.line_rate) and work_per_row_s <= row_budget_s,
        "sustainable_line_rate_hz": round(sustainable_rate, 1),
        "verdict": result.verdict.value, "labels": list(result.labels), "missing_blocks": stats.missing_blocks,
        "max_block_lateness_ms": round(stats.max_lateness_ms, 1),
        "wall_s": round(wall, 2), "gr_chunk": MAX_BATCH,
    }
    lines_out = [
        f"acquisition: {args.lines} lines in {figures['acquisition_s']:.3f} s "
        f"(schedule: {args.lines / args.line_rate if args.line_rate else 0:.3f} s); missing blocks "
        f"{stats.missing_blocks}, latest block {figures['max_block_lateness_ms']:.1f} ms after its last line",
        f"last line -> verdict: {figures['last_line_to_verdict_s']:.3f} s  (the part's finish waited "
        f"{figures['backlog_after_last_line_s']:.3f} s behind rows still queued, then took {figures['finish_s']:.3f} s: "
        "rows the last line completed, stitch, verdict)",
        f"GR: {patches} patches in {len(cls_rows)} rows, {cls_s:.2f} s of work = {measured_pps:.1f} patches/s, "
        f"{row_s:.3f} s a row of {patches_per_row}; {scored_before_last_line} patches were scored before the last "
        f"line, {scored_after_last_line} after it",
    ]
    if engine is not None:
        lines_out.append(f"BFFN: {figures['bffn_tiles']} tiles in {len(seg_rows)} rows, {seg_s:.2f} s of work")
    if args.line_rate:
        lines_out.append(
            f"keeps up with {args.line_rate:g} lines/s: {'yes' if figures['keeps_up'] else 'NO'} - a row of "
            f"{args.patch} lines arrives every {row_budget_s * 1e3:.1f} ms and takes {work_per_row_s * 1e3:.0f} ms to "
            f"inspect; needed {required_pps:.0f} patches/s, measured {measured_pps:.1f} "
            f"({required_pps / measured_pps if measured_pps else float('inf'):.0f}x short)" if not figures["keeps_up"]
            else f"keeps up with {args.line_rate:g} lines/s: yes - a row arrives every {row_budget_s * 1e3:.1f} ms "
                 f"and takes {work_per_row_s * 1e3:.0f} ms")
    lines_out.append(f"sustainable line rate on this machine: {sustainable_rate:.0f} lines/s "
                     f"({args.patch} lines per {work_per_row_s:.3f} s row)")
    lines_out.append(f"verdict {figures['verdict']} (labels {figures['labels'] or 'none'}); wall {wall:.1f} s; "
                     f"load average {figures['load_avg_1min']} on {figures['cpu_count']} CPUs")
    print("\n".join(lines_out))
    if args.json:
        text = json.dumps(figures, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
