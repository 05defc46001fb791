"""Replay image files as if they came from the camera: for demos, tests and re-inspecting a saved run.

For example, ``ReplaySource("samples/glass", fps=10, loop=True)`` plays a folder of images again and again at
10 frames per second.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from inspection_core import imageio
from inspection_core.errors import ImageReadError
from inspection_core.records import Frame, NotInspected, NotInspectedReason, PartIdentity
from station.errors import SourceError
from station.frameguard import beyond_depth, depth_hint, to_8bit
from station.sources.base import FrameSource

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


def list_images(paths: PathLike | Sequence[PathLike], pattern: str | None = None) -> list[Path]:
    """The image files a replay would show, in order.

    ``paths`` is a folder (its image files, not recursive, filtered by the ``pattern`` glob such as
    ``"*.jpg"`` to leave out masks), one image file, or a list of files (kept in the given order).
    Raises :class:`SourceError` for a missing folder/file or a folder without matching images.
    """
    if isinstance(paths, (str, os.PathLike)):
        root = Path(paths).expanduser()
        if root.is_dir():
            files = imageio.image_files(root, pattern)
            if not files:
                wanted = f"matching {pattern!r}" if pattern else "(" + ", ".join(imageio.IMAGE_SUFFIXES) + ")"
                raise SourceError(
                    f"no image files {wanted} in {root}; put images there, point the replay at another "
                    "folder, or change the pattern"
                )
            return files
        if root.is_file():
            return [root]
        raise SourceError(
            f"replay folder {root} does not exist; check the path (relative paths start at {Path.cwd()}) "
            "or pass --source replay:/path/to/images"
        )
    files = [Path(p).expanduser() for p in paths]
    if not files:
        raise SourceError("the replay file list is empty; pass at least one image file or a folder")
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise SourceError(f"replay files not found: {shown}; check the paths")
    return files


def read_image(path: Path, grey: bool, bit_depth: int = 16) -> np.ndarray:
    """:func:`read_deep_image` without the depth hint."""
    return read_deep_image(path, grey, bit_depth)[0]


def read_deep_image(path: Path, grey: bool, bit_depth: int = 16) -> tuple[np.ndarray, str | None]:
    """Decode one image as uint8 grey ``(H, W)`` or RGB ``(H, W, 3)`` with the station's one reader
    (:func:`inspection_core.imageio.read_image`, safe for non-ASCII paths); raises its typed
    :class:`~inspection_core.errors.ImageReadError` (a user error) for a file that cannot be read (``os_error``) or
    is not an image (``reason``: ``"empty file"``, ``"not a decodable image ..."``). A 16-bit file is read at its
    depth and scaled to 8 bits by ``bit_depth``, its significant bits (:func:`station.frameguard.to_8bit`: 12-bit
    data in a 16-bit PNG is shifted by 4, not read near-black). The second item is what a 16-bit file's values say
    of its real depth when ``bit_depth`` is too large for them (:func:`station.frameguard.depth_hint`), else None.
    """
    image = imageio.read_image(path, imageio.ImageMode.GREY if grey else imageio.ImageMode.COLOUR, keep_depth=True)
    if image.dtype == np.uint16:
        if beyond_depth(image, bit_depth):
            logger.warning("%s holds values above %d bits (max %d): they saturate; set [frames] bit_depth to the "
                           "camera's real bit depth", path.name, bit_depth, int(image.max()))
        return to_8bit(image, bit_depth), depth_hint(int(image.max(initial=0)), bit_depth)
    if image.dtype != np.uint8:  # 32-bit float TIFFs and the like: scaled by their own range
        image = np.ascontiguousarray(cv2.convertScaleAbs(image, alpha=255.0 / max(float(image.max()), 1.0)))
    return image, None


class ReplaySource(FrameSource):
    """Image files as frames, optionally looped and paced to a frame rate.

    ``frame_id`` counts parts from 1 over the life of the source (a file is a part each time it is shown); the part id
    (:attr:`Frame.identity <inspection_core.records.Frame.identity>`) is the file's name; ``meta``
    is ``{"file", "path"}``, plus ``"depth_hint"`` for a 16-bit file whose values say ``bit_depth`` is too large
    (:func:`read_deep_image`; the frame guards then refuse it as implausible). Colour frames are RGB (like the camera's); 16-bit files are scaled by ``bit_depth``.
    An unreadable file is a part that cannot be inspected: it takes its frame id and its place in the pace, is
    reported to the ledger as NOT_INSPECTED (``unreadable``, with the reason) each time its turn comes, logged once
    and counted in ``health().skipped_files``; it never ends the replay. Pacing keeps an absolute schedule (no
    drift); a consumer that stalls more than one frame period resets the schedule instead of causing a burst.

    ``triggered``: each file waits for a software trigger (:meth:`fire_trigger`, e.g. OPC UA's StartSingleJob): one
    trigger, one part (a good frame or an unreadable file's NOT_INSPECTED row), no pacing. Triggers fired while a file
    is being read are counted, none is lost. :meth:`set_triggered` switches the mode while the replay runs (OPC UA's
    StartContinuous lets the files flow, Stop holds them again).
    """

    def __init__(
        self,
        paths: PathLike | Sequence[PathLike],
        loop: bool = False,
        fps: float | None = None,
        grey: bool = True,
        name: str | None = None,
        pattern: str | None = None,
        bit_depth: int = 16,
        triggered: bool = False,
    ) -> None:
        if fps is not None and fps <= 0:
            raise SourceError(f"replay fps must be positive, got {fps}; leave it unset to replay at full speed")
        self._files = list_images(paths, pattern)
        if name is None:
            where = Path(paths) if isinstance(paths, (str, os.PathLike)) else self._files[0].parent
            name = f"replay:{where}"
        super().__init__(name)
        self.loop = loop
        self.fps = fps
        self.grey = grey
        self.bit_depth = int(bit_depth)
        self._bad: dict[Path, str] = {}
        self._hints: dict[Path, str] = {}  # files whose values say bit_depth is too large for them
        self._next_id = 1
        self._trigger = threading.Condition()
        self._triggered = bool(triggered)
        self._pending_triggers = 0

    @property
    def triggered(self) -> bool:
        """True while each file waits for :meth:`fire_trigger`."""
        return self._triggered

    def set_triggered(self, on: bool) -> int:
        """Switch triggered mode on (files wait for triggers; pending ones are dropped) or off (files flow at the
        replay's pace); safe from any thread while the replay runs. Returns how many triggers were dropped (fired,
        their file not yet taken)."""
        with self._trigger:
            dropped = self._pending_triggers
            self._triggered = bool(on)
            self._pending_triggers = 0
            self._trigger.notify_all()
            return dropped

    def fire_trigger(self) -> None:
        """Hand over the next file (a part); raises :class:`SourceError` when the replay is not in triggered mode."""
        with self._trigger:
            if not self._triggered:
                raise SourceError(f"{self.name} is not in triggered mode: its files flow by themselves; set "
                                  "[source] trigger = true, or [opcua] control = \"plc\" to drive it over OPC UA")
            self._pending_triggers += 1
            self._trigger.notify_all()

    def _await_trigger(self) -> bool:
        """In triggered mode, wait for a trigger (True) or a stop (False); at once True otherwise."""
        with self._trigger:
            while self._triggered and self._pending_triggers == 0:
                if self.stop_requested:
                    return False
                self._trigger.wait(0.05)  # a stop() elsewhere is seen within 50 ms
            if self._triggered:
                self._pending_triggers -= 1
            return not self.stop_requested

    @property
    def files(self) -> list[Path]:
        """The files this replay shows, in order."""
        return list(self._files)

    def _open(self) -> None:
        pass  # files are listed at construction, so a bad path fails early

    def _close(self) -> None:
        pass  # nothing held between frames

    def _frames(self) -> Iterator[Frame]:
        period = 1.0 / self.fps if self.fps else 0.0
        deadline = time.monotonic()
        while not self.stop_requested:
            shown = 0
            for path in self._files:
                if self.stop_requested:
                    return
                triggered = self._triggered
                if triggered and not self._await_trigger():
                    return
                image = None if path in self._bad else self._read(path)
                if period and not triggered:
                    now = time.monotonic()
                    if now > deadline + period:  # consumer stalled: restart the schedule, no catch-up burst
                        deadline = now
                    if self._stop_event.wait(max(0.0, deadline - now)):
                        return
                    deadline += period
                if not triggered and self._triggered and not self._await_trigger():
                    return  # switched to triggered mode (a PLC's Stop) while this file was read: it waits its trigger
                frame_id, self._next_id = self._next_id, self._next_id + 1
                if image is None:
                    self._report(NotInspected(frame_id=frame_id, timestamp_ns=time.monotonic_ns(), source=self.name,
                                              reason=NotInspectedReason.UNREADABLE, detail=self._bad[path],
                                              file=path.name, identity=PartIdentity(part_id=path.name)))
                    continue
                shown += 1
                yield Frame(
                    image=image,
                    frame_id=frame_id,
                    timestamp_ns=time.monotonic_ns(),
                    source=self.name,
                    meta={"file": path.name, "path": str(path),
                          **({"depth_hint": self._hints[path]} if path in self._hints else {})},
                    identity=PartIdentity(part_id=path.name),  # a replayed part is known by its file's name
                )
            if shown == 0:
                message = (f"none of the {len(self._files)} files in {self.name} could be read; "
                           "see the warnings above and replace or remove the broken files")
                self._set_error(message)
                raise SourceError(message)
            if not self.loop:
                return

    def _read(self, path: Path) -> np.ndarray | None:
        try:
            image, hint = read_deep_image(path, self.grey, self.bit_depth)
        except (ImageReadError, cv2.error) as exc:
            text = exc.reason if isinstance(exc, ImageReadError) else str(exc)
            reason = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
            logger.warning("skipping %s: %s (a NOT_INSPECTED part each time its turn comes)", path, reason)
            self._bad[path] = reason
            self._count("skipped_files")
            self._set_error(f"skipped {path.name}: {reason}")
            return None
        if hint is None:
            self._hints.pop(path, None)
        else:
            self._hints[path] = hint
        return image
