"""What judges a line's parts now: one small immutable record, :class:`ActiveJudge`.

The line holds one (:attr:`station.pipeline.Line.judge`) and replaces it whole, between two frames, with
:meth:`station.pipeline.Line.switch` (an OPC UA ``PrepareRecipe``). The line hands every ledger entry to the ledger
with the judge that was active when the entry was made: the inspector that judged an inspected part, the active
one for a part not inspected or a gap. A row's ``recipe``, ``calibration`` and ``engine_id`` are read from it, so
nothing else keeps a copy of them to re-sync after a switch.

>>> from types import SimpleNamespace
>>> inspector = SimpleNamespace(engine_id="bffn/onnxruntime-cpu", calibration=SimpleNamespace(name="cam-A@v3"))
>>> judge = ActiveJudge(inspector, "magnetic_tile 0123456789ab")
>>> judge.recipe, judge.engine_id, judge.calibration
('magnetic_tile 0123456789ab', 'bffn/onnxruntime-cpu', 'cam-A@v3')
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the ledger imports this module: it needs no recipe parser
    from station.recipe import Recipe


def ledger_label(recipe: Recipe) -> str:
    """What ledger rows record as their recipe: product name and settings fingerprint."""
    return f"{recipe.product.name} {recipe.fingerprint()}"


def calibration_status(recipe: Recipe, inspector: Any) -> tuple[str, bool]:
    """What the operator and the summary are told about calibration: ``(text, warning)``. ``warning`` is True
    when the recipe names a profile but the line runs without it (``required = false`` and the profile missing)."""
    loaded = getattr(inspector, "calibration", None)
    if loaded is not None:
        return loaded.name, False
    if recipe.calibration is None:
        return "none (the recipe has no [calibration])", False
    return f"UNCALIBRATED (profile {recipe.calibration.profile!r} not found)", True


@dataclass(frozen=True)
class ActiveJudge:
    """The inspector that judges parts and the label of the recipe it was built from (:func:`ledger_label`;
    ``None``: no recipe, as in tests and tools). The engine and the calibration profile are the inspector's;
    ``calibration_note`` is what the operator is told of the calibration (:func:`calibration_status`; empty: not
    known, no recipe); ``guard`` the recipe's ``[frames]`` limits and implausible-frame policy, checked before the
    frame is judged (None: the line's). The not-inspected policy is the station's (``[station]``), not the judge's."""

    inspector: Any
    recipe: str | None = None
    calibration_note: tuple[str, bool] = ("", False)
    guard: Any = None  # the recipe's frame guards (station.frameguard.FrameGuard; None: the line's own)

    @classmethod
    def of(cls, recipe: Recipe, inspector: Any) -> ActiveJudge:
        from station.frameguard import FrameGuard

        return cls(inspector, ledger_label(recipe), calibration_status(recipe, inspector),
                   FrameGuard.from_config(recipe.frames))

    @property
    def engine_id(self) -> str:
        return self.inspector.engine_id

    @property
    def calibration(self) -> str | None:
        """The calibration profile's version (``camera@vN``), or None: frames judged as they come."""
        loaded = getattr(self.inspector, "calibration", None)
        return None if loaded is None else loaded.name
