"""The judging of a weights folder: the rule ``engines accept`` learned and wrote beside the weights, with the
command's flags on top (:class:`inspection.judging.Judging`). A tool handed the weights judges as a station running
them would; a station recipe's own judging is :func:`station.line_calibration.judging_for`."""
from __future__ import annotations

from pathlib import Path

from engines.weights import CONFIG_FILE, WeightsBundle, resolve_weights
from inspection.judging import DEFAULT_BATCH, Judging, learned_where


def judging_for_weights(weights: str | Path | WeightsBundle, *, threshold: float | None = None,
                        min_area: int | None = None, overlap: int | None = None,
                        batch: int = DEFAULT_BATCH) -> Judging:
    """The judging of ``weights``: each setting given here (``None``: not given) wins over the rule the weights
    carry (``config.json`` key ``judging``), which wins over the defaults; ``source`` says which came from where."""
    bundle = weights if isinstance(weights, WeightsBundle) else resolve_weights(weights)
    rule = bundle.judging_rule()
    where = learned_where(f"{bundle.path / CONFIG_FILE}", rule)
    return Judging.from_rule(rule, threshold=threshold, min_area=min_area, overlap=overlap, batch=batch, where=where)
