"""The typed, immutable records that flow between the stages of the line.

Every field of every record lives here, so a reader finds the whole data model in one file::

    source ──Frame──▶ tiler ──TileBatch──▶ engine ──scores──▶ stitcher ──▶ verdict ──InspectionResult──▶ log / panel

What the part ledger (the reject log) records, one row each: an :class:`InspectionResult` (PASS / FAIL), a
:class:`NotInspected` (a part delivered but not inspected, with its :class:`NotInspectedReason`) or a
:class:`FrameGap` (frames the source lost).

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
class PartIdentity:
    """Who a part is, as the ledger records it (columns ``part_id``, ``meas_id``, ``product_id``, ``job_id``) and every
    output of the station reports it.

    ``part_id`` is the part's own id (serial number, DMC code): the PLC's PartId when it sent one, else the source's
    (a replayed file's name, a camera's chunk value or line input, a line-scan part's index); ``meas_id`` the PLC's
    MeasId (its id of this measurement); ``product_id`` the PLC's ProductId; ``job_id`` the OPC UA job the part
    answers. ``None`` where nobody said (an empty string is read as ``None``). Composed once, when the part is
    acquired (:class:`station.part_identity.IdentityBook`), and carried unchanged from there::

        PartIdentity(part_id="P-1", meas_id="M-1").over(PartIdentity(part_id="a.jpg")).part_id  # "P-1"
    """

    part_id: str | None = None
    meas_id: str | None = None
    product_id: str | None = None
    job_id: str | None = None

    def __post_init__(self) -> None:
        for name in ("part_id", "meas_id", "product_id", "job_id"):
            value = getattr(self, name)
            object.__setattr__(self, name, None if value is None or str(value) == "" else str(value))

    def over(self, other: PartIdentity) -> PartIdentity:
        """This identity, with ``other``'s value wherever this one has none (the PLC's over the source's)."""
        return PartIdentity(*(mine if mine is not None else theirs for mine, theirs in
                              zip(self.values(), other.values())))

    def values(self) -> tuple[str | None, str | None, str | None, str | None]:
        """``(part_id, meas_id, product_id, job_id)``, the order of the ledger's columns."""
        return self.part_id, self.meas_id, self.product_id, self.job_id

    def __bool__(self) -> bool:
        return any(v is not None for v in self.values())


NO_IDENTITY = PartIdentity()


@dataclass(frozen=True)
class Frame:
    """One image from a source.

    ``frame_id`` is the source's own counter (the camera's block id for GenICam, the index of the file for a
    replay); ``timestamp_ns`` is ``time.monotonic_ns()`` on the host when the frame was copied out of the
    driver (or read from disk); ``meta`` holds per-frame facts such as ``{"file": "a.jpg"}`` or
    ``{"pixel_format": "Mono8", "incomplete": False}``.

    ``camera_timestamp_ns`` is the camera's own time stamp of the frame in ns on the camera's clock (chunk data
    or the GenTL buffer's time stamp), recorded beside the host time; ``None`` when the camera gives none.
    ``bit_depth`` is the significant bits per pixel the source read (12 for Mono12 / Mono12p, 8 for Mono8): the
    ``uint8`` image was scaled from that depth, not from the 16 bits a deep pixel is stored in.
    ``identity`` is who the part is (:class:`PartIdentity`): the source sets the part id it knows, and the line adds
    the PLC's ids when it acquires the frame; every sink reads it from the ledger row made of it.
    """

    image: np.ndarray
    frame_id: int
    timestamp_ns: int
    source: str
    meta: Mapping[str, Any] = field(default_factory=dict)
    camera_timestamp_ns: int | None = None
    bit_depth: int = 8
    identity: PartIdentity = NO_IDENTITY

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
    """What happened to a part. An :class:`InspectionResult` is PASS or FAIL; a part the line could not inspect is
    a :class:`NotInspected` record, NOT_INSPECTED in the part ledger (the reject log)."""

    PASS = "PASS"
    FAIL = "FAIL"
    NOT_INSPECTED = "NOT_INSPECTED"


class NotInspectedReason(str, enum.Enum):
    """Why a part delivered by the source was not inspected (the ``reason`` of its ledger row)."""

    DROPPED = "dropped"                  # dropped by the frames queue's drop-oldest policy (the line was too slow)
    UNREADABLE = "unreadable"            # a replayed file that cannot be read or decoded
    INCOMPLETE = "incomplete"            # the camera delivered a short (zero-padded) buffer
    TOO_SMALL = "too_small"              # below the recipe's [frames] minimum size
    TOO_LARGE = "too_large"              # above the recipe's [frames] maximum size
    IMPLAUSIBLE = "implausible"          # all black, saturated, or deep data read at the wrong bit depth
    TOO_SLOW = "too_slow"                # more tiles than the line can afford ([frames] max_inspect_s)
    INFERENCE_ERROR = "inference_error"  # the inspector raised on this frame
    INTERRUPTED = "interrupted"          # acquired by a run that ended without a verdict for it (kill -9, crash,
    #                                      power cut); recorded by the next start on the same log
    STOPPED = "stopped"                  # stopped before inspection: discarded at --max-frames, at shutdown, or
    #                                      after the drain timeout (also mid-inference, between batches)

    @property
    def text(self) -> str:
        """The reason in words, for messages and the panel."""
        return _REASON_TEXT[self]


_REASON_TEXT = {
    NotInspectedReason.DROPPED: "dropped by the queue policy",
    NotInspectedReason.UNREADABLE: "unreadable",
    NotInspectedReason.INCOMPLETE: "incomplete",
    NotInspectedReason.TOO_SMALL: "too small",
    NotInspectedReason.TOO_LARGE: "too large",
    NotInspectedReason.IMPLAUSIBLE: "implausible frame",
    NotInspectedReason.TOO_SLOW: "too slow to inspect",
    NotInspectedReason.INFERENCE_ERROR: "inference error",
    NotInspectedReason.INTERRUPTED: "interrupted (the station ended without a verdict)",
    NotInspectedReason.STOPPED: "stopped before inspection",
}


@dataclass(frozen=True)
class NotInspected:
    """A part the source delivered but the line did not inspect, and why: one NOT_INSPECTED ledger row.

    ``frame`` is kept when there was one (``None`` for a file that could not be read); ``detail`` says more than
    the reason (the decoder's message, the frame's size against the limits...); ``identity`` who the part is
    (the frame's, when there is one).
    """

    frame_id: int
    timestamp_ns: int
    source: str
    reason: NotInspectedReason
    detail: str = ""
    file: str | None = None
    frame: Frame | None = field(default=None, repr=False, compare=False)
    identity: PartIdentity = NO_IDENTITY

    @classmethod
    def of(cls, frame: Frame, reason: NotInspectedReason, detail: str = "") -> NotInspected:
        """The record of ``frame`` not inspected for ``reason``."""
        return cls(frame_id=frame.frame_id, timestamp_ns=frame.timestamp_ns, source=frame.source,
                   reason=NotInspectedReason(reason), detail=detail, file=frame.file, frame=frame,
                   identity=frame.identity)


class GapKind(str, enum.Enum):
    """What a gap row stands for: frame ids the camera skipped, or an outage (camera lost until reconnected)."""

    LOST_IDS = "lost_ids"
    OUTAGE = "outage"


@dataclass(frozen=True)
class FrameGap:
    """Frames the source lost, as one GAP ledger row: ids ``first_id .. last_id`` (``count`` of them, an estimate
    for an outage: its duration times the frame rate) between ``start_ns`` and ``end_ns`` (host monotonic clock:
    the last frame before the gap and the first after it, or when the line stopped). ``identity``: the PLC's job
    whose part was lost, when one waited for it (:class:`PartIdentity`)."""

    source: str
    kind: GapKind
    first_id: int
    last_id: int
    count: int
    start_ns: int
    end_ns: int
    detail: str = ""
    identity: PartIdentity = NO_IDENTITY


@dataclass(frozen=True, eq=False)
class LineBlock:
    """One block of lines from a line-scan source (the strip assembler, ``station/strips.py``, makes parts of them).

    ``lines`` is uint8 ``(n, width)`` (or ``(n, width, C)``); ``block_id`` the source's block counter (GenICam frame
    id: consecutive, may wrap); ``timestamp_ns`` the host ``time.monotonic_ns()`` when the block was delivered (its
    last line was in); ``first_line`` the camera's line counter of the first line, or None when the source has none
    (missing lines are then counted from block ids, assuming blocks of equal size); ``line_timestamps_ns`` the time
    each line was taken (int64, ``n`` values, same clock) when the source knows it; ``meta`` e.g.
    ``{"part_present": True}``, ``{"incomplete": True}`` or ``{"source_gaps": "..."}`` (what the source itself
    reported lost just before this block, in words). A malformed block raises ``ValueError``.
    """

    lines: np.ndarray
    block_id: int
    timestamp_ns: int
    first_line: int | None = None
    line_timestamps_ns: np.ndarray | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        lines = self.lines
        if not isinstance(lines, np.ndarray) or lines.ndim not in (2, 3) or lines.dtype != np.uint8 \
                or lines.shape[0] < 1 or lines.shape[1] < 1:
            raise ValueError(f"a line block holds uint8 lines (n >= 1, width) or (n, width, C), got "
                             f"{getattr(lines, 'dtype', type(lines).__name__)} {getattr(lines, 'shape', '')}")
        stamps = self.line_timestamps_ns
        if stamps is not None:
            stamps = np.asarray(stamps, np.int64)
            if stamps.shape != (lines.shape[0],):
                raise ValueError(f"line_timestamps_ns must hold one value per line ({lines.shape[0]}), "
                                 f"got shape {stamps.shape}")
            object.__setattr__(self, "line_timestamps_ns", stamps)
        object.__setattr__(self, "meta", _frozen_mapping(self.meta))

    @property
    def n_lines(self) -> int:
        return int(self.lines.shape[0])

    @property
    def width(self) -> int:
        return int(self.lines.shape[1])

    def part_present(self) -> np.ndarray | None:
        """The part-present signal, one bool per line, or None when the block carries none."""
        value = self.meta.get("part_present")
        if value is None:
            return None
        signal = np.asarray(value, dtype=bool)
        if signal.ndim == 0:
            return np.full(self.n_lines, bool(signal))
        if signal.shape != (self.n_lines,):
            raise ValueError(f"meta['part_present'] must be a bool or one bool per line ({self.n_lines}), "
                             f"got shape {signal.shape}")
        return signal


class LineState(str, enum.Enum):
    """The line as the panel and the summary show it."""

    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"   # stop requested: queued frames are being inspected and recorded
    STOPPED = "stopped"     # ended cleanly
    ERROR = "error"         # stopped on an error (the ledger cannot be written, free space low, a stage failed)


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
    ``timings`` are stage durations in milliseconds (:data:`STAGES` from ``calibrate`` to ``classify``, then
    ``total``; a streamed line-scan part adds ``finish`` and ``backlog``) and ``latency_ms`` is the time from the frame's timestamp to the verdict. ``decided`` is the decision
    itself: the pixels of the defects the rules kept (``bool``, after the threshold, the ROI and the minimum area;
    None when none was kept). Overlays, the panel and the ledger's images paint it and never threshold again.
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
    decided: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "timings", _frozen_mapping(self.timings))
        object.__setattr__(self, "patches", tuple(self.patches))
        object.__setattr__(self, "defects", tuple(self.defects))
        object.__setattr__(self, "labels", tuple(self.labels))

    @property
    def identity(self) -> PartIdentity:
        """Who the part is: its frame's :class:`PartIdentity`."""
        return self.frame.identity


#: The stages of a frame through the line, in order (:attr:`LineStats.stage_ms`, :attr:`InspectionResult.timings`):
#: ``acquire`` from the frame's timestamp to the start of its inspection (hand-over and queue wait), ``calibrate``
#: (flat-field, when a profile has one), ``prepare`` (the engine's input image), ``tile`` (cut and normalise the
#: tiles), ``infer`` (the engine), ``stitch`` (the score map), ``verdict`` (defects and the decision), ``classify``
#: (the classifier stage, when there is one), ``log`` (the ledger row committed, images included). Frames inspected
#: whole and line-scan parts streamed row by row report the same stages (:mod:`inspection.scoring`).
STAGES = ("acquire", "calibrate", "prepare", "tile", "infer", "stitch", "verdict", "classify", "log")


@dataclass(frozen=True)
class LineStats:
    """Counters of the running line, as a snapshot for the panel and the final summary.

    Every part the source delivered (``acquired``, at ``acquisition_fps`` first to last) ends as exactly one of
    ``passed``, ``failed`` or ``not_inspected`` (``not_inspected_reasons``: count per
    :class:`NotInspectedReason` value; ``dropped`` is the ``"dropped"`` one, a full drop-oldest queue), so once the
    line has ended ``acquired == passed + failed + not_inspected``. ``lost`` frames (estimated) never reached the
    line: ``gaps`` ledger rows hold them. ``recorded`` rows were committed to the ledger; ``refused`` entries could
    not be (the ledger failed: the line stopped). ``errors`` are frames the inspector raised on plus entries not
    recorded. ``warnings`` count implausible frames (all black, saturated). With ``not_inspected_is_reject``
    (the fail-safe default) a part not inspected counts as a reject in ``rejects`` and ``yield_pct``.
    ``stage_ms``: the mean time of each stage per inspected part, in ms, in the order a frame meets them
    (:data:`STAGES`; a stage that never ran is left out). ``links``: each running integration's status by name
    (OPC UA, MQTT, metrics, fleet: ``connected``, ``lag_rows``, ``lag_seconds``... as each reports them).
    ``unclean_end``: what this start found on its log of earlier runs that ended without closing it (killed, crashed,
    a power cut), in words, or None; ``interrupted_parts``: the parts they left without a verdict, recorded at this
    start as NOT_INSPECTED ``interrupted`` rows (not counted in ``acquired``: they belong to those runs).
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
    calibration: str = ""  # what judges now: the calibration profile's version, or why there is none ("": unknown)
    calibration_warning: bool = False  # the recipe names a profile the line runs without
    source: SourceHealth = field(default_factory=SourceHealth)
    not_inspected: int = 0
    not_inspected_reasons: Mapping[str, int] = field(default_factory=dict)
    lost: int = 0
    gaps: int = 0
    recorded: int = 0
    refused: int = 0
    warnings: int = 0
    not_inspected_is_reject: bool = True
    state: LineState = LineState.RUNNING
    failure: str | None = None
    stage_ms: Mapping[str, float] = field(default_factory=dict)
    links: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    unclean_end: str | None = None
    interrupted_parts: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "not_inspected_reasons", _frozen_mapping(self.not_inspected_reasons))
        object.__setattr__(self, "stage_ms", _frozen_mapping(self.stage_ms))
        object.__setattr__(self, "links", _frozen_mapping({k: _frozen_mapping(v) for k, v in self.links.items()}))

    @property
    def rejects(self) -> int:
        """Parts sent to the reject bin: the failed ones, plus those not inspected when they count as rejects."""
        return self.failed + (self.not_inspected if self.not_inspected_is_reject else 0)

    @property
    def judged(self) -> int:
        """The parts the yield is taken over."""
        return self.passed + self.failed + (self.not_inspected if self.not_inspected_is_reject else 0)

    @property
    def yield_pct(self) -> float:
        """Passed parts in percent of :attr:`judged` (0 before any)."""
        return 100.0 * self.passed / self.judged if self.judged else 0.0
