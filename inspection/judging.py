"""What decides a verdict, held once: :class:`Judging`.

A verdict depends on the networks' weights and on the *judging*: how a frame is cut into tiles (overlap, batch), the
decision rules after the camera's calibration profile (threshold, smallest defect, ROI, scale), the classifier
stage and whether its labels fail a part, and the profile that flat-fields the frame. The line, ``engines eval``,
``accept``, ``verify``, ``compare``, the int8 guard of ``engines build`` and ``calibration thresholds`` all build
one :class:`Judging` and get their :class:`~inspection.inspector.Inspector` from it, so they cannot judge
differently. It is built in one of two ways, above this layer:

- from a station recipe and its calibration profile (:func:`station.line_calibration.judging_for`);
- from the rule ``engines accept`` learned and wrote beside the weights, with the command's flags on top
  (:func:`Judging.from_rule`, used by :func:`engines.weights.judging_for_weights`).

Either way an explicit setting (a recipe key, a command-line flag) wins over the weights' learned rule, which wins
over the defaults of :mod:`inspection_core.defaults` (:func:`resolve_rule`, the one precedence of both ways);
:attr:`Judging.source` says which, and tools print it.

>>> judging = Judging.from_rule({"threshold": 0.9, "min_area_px": 20}, min_area=40, where="config.json")
>>> judging.rules.score_threshold, judging.rules.min_area_px, judging.overlap
(0.9, 40, 32)
>>> judging.source
'config.json (threshold); the command line (min area); the defaults (overlap)'
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Mapping

from inspection.inspector import FrameCalibration, Inspector
from inspection_core.defaults import DEFAULT_MIN_AREA_PX, DEFAULT_OVERLAP, DEFAULT_SCORE_THRESHOLD
from inspection_core.engine import Engine
from inspection_core.verdict import DecisionRules

#: Tiles per engine call when nobody says otherwise.
DEFAULT_BATCH = 32

#: The pieces of a learned rule, as ``engines accept`` writes them into the weights' ``config.json`` (key
#: ``judging``): (the name people read, the key, the default when nobody gives it).
RULE_PIECES = (("threshold", "threshold", DEFAULT_SCORE_THRESHOLD), ("min area", "min_area_px", DEFAULT_MIN_AREA_PX),
               ("overlap", "overlap", DEFAULT_OVERLAP))


def learned_where(place: str, rule: Mapping[str, Any] | None) -> str:
    """How tools name a rule ``engines accept`` learned: ``"PLACE, learned by engines accept on SPLIT"``."""
    if not rule:
        return place
    return f"{place}, learned by engines accept on {rule.get('learned_on', 'a validation part')}"


def resolve_rule(rule: Mapping[str, Any] | None, given: Mapping[str, Any], *, given_by: str,
                 where: str) -> tuple[dict[str, Any], str]:
    """``(values, source)``: each piece of :data:`RULE_PIECES` taken from ``given`` (a recipe key, a flag; ``None``
    or absent: not given), else from the learned ``rule`` (``where``), else from the defaults; ``source`` says in
    one line which came from where. The one precedence of the station and the tools.

    >>> resolve_rule({"threshold": 0.9, "overlap": 16}, {"threshold": 0.6}, given_by="the recipe", where="W")
    ({'threshold': 0.6, 'min_area_px': 30, 'overlap': 16}, 'the recipe (threshold); the defaults (min area); W (overlap)')
    """
    rule = rule or {}
    chosen: dict[str, Any] = {}
    by_origin: dict[str, list[str]] = {}
    for name, key, default in RULE_PIECES:
        if given.get(key) is not None:
            chosen[key], origin = given[key], given_by
        elif key in rule:
            chosen[key], origin = type(default)(rule[key]), where
        else:
            chosen[key], origin = default, "the defaults"
        by_origin.setdefault(origin, []).append(name)
    if len(by_origin) == 1:
        return chosen, next(iter(by_origin))
    return chosen, "; ".join(f"{origin} ({', '.join(names)})" for origin, names in by_origin.items())


@dataclass(frozen=True)
class Judging:
    """The tile plan, the rules after the calibration profile, the classifier stage and the profile: everything
    that turns scores into a verdict. ``source`` says where the rule came from (printed by the tools)."""

    rules: DecisionRules = DecisionRules()
    overlap: int = DEFAULT_OVERLAP
    batch: int = DEFAULT_BATCH
    classifier: Any = None  # an inspection.classifier.ClassifierStage, or None: no classifier stage
    fail_on_labels: bool = True
    calibration: FrameCalibration | None = None  # None: frames are judged as they come
    source: str = "the defaults"

    @classmethod
    def from_rule(cls, rule: Mapping[str, Any] | None, *, threshold: float | None = None,
                  min_area: int | None = None, overlap: int | None = None, batch: int = DEFAULT_BATCH,
                  where: str = "the weights' config.json") -> Judging:
        """The judging of weights that carry ``rule`` (``threshold``, ``min_area_px``, ``overlap``, as ``engines
        accept`` writes it; ``None``: no learned rule) with the given settings on top (``None``: not given)."""
        chosen, source = resolve_rule(rule, {"threshold": threshold, "min_area_px": min_area, "overlap": overlap},
                                      given_by="the command line", where=where)
        return cls(DecisionRules(score_threshold=float(chosen["threshold"]), min_area_px=int(chosen["min_area_px"])),
                   overlap=int(chosen["overlap"]), batch=batch, source=source)

    def replace(self, **changes: Any) -> Judging:
        """A copy with some fields changed; rule fields (``score_threshold``, ``min_area_px``, ...) by name too."""
        rule_fields = {f.name for f in dataclasses.fields(DecisionRules)}
        rule_changes = {k: changes.pop(k) for k in list(changes) if k in rule_fields}
        if rule_changes:
            changes["rules"] = dataclasses.replace(self.rules, **rule_changes)
        return dataclasses.replace(self, **changes)

    def inspector(self, engine: Engine | None, **options: Any) -> Inspector:
        """An :class:`Inspector` for ``engine`` judging this way; ``options``: the inspector's keyword options
        (``streaming``, ``reuse_scores``, ...)."""
        return Inspector(engine, overlap=self.overlap, batch=self.batch, rules=self.rules, classifier=self.classifier,
                         fail_on_labels=self.fail_on_labels, calibration=self.calibration, **options)

    def as_dict(self) -> dict[str, Any]:
        """What decides (plain data, as reports and the fingerprint carry it)."""
        r = self.rules
        roi = None if r.roi is None else {"kind": type(r.roi).__name__, **dataclasses.asdict(r.roi)}
        classifier = None
        if self.classifier is not None:
            classifier = {"engine_id": getattr(self.classifier, "engine_id", type(self.classifier).__name__),
                          **{k: _plain(getattr(self.classifier, k, None)) for k in ("threshold", "patch", "overlap")},
                          "mode": _plain(getattr(getattr(self.classifier, "mode", None), "value",
                                                 getattr(self.classifier, "mode", None))),
                          "fail_on_labels": self.fail_on_labels}
        return {"score_threshold": r.score_threshold, "min_area_px": r.min_area, "min_area_mm2": r.min_area_mm2,
                "mm_per_px": r.mm_per_px, "roi": roi, "label": r.label, "overlap": self.overlap,
                "calibration": getattr(self.calibration, "name", None), "classifier": classifier}

    def fingerprint(self) -> str:
        """12 hex digits that change whenever anything deciding a verdict changes (batch and source do not)."""
        text = json.dumps(self.as_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def describe(self) -> str:
        """One line for people: ``score >= 0.95, min area 30 px, overlap 32 px (from ...)``."""
        r = self.rules
        parts = [f"score >= {r.score_threshold:g}",
                 f"min area {r.min_area_mm2:g} mm² ({r.min_area} px)" if r.min_area_mm2 is not None and r.mm_per_px
                 else f"min area {r.min_area} px", f"overlap {self.overlap} px"]
        if r.roi is not None:
            parts.append(f"ROI {r.roi}")
        if self.calibration is not None:
            parts.append(f"calibration {self.calibration.name}")
        if self.classifier is not None:
            where = getattr(self.classifier, "threshold_from", None)
            parts.append(f"classifier {getattr(self.classifier, 'engine_id', '?')}"
                         + (f" (label thresholds from {where})" if where else "")
                         + ("" if self.fail_on_labels else " (labels do not fail parts)"))
        return f"{', '.join(parts)} (from {self.source})"


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value
