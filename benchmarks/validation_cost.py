"""What `engines train --validate-as station` costs against the quick check, and how far apart their figures are:
both judge the validation part of a split with the same network, in turns in one process (quick, station, quick
again, so a busy machine slows them alike).

    .venv/bin/python benchmarks/validation_cost.py --weights bffn-magnetic-tile \\
        --split engines/weights/bffn-magnetic-tile/split.json --json docs/results/validate-as-cost.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

KEYS = ("f1", "fp", "fn", "best_f1", "best_threshold", "best_min_area_px", "pixel_iou")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default="bffn-magnetic-tile")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "magnetic-tile"))
    parser.add_argument("--split", required=True, help="split.json whose 'validation' images are judged")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)

    import torch

    from engines.data.segmentation import load_dataset
    from engines.evaluate import evaluate_as_station, evaluate_full_images
    from engines.weights import load_model, resolve_weights

    torch.set_num_threads(args.threads)
    bundle = resolve_weights(args.weights)
    model = load_model(bundle).float().eval()
    wanted = set(json.loads(Path(args.split).read_text())["validation"])
    samples = [s for s in load_dataset(args.data) if s.name in wanted]
    spec = bundle.input_spec()
    runs = (("quick", lambda: evaluate_full_images(model, samples, spec, min_area_px=20)),
            ("station", lambda: evaluate_as_station(model, bundle.model, samples, spec, bundle.tile, 32)),
            ("quick again", lambda: evaluate_full_images(model, samples, spec, min_area_px=20)))
    out = {"weights": str(args.weights), "images": len(samples), "threads": args.threads}
    for name, run in runs:
        t0 = time.perf_counter()
        metrics = run()
        out[name] = {"seconds": round(time.perf_counter() - t0, 1), **{k: metrics.get(k) for k in KEYS}}
        print(name, json.dumps(out[name]), flush=True)
    out["station_over_quick"] = round(out["station"]["seconds"] / ((out["quick"]["seconds"]
                                                                      + out["quick again"]["seconds"]) / 2), 2)
    print(f"station-judged validation costs {out['station_over_quick']}x the quick check")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
