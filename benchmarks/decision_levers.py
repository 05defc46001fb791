"""Levers after the network (issue 12): can the decision side turn the same BFFN into better verdicts?

Every lever is learned on the validation part and judged once on the held-out part, both judged as the station
judges (the :class:`~inspection.inspector.Inspector`'s stitched score maps, :func:`~inspection_core.verdict.find_defects`):

* ``plain``: the station's rule, a score threshold and a minimum area (:func:`engines.evaluate.best_rule`);
* ``flips``: test-time augmentation, the mean of the score maps of the image, its left-right and its up-down
  mirror (3× the inference), then the plain rule;
* ``ensemble``: the mean of the score maps of every ``--weights`` (one inference per network), then the plain rule;
* ``components``: the issue's "small calibrated rule on component features": the defects found at the learned
  threshold and a small minimum area are scored by a logistic regression on log area, peak score, mean score and
  log elongation of the box, fitted on validation components (a component is a true defect when its box holds
  truth pixels); a part fails when one of its components reaches the cut-off learned for the best F1.

Score maps are cached in ``--cache`` (one ``.npz`` per weights, mirror and part), so levers can be compared again
without inference.

    .venv/bin/python benchmarks/decision_levers.py --weights bffn-magnetic-tile --weights runs/bffn-hn3 \\
        --split engines/weights/bffn-magnetic-tile/split.json --cache runs/levers \\
        --json docs/results/bffn-decision-levers.json
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engines.evaluate import best_rule, image_level_metrics  # noqa: E402
from inspection_core.verdict import DecisionRules, find_defects  # noqa: E402

THRESHOLDS = tuple(round(float(t), 2) for t in np.arange(0.3, 0.96, 0.05))
MIN_AREAS = (10, 20, 30, 50, 80, 120, 200)
COMPONENT_MIN_AREAS = (5, 10, 20)
FLIPS = {"none": None, "lr": 1, "ud": 0}  # cv2.flip codes
FEATURES = ("log_area", "peak_score", "mean_score", "log_elongation")


def score_maps(inspector, samples, flip: str) -> list[np.ndarray]:
    """The stitched score maps of ``samples`` as the line computes them, of the mirrored image when ``flip`` is
    "lr" or "ud" (mirrored back, so every map lies on its image)."""
    import cv2

    from inspection_core.records import Frame

    code = FLIPS[flip]
    out = []
    for i, s in enumerate(samples):
        image = s.image if code is None else np.ascontiguousarray(cv2.flip(s.image, code))
        mask = inspector.inspect(Frame(image, i + 1, time.monotonic_ns(), "levers", {"file": s.name})).mask
        out.append(np.ascontiguousarray(mask if code is None else cv2.flip(mask, code), dtype=np.float32))
    return out


def rule_sweep(maps, truth, thresholds=THRESHOLDS, min_areas=MIN_AREAS) -> list[dict]:
    """Image-level metrics of every (threshold, minimum area) pair on ``maps``."""
    return [{"threshold": t, "min_area_px": a,
             **image_level_metrics(truth, [bool(find_defects(m, DecisionRules(score_threshold=t, min_area_px=a)))
                                           for m in maps])}
            for a in min_areas for t in thresholds]


def judge_rule(maps, truth, threshold: float, min_area: int) -> dict:
    return rule_sweep(maps, truth, (threshold,), (min_area,))[0]


def component_features(defects) -> np.ndarray:
    """One row of :data:`FEATURES` per defect (elongation: the longer side of its box over the shorter)."""
    rows = [[np.log(d.area_px), d.max_score, d.mean_score,
             np.log(max(d.bbox[2], d.bbox[3]) / max(1, min(d.bbox[2], d.bbox[3])))] for d in defects]
    return np.asarray(rows, np.float64).reshape(-1, len(FEATURES))


def components(maps, masks, threshold: float, min_area: int):
    """Per image, the features of its defects and whether each defect's box holds truth pixels."""
    rules = DecisionRules(score_threshold=threshold, min_area_px=min_area)
    out = []
    for m, truth in zip(maps, masks):
        defects = find_defects(m, rules)
        hit = np.array([bool(truth[y:y + h, x:x + w].any()) for x, y, w, h in (d.bbox for d in defects)], bool)
        out.append((component_features(defects), hit))
    return out


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, steps: int = 3000, lr: float = 0.1):
    """Class-balanced, L2-regularised logistic regression by gradient descent on standardised features; returns
    ``(weights, bias)`` on the raw features."""
    mu, sd = x.mean(0), x.std(0) + 1e-9
    z = (x - mu) / sd
    w, b = np.zeros(z.shape[1]), 0.0
    pos = float(y.mean())
    cw = np.where(y, 0.5 / max(pos, 1e-9), 0.5 / max(1 - pos, 1e-9))
    for _ in range(steps):
        g = cw * (1 / (1 + np.exp(-(z @ w + b))) - y)
        w -= lr * (z.T @ g + l2 * w) / len(y)
        b -= lr * float(g.mean())
    return w / sd, float(b - (w * mu / sd).sum())


def part_scores(parts, w, b) -> list[float]:
    """The highest component probability of each image (0 without components)."""
    return [float((1 / (1 + np.exp(-(f @ w + b)))).max()) if len(f) else 0.0 for f, _ in parts]


def learn_component_rule(val_maps, val_masks, val_truth, threshold: float):
    """Fit the component rule on validation for each small minimum area; keep the one with the best F1 at its best
    cut-off (ties: fewer FP+FN, then the higher cut-off)."""
    best = None
    for area in COMPONENT_MIN_AREAS:
        parts = components(val_maps, val_masks, threshold, area)
        y = np.concatenate([hit for _, hit in parts]).astype(float) if parts else np.zeros(0)
        if not len(y) or y.min() == y.max():
            continue
        w, b = fit_logistic(np.concatenate([f for f, _ in parts]), y)
        scores = part_scores(parts, w, b)
        for cut in np.arange(0.05, 1.0, 0.025):
            point = {"threshold": threshold, "min_area_px": area, "cutoff": round(float(cut), 3),
                     "weights": dict(zip(FEATURES, np.round(w, 4).tolist())), "bias": round(b, 4),
                     "components": int(len(y)), "true_components": int(y.sum()),
                     **image_level_metrics(val_truth, [s >= cut for s in scores])}
            if best is None or (point["f1"], -point["fp_fn"], point["cutoff"]) > (best["f1"], -best["fp_fn"],
                                                                                  best["cutoff"]):
                best = point
    return best


def judge_component_rule(rule, maps, masks, truth) -> dict:
    parts = components(maps, masks, rule["threshold"], rule["min_area_px"])
    w = np.array([rule["weights"][f] for f in FEATURES])
    return image_level_metrics(truth, [s >= rule["cutoff"] for s in part_scores(parts, w, rule["bias"])])


def levers(maps: dict, masks: dict, truth: dict, first: str, weights: list[str]) -> dict:
    """Every lever learned on ``maps[(w, flip)]["validation"]`` and judged on ``["holdout"]``."""
    def mean_of(keys, part):
        return [np.mean([maps[k][part][i] for k in keys], 0) for i in range(len(truth[part]))]

    variants = {f"plain {w}": [(w, "none")] for w in weights}
    variants[f"flips {first}"] = [(first, f) for f in FLIPS]
    if len(weights) > 1:
        variants["ensemble " + " + ".join(weights)] = [(w, "none") for w in weights]
    report = {}
    for name, keys in variants.items():
        val, hold = mean_of(keys, "validation"), mean_of(keys, "holdout")
        rule = best_rule(rule_sweep(val, truth["validation"]))
        report[name] = {"validation": rule,
                        "holdout": judge_rule(hold, truth["holdout"], rule["threshold"], rule["min_area_px"])}
    plain = report[f"plain {first}"]["validation"]
    val, hold = maps[(first, "none")]["validation"], maps[(first, "none")]["holdout"]
    rule = learn_component_rule(val, masks["validation"], truth["validation"], plain["threshold"])
    report[f"components {first}"] = (
        {"validation": rule, "holdout": judge_component_rule(rule, hold, masks["holdout"], truth["holdout"])}
        if rule is not None else {"note": "not learned: validation has no components, or only true or only false "
                                          f"ones, at threshold {plain['threshold']}"})
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", action="append", required=True,
                        help="BFFN weights (shipped name or folder); repeat for the ensemble; the first one gets the "
                             "flips and the component rule")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "magnetic-tile"))
    parser.add_argument("--split", required=True, help="split.json with 'validation' and 'holdout' image names")
    parser.add_argument("--cache", default="runs/levers", help="folder of cached score maps (default runs/levers)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)

    from engines.backends.base import load_engine
    from engines.data.segmentation import load_dataset
    from engines.judging import judging_for_weights

    data = Path(args.data)
    if not data.is_dir():
        parser.error(f"{data} is not a folder: point --data at the magnetic-tile images (../shared/data/magnetic-tile)")
    split = json.loads(Path(args.split).read_text())
    samples = load_dataset(data)
    by_part = {p: [s for s in samples if s.name in set(split[p])] for p in ("validation", "holdout")}
    for part, chosen in by_part.items():
        if not chosen:
            parser.error(f"no image of {data} is in the {part!r} list of {args.split}")
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    maps = {}
    for w in args.weights:
        inspector = None
        for flip in FLIPS if w == args.weights[0] else ("none",):
            maps[(w, flip)] = {}
            for part, chosen in by_part.items():
                path = cache / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', w)}-{flip}-{part}.npz"
                if path.is_file() and list(np.load(path)["names"]) == [s.name for s in chosen]:
                    z = np.load(path)
                    maps[(w, flip)][part] = [z[f"s{k}"].astype(np.float32) for k in range(len(chosen))]
                    continue
                if inspector is None:
                    # the score maps only: the weights' own tiling (the rules are swept over the maps below)
                    inspector = judging_for_weights(w).inspector(
                        load_engine(w, backend="onnxruntime", threads=args.threads))
                t0 = time.perf_counter()
                got = score_maps(inspector, chosen, flip)
                np.savez_compressed(path, names=np.array([s.name for s in chosen]),
                                    **{f"s{k}": m.astype(np.float16) for k, m in enumerate(got)})
                maps[(w, flip)][part] = [m.astype(np.float16).astype(np.float32) for m in got]
                print(f"{w} {flip} {part}: {len(chosen)} maps in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    truth = {p: [s.defective for s in chosen] for p, chosen in by_part.items()}
    masks = {p: [s.mask for s in chosen] for p, chosen in by_part.items()}
    report = {"data": str(data), "split": args.split, "images": {p: len(c) for p, c in by_part.items()},
              "levers": levers(maps, masks, truth, args.weights[0], args.weights)}
    for name, r in report["levers"].items():
        if "note" in r:
            print(f"{name:60s} {r['note']}")
            continue
        v, h = r["validation"], r["holdout"]
        print(f"{name:60s} validation F1 {v['f1']:.3f} (FP {v['fp']}, FN {v['fn']})   held-out F1 {h['f1']:.3f} "
              f"(FP {h['fp']}, FN {h['fn']})")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
