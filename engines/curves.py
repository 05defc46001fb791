"""Learning curves: validation F1 and pixel IoU against training steps, read from runs (`engines curves`).

A run is a training folder (its ``train.log`` while it trains, its ``config.json`` once done) or a weights folder
or shipped name (the history in ``config.json``). Steps are counted from the run's ``start_step``: a run that
resumed other weights (``--init``) continues their count, so both lie on one axis.

    engines curves bffn-magnetic-tile runs/bffn-hn --offset 0,8000 --out docs/results/bffn-curves.png
"""
from __future__ import annotations

import json
from pathlib import Path

from engines.errors import InputError


def read_history(run: str | Path) -> tuple[list[dict], int]:
    """``(epoch records, steps per epoch)`` of a run folder or weights: the training log of a run in progress
    wins over a finished run's ``config.json`` (it holds every resume)."""
    path = Path(run)
    log = path / "train.log"
    if log.is_file():
        records = []
        for line in log.read_text().splitlines():
            if " INFO epoch {" in line:
                records.append(json.loads(line.split(" INFO epoch ", 1)[1]))
        if records:
            by_epoch = {r["epoch"]: r for r in records}  # a resumed epoch replaces the earlier attempt
            history = [by_epoch[k] for k in sorted(by_epoch)]
            return history, _steps_per_epoch(path, history)
    if not (path / "config.json").is_file():
        from engines.weights import resolve_weights

        path = resolve_weights(str(run)).path
    config = json.loads((path / "config.json").read_text())
    history = config.get("training", {}).get("history", [])
    if not history:
        raise InputError(f"{run} holds no training history (no train.log epochs, no history in config.json)")
    return history, _steps_per_epoch(path, history, config)


def _steps_per_epoch(path: Path, history: list[dict], config: dict | None = None) -> int:
    first = history[0]
    if "step" in first:
        return int(first["step"] // first["epoch"])
    if config is None and (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text())
    return int((config or {}).get("training", {}).get("settings", {}).get("steps_per_epoch") or 1)


def curve_points(history: list[dict], steps_per_epoch: int, offset: int = 0) -> dict[str, list]:
    """Steps, validation F1 (at the run's fixed rule), F1 at the best threshold of the sweep (when recorded),
    and pixel IoU, for every validated epoch."""
    rows = [r for r in history if "f1" in r]
    return {"step": [offset + int(r.get("step", r["epoch"] * steps_per_epoch)) for r in rows],
            "f1": [r["f1"] for r in rows], "best_f1": [r.get("best_f1") for r in rows],
            "pixel_iou": [r.get("pixel_iou") for r in rows],
            "station": bool(rows) and all(r.get("judged") == "station" for r in rows)}


def plot_learning_curves(runs: list[tuple[str, dict]], out: str | Path, title: str = "") -> Path:
    """Two panels (image-level F1, pixel IoU) against steps, one line per ``(label, curve_points(...))``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from engines.evaluate import write_figure

    fig, (ax_f1, ax_iou) = plt.subplots(1, 2, figsize=(11, 4.2 + 0.3 * len(runs)))
    for label, points in runs:
        judged = " (station-judged)" if points.get("station") else ""
        line, = ax_f1.plot(points["step"], points["f1"], "o-", ms=3, label=f"{label}: F1 at threshold 0.5{judged}")
        if any(v is not None for v in points["best_f1"]):
            best = "its learned rule" if points.get("station") else "its best threshold"
            ax_f1.plot(points["step"], [v if v is not None else float("nan") for v in points["best_f1"]], "s--",
                       ms=3, color=line.get_color(), alpha=0.7, label=f"{label}: F1 of {best}")
        ax_iou.plot(points["step"], points["pixel_iou"], "o-", ms=3, color=line.get_color(), label=label)
    ax_f1.set(xlabel="training steps (batches of 16 tiles)", ylabel="image-level F1 (validation)", ylim=(0, 1.02),
              title="image-level F1")
    ax_iou.set(xlabel="training steps (batches of 16 tiles)", ylabel="pixel IoU (validation)", ylim=(0, 1.02),
               title="pixel IoU")
    for ax in (ax_f1, ax_iou):  # legends below the panels, so they never hide the curves' tops
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return write_figure(fig, out)
