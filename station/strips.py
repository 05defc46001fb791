# Over 500 lines on purpose: the strip assembler's state (blocks, gaps, lateness, parts) is one unit.
"""Line-scan strips: blocks of lines in, parts out (the sources that deliver the blocks are in
:mod:`station.sources.linescan`).

A line-scan camera delivers *blocks* of lines (:class:`~inspection_core.records.LineBlock`: n lines of one image row
each, a block id, a host timestamp, optional line counter, per-line timestamps and metadata such as the part-present
signal), not frames. :class:`StripAssembler` turns that stream into :class:`Part` records, in one of two modes:

- ``PartMode.FIXED``: every ``part_lines`` lines of the stream make a part (lines are counted from the first line
  the assembler saw, so a lost block never shifts the parts that follow);
- ``PartMode.TRIGGER``: lines whose ``meta["part_present"]`` signal is high make a part (a rising edge starts one, a
  falling edge ends it). The signal is a bool for the whole block or one bool per line; it mirrors the camera's
  frame-active status when a part sensor drives its frame-start trigger.

>>> import numpy as np
>>> assembler = StripAssembler(part_lines=4)
>>> parts = [p for i in range(3) for p in assembler.feed(LineBlock(np.zeros((2, 8), np.uint8), i, i * 1000))]
>>> [(p.index, p.lines, p.complete) for p in parts]
[(1, 4, True)]

Nothing is glued silently:

- **missing lines** (a gap in the block ids, or in the line counter when the source provides one, or a block the
  producer flagged ``meta["incomplete"]``) are counted and marked. In fixed mode they stay in the part as rows of
  zeros, listed in ``Part.gaps`` (the part keeps its length and its rows their place). In trigger mode the signal of
  the missing lines is unknown, so a part never goes on across them (two parts would be glued into one): the part
  open when lines go missing ends there, and a part that starts right after missing lines (its start may lie among
  them) is marked too. Either way the part is ``complete = False``;
- **late blocks** (delivered more than ``late_tolerance_ms`` after their last line was taken) keep their data but
  are listed in ``Part.late`` and counted; they do not make a part incomplete;
- a block id that goes backwards (not a counter wrap) is a restart of the camera's counters (a reconnect): the part
  being built ends incomplete; a repeated block id is a duplicate and is discarded (counted as stale);
- every other reason a part is incomplete (cut short, camera restart...) is a sentence in ``Part.issues``.

Every run of missing lines is also a :class:`~inspection_core.records.FrameGap` for the part ledger (a GAP row;
:meth:`StripAssembler.take_gaps`), in part ids: ``count`` is the parts lost entirely (fixed mode), whose ids are
``first_id .. last_id``; a run that only cut into parts (which are emitted incomplete and fail) or that lies where
the part-present signal is unknown (trigger mode: a part may have passed unseen, it cannot be counted) has
``count = 0`` and the empty range ``first_id .. first_id - 1``, ``first_id`` being the part it touched (fixed mode)
or the next part (trigger mode). The detail says which lines, blocks and parts.

A listener (:class:`PartListener`, e.g. an :class:`inspection.inspector.Inspector` with ``streaming=True``) is
told when a part starts, after every block (with a read-only view of the part's lines so far) and when it ends, so
work on a part can start while it is still arriving.
"""
from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, fields
from typing import Any, Protocol

import numpy as np

from inspection_core.records import Frame, FrameGap, GapKind, LineBlock, PartIdentity
from station.errors import SourceError

log = logging.getLogger(__name__)

#: Trigger mode: lines a part buffer starts with (it doubles as the part grows, up to ``max_part_lines``).
FIRST_CAPACITY = 4096


class PartMode(str, enum.Enum):
    """How the stream of lines is cut into parts."""

    FIXED = "fixed"  # every ``part_lines`` lines
    TRIGGER = "trigger"  # while the part-present signal in the block metadata is high


class EndReason(str, enum.Enum):
    """Why a part ended."""

    LENGTH = "length"  # fixed mode: ``part_lines`` reached
    TRIGGER = "trigger"  # the part-present signal fell
    TRUNCATED = "truncated"  # trigger mode: ``max_part_lines`` reached with the signal still high
    STREAM_END = "stream_end"  # the stream ended (or was stopped) inside the part
    GAP = "gap"  # trigger mode: lines went missing while the part was open
    RESTART = "restart"  # the camera's counters restarted or the line width changed


@dataclass(frozen=True, eq=False)
class Part:
    """One part assembled from line blocks.

    ``image`` is uint8 ``(lines, width[, C])`` with missing lines as rows of zeros; ``first_line`` the stream line
    number of its first row; ``line_timestamps_ns`` when each row was taken (0 for missing rows; estimated from the
    block's delivery time and the line period where the source gives no per-line times); ``gaps`` the missing row
    ranges ``(start, stop)`` in part rows; ``late`` the ``(start, stop, lateness_ms)`` rows delivered late;
    ``issues`` the other reasons it is incomplete (cut short, started right after missing lines, camera restart);
    ``complete`` means no gap and no issue; ``last_line_ns`` the host time its last line was delivered (where the
    "last line to verdict" latency starts).
    """

    index: int
    image: np.ndarray
    first_line: int
    line_timestamps_ns: np.ndarray
    gaps: tuple[tuple[int, int], ...]
    late: tuple[tuple[int, int, float], ...]
    issues: tuple[str, ...]
    end: EndReason
    blocks: int
    last_line_ns: int

    @property
    def lines(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def last_line(self) -> int:
        return self.first_line + self.lines - 1

    @property
    def complete(self) -> bool:
        return not self.issues and not self.gaps

    @property
    def missing_lines(self) -> int:
        return sum(b - a for a, b in self.gaps)

    def to_frame(self, source: str) -> Frame:
        """The part as a :class:`~inspection_core.records.Frame` for the line: ``frame_id`` and the part id (its
        identity) are the part index, ``timestamp_ns`` the delivery of its last line, and ``meta`` says where it lies
        and what is missing."""
        valid = self.line_timestamps_ns[self.line_timestamps_ns > 0]
        return Frame(image=self.image, frame_id=self.index, timestamp_ns=self.last_line_ns, source=source, meta={
            "part": self.index, "first_line": self.first_line, "last_line": self.last_line, "lines": self.lines,
            "complete": self.complete, "incomplete": not self.complete, "issues": list(self.issues),
            "gaps": [list(g) for g in self.gaps], "late": [list(g) for g in self.late], "end": self.end.value,
            "blocks": self.blocks, "first_line_ns": int(valid[0]) if valid.size else 0,
            "last_line_taken_ns": int(valid[-1]) if valid.size else 0,
            "line_timestamps_ns": self.line_timestamps_ns,
        }, identity=PartIdentity(part_id=str(self.index)))


class PartListener(Protocol):
    """Told about parts as they are built (on the acquisition thread: return quickly)."""

    def part_started(self, index: int, width: int, expected_lines: int | None) -> None: ...

    def lines_arrived(self, index: int, lines: np.ndarray) -> None:
        """``lines`` is a read-only view of the part's rows so far (missing rows are zeros); rows never change."""

    def part_ended(self, part: Part) -> None: ...

    def part_discarded(self, index: int) -> None:
        """A started part was dropped (it held no line at all)."""


@dataclass
class AssemblerStats:
    """What the assembler saw; ``lost_parts`` are fixed-mode parts that fell entirely into missing lines."""

    blocks: int = 0
    lines: int = 0
    missing_blocks: int = 0
    missing_lines: int = 0
    incomplete_blocks: int = 0
    late_blocks: int = 0
    stale_blocks: int = 0
    restarts: int = 0
    parts: int = 0
    incomplete_parts: int = 0
    lost_parts: int = 0
    max_lateness_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def frame_gap(previous: int, current: int) -> int:
    """Frames missing between two consecutive block ids, allowing for counter wrap-around.

    GigE Vision block ids are 16 bit and skip 0 after a wrap; GenTL frame ids are 64 bit. A backwards jump
    far from a counter limit is a restart of the counter (e.g. after a reconnect), not a loss.

    >>> frame_gap(7, 8), frame_gap(7, 10), frame_gap(65535, 1), frame_gap(65534, 2), frame_gap(500, 1)
    (0, 2, 0, 2, 0)
    """
    if current > previous:
        return current - previous - 1
    if current == previous:
        return 0
    for bits in (16, 32, 64):
        top = (1 << bits) - 1
        if previous <= top:
            if previous >= top - (top >> 4):  # within the last 1/16 of the counter range: a wrap
                return (top - previous) + max(current - 1, 0)
            break
    return 0


def _is_wrap(previous: int, current: int) -> bool:
    """Whether ``current <= previous`` is a wrap of a 16-, 32- or 64-bit block counter (see ``frame_gap``)."""
    for bits in (16, 32, 64):
        top = (1 << bits) - 1
        if previous <= top:
            return previous >= top - (top >> 4)
    return False


class _Building:
    """The part being assembled: a buffer of rows (grown by doubling in trigger mode) and its bookkeeping."""

    def __init__(self, index: int, first_line: int, width: int, extra: tuple[int, ...], capacity: int,
                 max_lines: int) -> None:
        self.index, self.first_line, self.max_lines = index, first_line, max_lines
        self.image = np.zeros((capacity, width) + extra, np.uint8)
        self.stamps = np.zeros(capacity, np.int64)
        self.filled = 0  # rows written (received or missing)
        self.received = 0  # rows actually received
        self.gaps: list[list[int]] = []
        self.late: list[tuple[int, int, float]] = []
        self.issues: list[str] = []
        self.blocks = 0
        self.last_line_ns = 0

    def _ensure(self, rows: int) -> None:
        if rows <= self.image.shape[0]:
            return
        capacity = min(self.max_lines, max(rows, 2 * self.image.shape[0]))
        image = np.zeros((capacity,) + self.image.shape[1:], np.uint8)
        image[: self.filled] = self.image[: self.filled]
        stamps = np.zeros(capacity, np.int64)
        stamps[: self.filled] = self.stamps[: self.filled]
        self.image, self.stamps = image, stamps  # views handed out earlier keep the old buffer alive

    def put(self, lines: np.ndarray | None, stamps: np.ndarray | None, count: int) -> None:
        """Append ``count`` rows: received ``lines`` (with ``stamps``), or missing rows (``lines`` None)."""
        self._ensure(self.filled + count)
        rows = slice(self.filled, self.filled + count)
        if lines is None:
            if self.gaps and self.gaps[-1][1] == self.filled:
                self.gaps[-1][1] += count
            else:
                self.gaps.append([self.filled, self.filled + count])
        else:
            self.image[rows] = lines
            self.stamps[rows] = stamps
            self.received += count
        self.filled += count

    def view(self) -> np.ndarray:
        out = self.image[: self.filled]
        out.flags.writeable = False  # a read-only view; the buffer itself stays writeable for later rows
        return out


class StripAssembler:
    """Turns line blocks into parts (see the module docstring). Not thread-safe: feed it from one thread.

    ``part_lines`` (fixed mode) is the length of a part; ``max_part_lines`` (trigger mode) cuts a part whose
    signal stays high too long (it is marked incomplete, and no new part starts until the signal falls);
    ``line_rate_hz`` (0 = unknown) estimates line times and judges lateness when blocks carry no per-line times;
    ``late_tolerance_ms`` is how late a block may be delivered before it is reported; ``source`` names the source
    in the gap records (:meth:`take_gaps`).
    """

    def __init__(self, part_lines: int | None = None, mode: PartMode | str = PartMode.FIXED, *,
                 max_part_lines: int = 65536, line_rate_hz: float = 0.0, late_tolerance_ms: float = 100.0,
                 listener: PartListener | None = None, source: str = "linescan") -> None:
        self.mode = PartMode(mode)
        if self.mode is PartMode.FIXED:
            if isinstance(part_lines, bool) or not isinstance(part_lines, int) or part_lines < 1:
                raise SourceError(f"fixed-length parts need part_lines >= 1, got {part_lines!r}")
        if isinstance(max_part_lines, bool) or not isinstance(max_part_lines, int) or max_part_lines < 1:
            raise SourceError(f"max_part_lines must be an integer >= 1, got {max_part_lines!r}")
        if not line_rate_hz >= 0 or not late_tolerance_ms > 0:
            raise SourceError(f"need line_rate_hz >= 0 and late_tolerance_ms > 0, got {line_rate_hz!r}, "
                              f"{late_tolerance_ms!r}")
        self.part_lines = part_lines
        self.max_part_lines = part_lines if self.mode is PartMode.FIXED else max_part_lines
        self.line_period_ns = 1e9 / line_rate_hz if line_rate_hz else 0.0
        self.late_tolerance_ns = late_tolerance_ms * 1e6
        self.listener = listener
        self.source = source
        self.stats = AssemblerStats()
        self._part: _Building | None = None
        self._index = 0  # last part index handed out
        self._lost: list[int] = []  # ids of parts lost entirely, not yet in a gap record
        self._gaps: list[FrameGap] = []  # gap records not yet taken
        self._reset_stream()

    def _reset_stream(self) -> None:
        self._next_line: int | None = None  # stream line number expected next
        self._origin = 0  # fixed mode: stream line of the first part's first line
        self._index_base = self._index  # fixed mode: part index = base + 1 + (line - origin) // part_lines
        self._last_id: int | None = None
        self._last_block_lines = 0
        self._last_ts = 0
        self._baseline_ns: float | None = None  # smallest (delivery - line * period) seen: on-time delivery
        self._width: tuple[int, ...] | None = None
        self._gap_before = 0  # trigger mode: lines missing since the last received line, no part open
        self._suppress = False  # trigger mode: cut at max_part_lines, waiting for the signal to fall

    # -- feeding -------------------------------------------------------------------------------------------
    def feed(self, block: LineBlock) -> list[Part]:
        """Add one block; returns the parts it completed (usually none or one)."""
        done: list[Part] = []
        shape = block.lines.shape[1:]
        if self._last_id is not None:
            if block.block_id == self._last_id:
                self.stats.stale_blocks += 1
                log.warning("block %d delivered twice: the repeat is discarded", block.block_id)
                return done
            restart = block.block_id < self._last_id and not _is_wrap(self._last_id, block.block_id)
            if block.first_line is not None and self._next_line is not None and block.first_line < self._next_line:
                restart = True
            if restart or shape != self._width:
                why = ("the camera's counters restarted (block %d after %d)" % (block.block_id, self._last_id)
                       if restart else f"the line width changed from {self._width} to {shape}")
                log.warning("line-scan stream: %s; the part being built ends incomplete", why)
                self.stats.restarts += 1
                done += self._close(EndReason.RESTART, why)
                self._gap_of_lost(f"{why}: none of its lines was received", block.timestamp_ns)
                self._reset_stream()
        if self._last_id is None:
            self._width = shape
            self._next_line = block.first_line if block.first_line is not None else 0
            self._origin = self._next_line
        assert self._next_line is not None
        # where the block lies in the stream, and what is missing before it
        if block.first_line is not None:
            start = block.first_line
        elif self._last_id is None:
            start = self._next_line
        else:
            missing_blocks = frame_gap(self._last_id, block.block_id)
            start = self._next_line + missing_blocks * self._last_block_lines
        if start > self._next_line:
            missing = start - self._next_line
            self.stats.missing_lines += missing
            self.stats.missing_blocks += max(1, round(missing / max(1, self._last_block_lines or block.n_lines)))
            log.warning("line-scan stream: %d lines missing (lines %d..%d) before block %d", missing,
                        self._next_line, start - 1, block.block_id)
            a = self._next_line
            done += self._missing(a, start)
            blocks = (f"blocks {self._last_id + 1} .. {block.block_id - 1} lost" if block.block_id > self._last_id + 1
                      else f"lost between blocks {self._last_id} and {block.block_id}")
            self._gap(a, start, blocks, block, self._last_ts or block.timestamp_ns)
        elif block.meta.get("source_gaps"):  # the source lost something that cost no line we can count: say so
            k = self._fixed_part(start)[0] if self.mode is PartMode.FIXED else self._index + 1
            self._gaps.append(FrameGap(
                source=self.source, kind=GapKind.OUTAGE if block.meta.get("source_outage") else GapKind.LOST_IDS,
                first_id=k, last_id=k - 1, count=0, start_ns=int(self._last_ts or block.timestamp_ns),
                end_ns=int(block.timestamp_ns), detail=f"no line missing by the block count before block "
                                                      f"{block.block_id} (the source: {block.meta['source_gaps']})"))
        n = block.n_lines
        stamps = self._line_times(block)
        lateness_ns = self._lateness(block, start, stamps)
        late = lateness_ns > self.late_tolerance_ns
        if late:
            self.stats.late_blocks += 1
            log.warning("line-scan block %d (lines %d..%d) delivered %.1f ms after its last line", block.block_id,
                        start, start + n - 1, lateness_ns / 1e6)
        self.stats.max_lateness_ms = max(self.stats.max_lateness_ms, lateness_ns / 1e6)
        self.stats.blocks += 1
        self.stats.lines += n
        if block.meta.get("incomplete"):
            self.stats.incomplete_blocks += 1
            log.warning("line-scan block %d was delivered incomplete: its %d lines count as missing",
                        block.block_id, n)
            done += self._missing(start, start + n, self._signal(block), block.timestamp_ns)
            self._gap(start, start + n, f"block {block.block_id} delivered incomplete", block, block.timestamp_ns)
        else:
            done += self._received(block, start, stamps, lateness_ns / 1e6 if late else None)
        self._last_id, self._last_block_lines, self._last_ts = block.block_id, n, block.timestamp_ns
        self._next_line = start + n
        self._gap_of_lost("none of its lines was received", block.timestamp_ns)  # a guard: none are left here
        return done

    def flush(self) -> list[Part]:
        """End of stream: the part being built (if any) ends incomplete."""
        if self._part is None:
            return []
        if self.mode is PartMode.FIXED:
            why = f"the stream ended after {self._part.filled} of the part's {self.part_lines} lines"
        else:
            why = "the stream ended while the part-present signal was high"
        done = self._close(EndReason.STREAM_END, why)
        self._gap_of_lost("the stream ended: none of its lines was received", self._last_ts)
        return done

    def abandon(self) -> tuple[int, int, int, int] | None:
        """Drop the part being built without emitting it (the source was stopped); the listener is told. Returns
        ``(index, lines received, lines so far, delivery time of its last block)`` of a part that had received
        lines (it passed the camera, at least in part, and is not inspected), else None."""
        building, self._part = self._part, None
        if building is None:
            return None
        if self.listener is not None:
            self.listener.part_discarded(building.index)
        if building.received == 0:  # only missing lines: a lost part
            self.stats.lost_parts += 1
            self._lost.append(building.index)
            self._gap_of_lost("the source stopped while it was arriving: none of its lines was received",
                              self._last_ts)
            return None
        return building.index, building.received, building.filled, building.last_line_ns

    def take_gaps(self) -> list[FrameGap]:
        """The gap records made since the last call (see the module docstring), oldest first."""
        gaps, self._gaps = self._gaps, []
        return gaps

    # -- gaps ----------------------------------------------------------------------------------------------
    @staticmethod
    def _signal(block: LineBlock) -> np.ndarray | None:
        try:
            return block.part_present()
        except ValueError as exc:
            raise SourceError(f"line block {block.block_id}: {exc}") from None

    def _take_lost(self) -> tuple[int, int, int]:
        """``(first id, last id, count)`` of the parts lost entirely since the last gap record."""
        lost, self._lost = self._lost, []
        return (min(lost), max(lost), len(lost)) if lost else (0, -1, 0)

    def _gap(self, a: int, b: int, what: str, block: LineBlock, start_ns: int) -> None:
        """The gap record of missing stream lines ``a .. b - 1`` (``what``: how they went missing), found at
        ``block``."""
        first, last, count = self._take_lost()
        lines = f"lines {a} .. {b - 1} ({b - a} lines; {what})"
        if self.mode is PartMode.FIXED:
            touched = sorted({self._fixed_part(a)[0], self._fixed_part(b - 1)[0]} - set(range(first, last + 1)))
            said = []
            if count:
                said.append(f"part{'s' if count > 1 else ''} {first}{f' .. {last}' if count > 1 else ''} lost entirely")
            if touched:
                said.append(f"part {touched[0]} keeps them as zero rows and fails as incomplete" if len(touched) == 1
                            else f"parts {' and '.join(map(str, touched))} keep them as zero rows and fail as "
                                 "incomplete")
            if not count:
                first, last = touched[0], touched[0] - 1
        else:
            first, last = self._index + 1, self._index
            said = ["the part-present signal there is unknown: a part may have passed among them unseen (not "
                    "counted); a part they cut, or that follows them, fails as incomplete"]
        note = block.meta.get("source_gaps")
        kind = GapKind.OUTAGE if block.meta.get("source_outage") else GapKind.LOST_IDS
        detail = f"{lines}: {'; '.join(said)}" + (f" (the source: {note})" if note else "")
        self._gaps.append(FrameGap(source=self.source, kind=kind, first_id=first, last_id=last, count=count,
                                   start_ns=int(start_ns), end_ns=int(block.timestamp_ns), detail=detail))

    def _gap_of_lost(self, why: str, end_ns: int) -> None:
        """A gap record for parts lost entirely outside a run of missing lines (cut by a restart, the stream's end
        or a stop with nothing received), if any."""
        first, last, count = self._take_lost()
        if count:
            ids = f"part {first}" if count == 1 else f"parts {first} .. {last}"
            self._gaps.append(FrameGap(source=self.source, kind=GapKind.LOST_IDS, first_id=first, last_id=last,
                                       count=count, start_ns=int(self._last_ts or end_ns), end_ns=int(end_ns),
                                       detail=f"{ids} lost entirely: {why}"))

    # -- timing --------------------------------------------------------------------------------------------
    def _line_times(self, block: LineBlock) -> np.ndarray:
        if block.line_timestamps_ns is not None:
            return block.line_timestamps_ns
        n, ts = block.n_lines, block.timestamp_ns
        if self.line_period_ns:
            return ts - np.round((n - 1 - np.arange(n)) * self.line_period_ns).astype(np.int64)
        if self._last_ts and ts > self._last_ts:
            return self._last_ts + np.round((np.arange(n) + 1) * ((ts - self._last_ts) / n)).astype(np.int64)
        return np.full(n, ts, np.int64)

    def _lateness(self, block: LineBlock, start: int, stamps: np.ndarray) -> float:
        """How long after its last line was taken the block was delivered (ns; 0 when it cannot be told)."""
        if block.line_timestamps_ns is not None:
            return float(max(0, block.timestamp_ns - int(stamps[-1])))
        if not self.line_period_ns:
            return 0.0
        offset = block.timestamp_ns - (start + block.n_lines - 1) * self.line_period_ns
        self._baseline_ns = offset if self._baseline_ns is None else min(self._baseline_ns, offset)
        return max(0.0, offset - self._baseline_ns)

    # -- parts ---------------------------------------------------------------------------------------------
    def _open(self, index: int, first_line: int, capacity: int) -> _Building:
        assert self._width is not None
        width, extra = self._width[0], tuple(self._width[1:])
        self._part = _Building(index, first_line, width, extra, capacity, self.max_part_lines)
        if self.listener is not None:
            self.listener.part_started(index, width, self.part_lines if self.mode is PartMode.FIXED else None)
        return self._part

    def _notify(self) -> None:
        if self.listener is not None and self._part is not None:
            self.listener.lines_arrived(self._part.index, self._part.view())

    def _close(self, reason: EndReason, issue: str | None = None) -> list[Part]:
        building, self._part = self._part, None
        if building is None:
            return []
        if issue:
            building.issues.append(issue)
        if building.received == 0:  # nothing but missing lines: nothing to inspect, a gap record
            self.stats.lost_parts += 1
            self._lost.append(building.index)
            if self.listener is not None:
                self.listener.part_discarded(building.index)
            return []
        image = building.image[: building.filled]
        stamps = building.stamps[: building.filled]
        if building.image.shape[0] > building.filled * 5 // 4:  # do not keep a much larger buffer alive
            image, stamps = image.copy(), stamps.copy()
        image.flags.writeable = False
        part = Part(index=building.index, image=image, first_line=building.first_line, line_timestamps_ns=stamps,
                    gaps=tuple((a, b) for a, b in building.gaps), late=tuple(building.late),
                    issues=tuple(building.issues), end=reason, blocks=building.blocks,
                    last_line_ns=building.last_line_ns)
        self.stats.parts += 1
        if not part.complete:
            self.stats.incomplete_parts += 1
        if self.listener is not None:
            self.listener.part_ended(part)
        return [part]

    def _fixed_part(self, line: int) -> tuple[int, int, int]:
        """Fixed mode: (index, first line, end line) of the part holding stream line ``line``."""
        assert self.part_lines is not None
        k = (line - self._origin) // self.part_lines
        first = self._origin + k * self.part_lines
        return self._index_base + 1 + k, first, first + self.part_lines

    def _missing(self, a: int, b: int, signal: np.ndarray | None = None, when_ns: int = 0) -> list[Part]:
        """Stream lines ``a .. b - 1`` are missing (``signal``: their part-present signal when it is known)."""
        done: list[Part] = []
        if self.mode is PartMode.FIXED:
            while a < b:
                index, first, end = self._fixed_part(a)
                if self._part is not None and self._part.index != index:
                    done += self._close(EndReason.LENGTH)
                stop = min(b, end)
                if self._part is None:
                    if a == first and stop == end:  # whole parts are missing: count them and skip ahead
                        lost = (b - first) // self.part_lines
                        self.stats.lost_parts += lost
                        self._lost.extend(range(index, index + lost))
                        self._index = max(self._index, index + lost - 1)
                        a = first + lost * self.part_lines
                        continue
                    self._index = max(self._index, index)
                    self._open(index, first, self.part_lines)
                    if a > first:  # cannot happen (lines are handled in order); kept as a guard
                        self._part.put(None, None, a - first)
                assert self._part is not None
                self._part.put(None, None, stop - a)
                self._notify()
                a = stop
                if a == end:
                    done += self._close(EndReason.LENGTH)
            return done
        # trigger mode: the signal of missing lines is unknown, so a part never goes on across them (two parts
        # could be glued into one): the open part ends here, and a part starting right after them is marked too
        count = b - a
        if self._part is not None:
            done += self._close(EndReason.GAP, f"{count} lines went missing right after its last row: the part may "
                                               "go on in the next one")
        self._gap_before += count
        if signal is not None and not signal[-1]:  # the signal is known low at the end: the next part is whole
            self._gap_before, self._suppress = 0, False
        return done

    def _received(self, block: LineBlock, start: int, stamps: np.ndarray, late_ms: float | None) -> list[Part]:
        n = block.n_lines
        done: list[Part] = []
        if self.mode is PartMode.FIXED:
            i = 0
            while i < n:
                index, first, end = self._fixed_part(start + i)
                if self._part is not None and self._part.index != index:
                    done += self._close(EndReason.LENGTH)
                if self._part is None:
                    self._index = max(self._index, index)
                    self._open(index, first, self.part_lines)
                    if start + i > first:  # the part's first lines came before the stream started (or are lost)
                        self._part.put(None, None, start + i - first)
                j = min(n, i + end - (start + i))
                self._write(block, i, j, stamps, late_ms)
                i = j
                if start + i == end:
                    done += self._close(EndReason.LENGTH)
            return done
        signal = self._signal(block)
        if signal is None:
            raise SourceError(f"trigger mode needs a part-present signal in every block's metadata "
                              f"(meta['part_present']); block {block.block_id} has none - use fixed-length parts "
                              "(part_mode = \"fixed\") or a source that provides the signal")
        i = 0
        while i < n:
            high = bool(signal[i])
            j = i + 1
            while j < n and bool(signal[j]) == high:
                j += 1
            if not high:
                done += self._close(EndReason.TRIGGER)
                self._suppress = False
                self._gap_before = 0
            elif not self._suppress:
                while i < j:
                    if self._part is None:
                        self._index += 1
                        self._open(self._index, start + i, min(FIRST_CAPACITY, self.max_part_lines))
                        if self._gap_before:
                            self._part.issues.append(f"the part started right after {self._gap_before} missing "
                                                     "lines: its start may lie among them")
                            self._gap_before = 0
                    take = min(j - i, self.max_part_lines - self._part.filled)
                    self._write(block, i, i + take, stamps, late_ms)
                    i += take
                    if self._part.filled >= self.max_part_lines:
                        done += self._close(EndReason.TRUNCATED,
                                            f"cut at max_part_lines = {self.max_part_lines} lines")
                        self._suppress = True
                        break
            i = j
        return done

    def _write(self, block: LineBlock, i: int, j: int, stamps: np.ndarray, late_ms: float | None) -> None:
        part = self._part
        assert part is not None
        row = part.filled
        part.put(block.lines[i:j], stamps[i:j], j - i)
        part.blocks += 1
        part.last_line_ns = block.timestamp_ns
        if late_ms is not None:
            part.late.append((row, row + j - i, round(late_ms, 2)))
        self._notify()
