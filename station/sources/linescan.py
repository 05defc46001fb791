"""Line-scan sources: blocks of lines from a replay or a GenICam camera, assembled into parts (one frame per part).

>>> image = np.zeros((2048, 64), np.uint8)  # e.g. read_image(...) of a scanned part, or a synthetic screen
>>> replay = LineScanReplay(image, block_lines=512, line_rate_hz=200_000)
>>> source = LineScanSource(replay, part_lines=1024)
>>> with source:
...     for frame in source:       # one Frame per part; frame.meta says what is missing or late
...         print(frame.frame_id, frame.image.shape, frame.meta["gaps"])
1 (1024, 64) []
2 (1024, 64) []

- :class:`LineScanReplay` streams a large image (a file, or a synthetic screen from
  :mod:`engines.data.synthetic_screen`) as blocks of ``block_lines`` lines on the wall-clock schedule of a camera
  running at ``line_rate_hz`` (0 = as fast as possible), ``passes`` times. With ``gap_lines > 0`` it puts that many
  lines without a part before each pass and marks every line with the part-present signal
  (``meta["part_present"]``), for trigger mode. ``drop_blocks`` / ``delay_blocks`` lose or delay chosen blocks, for
  tests. Like a real camera it never waits for its consumer: a consumer that falls behind gets late blocks.
- :class:`GenICamBlocks` treats each frame of a :class:`~station.sources.genicam.GenICamSource` as one block (set
  the camera's Height to the block length): frame ids are the block sequence, so a gap in frame ids is a missing
  block, and a frame the camera delivered short is a block of missing lines.
- :class:`LineScanSource` is the :class:`~station.sources.base.FrameSource` the line runs: it feeds the blocks to a
  :class:`~station.strips.StripAssembler` and yields each part as a frame. A listener (the streaming inspector)
  sees the part while it is still arriving. Health: ``frames`` are parts, ``lost_frames`` missing blocks,
  ``incomplete_frames`` incomplete parts.

The part ledger (``ledger_sink``, see :mod:`station.sources.base`): every run of missing lines (lost blocks, a block
delivered incomplete, a camera outage) is a :class:`~inspection_core.records.FrameGap` in part ids (parts lost
entirely are its ``count``); a part cut into by missing lines is delivered and fails as incomplete; a part still
arriving when the source stops is :class:`~inspection_core.records.NotInspected` ``stopped``.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from engines.data.synthetic_screen import ScreenSpec, make_screen
from inspection_core.errors import ImageReadError
from inspection_core.records import (CameraState, Frame, GapKind, LineBlock, NotInspected, NotInspectedReason,
                                     PartIdentity, SourceHealth)
from station.errors import SourceError
from station.strips import PartListener, PartMode, StripAssembler
from station.sources.base import FrameSource
from station.sources.genicam import GenICamSource
from station.sources.replay import read_image

logger = logging.getLogger(__name__)


class LineScanReplay:
    """An image replayed as line blocks on a line-rate schedule (a simulated line-scan camera).

    Block ``j`` holds stream lines ``j * block_lines ..``; it is delivered when its last line is due
    (``t0 + (line + 1) / line_rate_hz``), plus ``delay_blocks[j]`` seconds; blocks in ``drop_blocks`` are never
    delivered (their block id is skipped, as a camera that lost them would). ``line_counter=False`` leaves
    ``first_line`` out, so missing lines must be found from block ids, as with a GenICam camera.
    """

    def __init__(self, image: np.ndarray, block_lines: int = 512, line_rate_hz: float = 0.0,
                 passes: int | None = 1, gap_lines: int = 0, drop_blocks: Iterable[int] = (),
                 delay_blocks: Mapping[int, float] | None = None, line_counter: bool = True,
                 name: str = "linescan-replay") -> None:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise SourceError(f"a line-scan replay needs a uint8 image (lines, width[, C]), got "
                              f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}")
        for what, value, low in (("block_lines", block_lines, 1), ("gap_lines", gap_lines, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise SourceError(f"{what} must be an integer >= {low}, got {value!r}")
        if passes is not None and (isinstance(passes, bool) or not isinstance(passes, int) or passes < 1):
            raise SourceError(f"passes must be an integer >= 1, or None to replay forever, got {passes!r}")
        if not (isinstance(line_rate_hz, (int, float)) and line_rate_hz >= 0):
            raise SourceError(f"line_rate_hz must be a number >= 0 (0 = as fast as possible), got {line_rate_hz!r}")
        self.image = image
        self.block_lines, self.gap_lines, self.passes = int(block_lines), int(gap_lines), passes
        self.line_rate_hz = float(line_rate_hz)
        self.drop_blocks = frozenset(int(b) for b in drop_blocks)
        self.delay_blocks = {int(k): float(v) for k, v in (delay_blocks or {}).items()}
        self.line_counter = line_counter
        self.name = name
        self._stop = threading.Event()
        self._background = np.full(image.shape[1:], int(np.median(image[0])), np.uint8)
        self.started_ns = 0  # monotonic time of line 0's schedule, set when iteration starts

    @property
    def total_lines(self) -> int | None:
        """Lines in the whole stream (None when it repeats forever)."""
        if self.passes is None:
            return None
        return self.passes * (self.gap_lines + self.image.shape[0]) + self.gap_lines

    def line_due_ns(self, line: int) -> int:
        """When stream line ``line`` is taken on the replay's schedule (monotonic ns; needs line_rate_hz > 0)."""
        return self.started_ns + round((line + 1) * 1e9 / self.line_rate_hz)

    def stop(self) -> None:
        self._stop.set()

    def open(self) -> None:
        self._stop.clear()

    def close(self) -> None:
        self._stop.set()

    def _lines(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Stream lines ``a .. b - 1`` (a copy, as a camera delivers) and their part-present signal."""
        height, gap = self.image.shape[0], self.gap_lines
        period = gap + height
        if not gap:
            first = a % height
            if first + (b - a) <= height:
                return self.image[first:first + (b - a)].copy(), None
            return self.image[np.arange(a, b) % height], None
        offset = np.arange(a, b) % period
        present = offset >= gap
        out = np.empty((b - a,) + self.image.shape[1:], np.uint8)
        out[present] = self.image[offset[present] - gap]
        out[~present] = self._background
        return out, present

    def __iter__(self) -> Iterator[LineBlock]:
        self._stop.clear()
        total = self.total_lines
        period_ns = 1e9 / self.line_rate_hz if self.line_rate_hz else 0.0
        self.started_ns = time.monotonic_ns()
        block = 0
        while not self._stop.is_set():
            a = block * self.block_lines
            if total is not None and a >= total:
                return
            b = a + self.block_lines if total is None else min(total, a + self.block_lines)
            stamps = None
            if period_ns:
                stamps = self.started_ns + np.round((np.arange(a, b) + 1) * period_ns).astype(np.int64)
                wait_s = (int(stamps[-1]) - time.monotonic_ns()) / 1e9
                if self._stop.wait(max(0.0, wait_s)):
                    return
            if block in self.delay_blocks and self._stop.wait(self.delay_blocks[block]):
                return
            if block not in self.drop_blocks:
                lines, present = self._lines(a, b)
                meta = {} if present is None else {"part_present": present}
                yield LineBlock(lines=lines, block_id=block + 1, timestamp_ns=time.monotonic_ns(),
                                first_line=a if self.line_counter else None, line_timestamps_ns=stamps, meta=meta)
            block += 1


class GenICamBlocks:
    """Frames of a GenICam camera as line blocks: one frame is one block (Height lines), ids from frame ids.

    What the camera source reports lost (skipped block ids, an outage: its :class:`FrameGap` records, in block ids)
    rides on the next block as ``meta["source_gaps"]`` (in words) and ``meta["source_outage"]``; the assembler
    turns the gap it sees in the block ids into the ledger's gap record, in part ids, with that text."""

    def __init__(self, camera) -> None:  # a GenICamSource
        self.camera = camera
        self.name = camera.name
        self._reported: list = []  # the camera's gap records since the last block
        camera.ledger_sink = self._reported.append

    def open(self) -> None:
        self.camera.open()

    def close(self) -> None:
        self.camera.close()

    def stop(self) -> None:
        self.camera.stop()

    def health(self) -> SourceHealth:
        return self.camera.health()

    def __iter__(self) -> Iterator[LineBlock]:
        for frame in self.camera:
            meta = {"incomplete": bool(frame.meta.get("incomplete", False))}
            if self._reported:
                reported, self._reported[:] = list(self._reported), []
                meta["source_gaps"] = "; ".join(getattr(r, "detail", "") or type(r).__name__ for r in reported)
                meta["source_outage"] = any(getattr(r, "kind", None) is GapKind.OUTAGE for r in reported)
            yield LineBlock(lines=frame.image, block_id=frame.frame_id, timestamp_ns=frame.timestamp_ns, meta=meta)


class LineScanSource(FrameSource):
    """Parts assembled from a block source, one :class:`~inspection_core.records.Frame` per part (see the module doc).

    ``listener`` (set before the source opens, e.g. an :class:`inspection.inspector.Inspector` with
    ``streaming=True``) is told about each part while it arrives. ``stats`` are the assembler's counters
    (missing and late blocks...).
    """

    def __init__(self, blocks, *, part_lines: int | None = None, part_mode: PartMode | str = PartMode.FIXED,
                 max_part_lines: int = 65536, line_rate_hz: float = 0.0, late_tolerance_ms: float = 100.0,
                 listener: PartListener | None = None, name: str | None = None) -> None:
        super().__init__(name or getattr(blocks, "name", "linescan"))
        self.blocks = blocks
        self.listener = listener
        self._settings = dict(part_lines=part_lines, mode=PartMode(part_mode), max_part_lines=max_part_lines,
                              line_rate_hz=line_rate_hz, late_tolerance_ms=late_tolerance_ms)
        self.assembler = StripAssembler(**self._settings)  # checks the settings now, so a bad recipe fails early

    @property
    def stats(self):
        return self.assembler.stats

    def _open(self) -> None:
        self.assembler = StripAssembler(**self._settings, listener=self.listener, source=self.name)
        if hasattr(self.blocks, "open"):
            self.blocks.open()

    def _close(self) -> None:
        if hasattr(self.blocks, "close"):
            self.blocks.close()

    def stop(self) -> None:
        super().stop()
        if hasattr(self.blocks, "stop"):
            self.blocks.stop()

    def _frames(self) -> Iterator[Frame]:
        assembler = self.assembler
        try:
            for block in self.blocks:
                parts = assembler.feed(block)
                self._sync()
                for part in parts:
                    yield part.to_frame(self.name)
                if self.stop_requested:
                    return
            if not self.stop_requested:
                for part in assembler.flush():
                    self._sync()
                    yield part.to_frame(self.name)
        finally:
            # a part still arriving when the source stops is never inspected: it gets a NOT_INSPECTED row
            partial = assembler.abandon()
            self._sync()
            if partial is not None:
                index, received, lines, delivered_ns = partial
                self._report(NotInspected(
                    frame_id=index, timestamp_ns=delivered_ns, source=self.name, reason=NotInspectedReason.STOPPED,
                    detail=f"the source stopped while part {index} was arriving ({received} of its first {lines} "
                           "lines received)", identity=PartIdentity(part_id=str(index))))

    def _sync(self) -> None:
        """Copy the assembler's counters into the health snapshot, and hand its gap records to the ledger."""
        for gap in self.assembler.take_gaps():
            self._report(gap)
        self._sync_health()

    def _sync_health(self) -> None:
        s = self.assembler.stats
        with self._health_lock:
            self._health["lost_frames"] = s.missing_blocks
            self._health["incomplete_frames"] = s.incomplete_parts

    def health(self) -> SourceHealth:
        own = super().health()
        inner = getattr(self.blocks, "health", None)
        if inner is None:
            return own
        camera = inner()
        state = camera.state if own.state is not CameraState.STOPPED else own.state
        return SourceHealth(state=state, frames=own.frames, lost_frames=own.lost_frames,
                            incomplete_frames=own.incomplete_frames, skipped_files=0,
                            reconnects=camera.reconnects, last_error=camera.last_error or own.last_error)


def replay_image(path: str | Path | None = None, screen_seed: int = 0,
                 screen_size: tuple[int, int] = (10240, 5120)) -> tuple[np.ndarray, str]:
    """The image a line-scan replay streams and its description: a grey image file, or (without ``path``) the
    synthetic screen ``screen_seed`` of ``screen_size`` = (lines, width) from :mod:`engines.data.synthetic_screen`."""
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise SourceError(f"line-scan replay image {path} not found; check the path, or leave [source] path out "
                              "to stream a synthetic screen")
        try:
            return read_image(path, grey=True), str(path)
        except ImageReadError as exc:
            raise SourceError(f"cannot read the line-scan replay image {path}: {exc.reason}") from None
    lines, width = screen_size
    try:
        spec = ScreenSpec(size=(int(lines), int(width)))
    except ValueError as exc:
        raise SourceError(f"screen_size {tuple(screen_size)!r}: {exc}") from None
    return make_screen(int(screen_seed), spec).image, f"synthetic screen {screen_seed} ({lines}x{width})"


def build_linescan_source(config: Any, listener: PartListener | None = None) -> LineScanSource:
    """The line-scan source a recipe's ``[source]`` table describes (``kind = "linescan-replay"``, or
    ``kind = "genicam"`` with ``line_scan = true``); unopened."""
    kind = getattr(config.kind, "value", config.kind)
    common = dict(part_mode=config.part_mode, max_part_lines=config.max_part_lines,
                  line_rate_hz=config.line_rate_hz, late_tolerance_ms=config.late_tolerance_ms, listener=listener)
    if kind == "genicam":
        camera = GenICamSource(cti=config.cti, device=config.device, pixel_format=config.pixel_format,
                               frame_rate=config.frame_rate, exposure_us=config.exposure_us,
                               height=config.block_lines, num_buffers=config.buffers, trigger=config.trigger,
                               nodes=config.nodes)
        return LineScanSource(GenICamBlocks(camera), part_lines=config.part_lines, **common)
    image, what = replay_image(config.path, config.screen_seed, tuple(config.screen_size))
    replay = LineScanReplay(image, block_lines=config.block_lines, line_rate_hz=config.line_rate_hz,
                            passes=None if config.loop else 1, gap_lines=config.gap_lines,
                            name=f"linescan-replay:{what}")
    part_lines = config.part_lines if config.part_lines is not None else image.shape[0]
    return LineScanSource(replay, part_lines=part_lines, **common)
