"""The typed, immutable records that flow between the stages of the line.

Every field of every record lives here, so a reader finds the whole data model in one file::

    source ──Frame──▶ tiler ──TileBatch──▶ engine ──scores──▶ stitcher ──▶ verdict ──InspectionResult──▶ log / panel

Images are numpy arrays: ``uint8`` grey ``(H, W)`` or colour ``(H, W, 3)``; masks are ``float32`` defect
scores in ``[0, 1]`` of shape ``(H, W)``.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np


def _frozen_mapping(data: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(data or {}))


@dataclass(frozen=True)
class Frame:
    """One image from a source.

    ``frame_id`` is the source's own counter (the camera's block id for GenICam, the index of the file for a
    replay); ``timestamp_ns`` is ``time.monotonic_ns()`` on the host when the frame was copied out of the
    driver (or read from disk); ``meta`` holds per-frame facts such as ``{"file": "a.jpg"}`` or
    ``{"pixel_format": "Mono8", "incomplete": False}``.
    """

    image: np.ndarray
    frame_id: int
    timestamp_ns: int
    source: str
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "meta", _frozen_mapping(self.meta))

    @property
    def file(self) -> str | None:
        """The replayed file name, if this frame came from a file."""
        value = self.meta.get("file")
        return None if value is None else str(value)


class CameraState(str, enum.Enum):
    """Health of a frame source as the panel shows it."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    LOST = "lost"
    RECONNECTING = "reconnecting"
    STOPPED = "stopped"


@dataclass(frozen=True)
class SourceHealth:
    """A snapshot of a source's health counters (thread-safe to pass around)."""

    state: CameraState = CameraState.CONNECTING
    frames: int = 0
    lost_frames: int = 0
    incomplete_frames: int = 0
    skipped_files: int = 0
    reconnects: int = 0
    last_error: str | None = None


class Verdict(str, enum.Enum):
    PASS = "PASS"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Defect:
    """One connected component of the thresholded, stitched defect mask.

    ``bbox`` is ``(x, y, width, height)`` in image pixels; ``centroid`` is ``(x, y)``; ``mean_score`` is the
    mean defect probability over the component's pixels and ``max_score`` its peak. With a scale calibration
    (:mod:`calibration.scale`) ``area_mm2`` is the area in mm² and ``size_mm`` the bounding box's width and
    height in mm; both are ``None`` without one (pixels only).
    """

    label: str
    bbox: tuple[int, int, int, int]
    area_px: int
    centroid: tuple[float, float]
    mean_score: float
    max_score: float
    area_mm2: float | None = None
    size_mm: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "label": self.label,
            "bbox": list(self.bbox),
            "area_px": self.area_px,
            "centroid": [round(self.centroid[0], 2), round(self.centroid[1], 2)],
            "mean_score": round(self.mean_score, 4),
            "max_score": round(self.max_score, 4),
        }
        if self.area_mm2 is not None:
            out["area_mm2"] = round(self.area_mm2, 6)
        if self.size_mm is not None:
            out["size_mm"] = [round(self.size_mm[0], 5), round(self.size_mm[1], 5)]
        return out


@dataclass(frozen=True)
class InspectionResult:
    """Everything the line concluded about one frame.

    ``mask`` is the stitched defect-score map (``float32``, same height and width as ``frame.image``);
    ``labels`` are image-level class names (from a classifier stage; empty when none ran) and ``patches`` that
    stage's patch grid: one dict per patch with ``row``, ``col``, ``y``, ``x``, ``size``, ``labels`` and ``scores``
    (see :mod:`station.classify`; empty when none ran);
    ``timings`` are stage durations in milliseconds (``preprocess``, ``infer``, ``postprocess``, ``total``)
    and ``latency_ms`` is the time from the frame's timestamp to the verdict.
    """

    frame: Frame
    mask: np.ndarray
    defects: tuple[Defect, ...]
    verdict: Verdict
    engine_id: str
    labels: tuple[str, ...] = ()
    timings: Mapping[str, float] = field(default_factory=dict)
    latency_ms: float = 0.0
    patches: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "timings", _frozen_mapping(self.timings))
        object.__setattr__(self, "patches", tuple(self.patches))
        object.__setattr__(self, "defects", tuple(self.defects))
        object.__setattr__(self, "labels", tuple(self.labels))


@dataclass(frozen=True)
class LineStats:
    """Counters of the running line, as a snapshot for the panel and the final summary.

    ``acquired`` frames came out of the source at ``acquisition_fps`` (first to last frame); ``dropped`` frames
    were acquired but never inspected (a full drop-oldest queue); ``errors`` are frames that could not be
    inspected or recorded.
    """

    acquired: int = 0
    acquisition_fps: float = 0.0
    inspected: int = 0
    passed: int = 0
    failed: int = 0
    dropped: int = 0
    errors: int = 0
    throughput_fps: float = 0.0
    latency_ms_p50: float = 0.0
    latency_ms_p99: float = 0.0
    engine_id: str = ""
    source: SourceHealth = field(default_factory=SourceHealth)

    @property
    def yield_pct(self) -> float:
        return 100.0 * self.passed / self.inspected if self.inspected else 0.0
