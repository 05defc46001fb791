# Over 500 lines on purpose: one harvesters lifecycle (settings, buffers, reconnects) on one acquirer.
"""GenICam cameras through ``harvesters`` (any GenTL producer; ``viky.cti`` from the ``genicam`` wheel by default).

Rules this module keeps (they are the harvesters rules):

- each frame is copied out of the driver buffer inside ``with ia.fetch(...) as buffer:``; nothing keeps a
  view into a buffer after it goes back to the driver;
- ``Harvester.update()`` is called only before streaming starts and, on reconnect, after the old image
  acquirer has been stopped and destroyed; never while streaming;
- every harvesters call on the acquirer happens under one lock, so :meth:`GenICamSource.close` (or the
  test hook :meth:`GenICamSource._simulate_disconnect`) never runs concurrently with a fetch in the
  acquisition thread. Fetches poll in short slices, so :meth:`stop` ends iteration within ~0.1 s.

For example, on the simulated camera of ``viky.cti``::

    with GenICamSource(device="VikyTL_DEV_red", frame_rate=50) as cam:
        frame = next(iter(cam))
"""
from __future__ import annotations

import enum
import logging
import signal
import threading
import time
import warnings
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

import cv2
import numpy as np

from inspection_core.records import CameraState, Frame, FrameGap, GapKind, PartIdentity
from station.errors import CameraLostError, SourceError
from station.frameguard import to_8bit
from station.recipe import CAMERA_NODES_SET_BY_KEYS, TriggerConfig, TriggerMode
from station.sources.base import FrameSource
from station.sources.genicam_nodes import (CameraClock, PartIdReader, apply_trigger, fire_software_trigger,
                                           write_feature)
from station.sources.genicam_nodes import node_limits as _node_limits
from station.strips import frame_gap

if TYPE_CHECKING:  # harvesters is imported lazily: `import station.sources` works without it
    from harvesters.core import Harvester, ImageAcquirer

logger = logging.getLogger(__name__)

_POLL_S = 0.1  # longest a fetch blocks before the stop flag is checked again
_TRIGGERED_POLL_S = 0.02  # ... when triggered: a software trigger waits for the driver lock at most this long
_FIRST_BACKOFF_S = 0.25

# GenTL producers can be opened once per process (a second Harvester on the same .cti sees no devices),
# so each producer file is held by at most one source at a time: cti path -> the holding source.
_PRODUCERS_IN_USE: dict[str, weakref.ref[GenICamSource]] = {}
_PRODUCERS_LOCK = threading.Lock()

INSTALL_HINT = "install it with `pip install harvesters genicam` (both are in the station's requirements)"


class ColourMode(str, enum.Enum):
    """What the frames look like: the camera's own layout, always grey, or always RGB."""

    AUTO = "auto"
    GREY = "grey"
    RGB = "rgb"


# pixel format -> (channels in the buffer, OpenCV conversion to RGB or None, to grey or None)
_FORMATS: dict[str, tuple[int, int | None, int | None]] = {
    "Mono8": (1, None, None),
    "RGB8": (3, None, cv2.COLOR_RGB2GRAY),
    "RGB8Packed": (3, None, cv2.COLOR_RGB2GRAY),
    "BGR8": (3, cv2.COLOR_BGR2RGB, cv2.COLOR_BGR2GRAY),
    "BGR8Packed": (3, cv2.COLOR_BGR2RGB, cv2.COLOR_BGR2GRAY),
    "RGBa8": (4, cv2.COLOR_RGBA2RGB, cv2.COLOR_RGBA2GRAY),
    "RGBA8Packed": (4, cv2.COLOR_RGBA2RGB, cv2.COLOR_RGBA2GRAY),
    "BGRa8": (4, cv2.COLOR_BGRA2RGB, cv2.COLOR_BGRA2GRAY),
    "BGRA8Packed": (4, cv2.COLOR_BGRA2RGB, cv2.COLOR_BGRA2GRAY),
    # OpenCV names Bayer patterns after the second row, hence the apparent swap
    "BayerRG8": (1, cv2.COLOR_BayerBG2RGB, cv2.COLOR_BayerBG2GRAY),
    "BayerGR8": (1, cv2.COLOR_BayerGB2RGB, cv2.COLOR_BayerGB2GRAY),
    "BayerGB8": (1, cv2.COLOR_BayerGR2RGB, cv2.COLOR_BayerGR2GRAY),
    "BayerBG8": (1, cv2.COLOR_BayerRG2RGB, cv2.COLOR_BayerRG2GRAY),
}
# deep mono formats -> significant bits; scaled to 8 bits by them. Unpacked ones come as two bytes a pixel
# (little-endian); the packed ones (PFNC Mono10p/Mono12p/Mono14p, GigE Vision Mono10Packed/Mono12Packed) are unpacked
# to uint16 values by harvesters (harvesters.util.pfnc) before they get here.
_DEEP_MONO: dict[str, int] = {"Mono10": 10, "Mono12": 12, "Mono14": 14, "Mono16": 16, "Mono10p": 10,
                              "Mono10Packed": 10, "Mono12p": 12, "Mono12Packed": 12, "Mono14p": 14}


def deep_mono_to_8bit(data: np.ndarray, width: int, height: int, pixel_format: str) -> tuple[np.ndarray, bool]:
    """A deep mono buffer (uint16 values, or the bytes of unpacked ones) as a uint8 ``(height, width)`` image scaled
    by the format's bit depth (``_DEEP_MONO``), and whether the buffer came short (zero-padded)."""
    bits = _DEEP_MONO[pixel_format]
    values = data.view(np.uint16) if data.dtype == np.uint8 and data.size % 2 == 0 else data.astype(np.uint16)
    values = values.ravel()
    expected = width * height
    short = values.size < expected
    if short:
        values = np.concatenate([values, np.zeros(expected - values.size, np.uint16)])
    return to_8bit(values[:expected].reshape(height, width), bits), short


def default_cti() -> Path:
    """The simulated producer shipped inside the ``genicam`` wheel (``viky.cti``)."""
    try:
        import genicam
    except ImportError as exc:
        raise SourceError(f"the `genicam` package is missing, so there is no default GenTL producer; "
                          f"{INSTALL_HINT}, or pass --source genicam:/path/to/producer.cti") from exc
    return Path(genicam.__file__).parent / "viky.cti"


def _import_harvester() -> type[Harvester]:
    try:
        with warnings.catch_warnings():  # harvesters.core calls warnings.simplefilter("once") at import
            from harvesters.core import Harvester
    except ImportError as exc:
        raise SourceError(f"the `harvesters` package is missing, so GenICam cameras cannot be used; "
                          f"{INSTALL_HINT}") from exc
    return Harvester


class GenICamSource(FrameSource):
    """Frames from a GenICam camera (GenTL producer ``cti``, default ``viky.cti``).

    ``device`` is an index into the producer's device list or a serial number / device id string.
    Settings that the camera lacks are logged and ignored; invalid values raise :class:`SourceError`
    naming the node and its allowed values. ``frame_id`` counts frames over the life of the source and keeps
    counting across reconnects: it steps by one per frame, plus the frames lost in between (gaps in the camera's
    block id, ``meta["block_id"]``, which restarts after a reconnect; and the estimated frames of an outage);
    ``meta["sequence"]`` counts the frames delivered. Colour frames are RGB; Mono10/12/14/16 frames and the packed
    Mono10p/Mono12p/Mono14p/Mono10Packed/Mono12Packed are scaled to 8 bits by their bit depth, which the frame
    carries (``Frame.bit_depth``), and ``Frame.camera_timestamp_ns`` is the camera's own time stamp where it gives one
    (:class:`~station.sources.genicam_nodes.CameraClock`; ``meta["camera_timestamp"]`` says from where).
    ``part_id`` names the feature each frame's part id is read from (a chunk value such as ``ChunkLineStatusAll``, or
    a line input: :class:`~station.sources.genicam_nodes.PartIdReader`), checked when the camera opens.

    Camera control (docs/INTEGRATION.md): ``nodes`` (``[source.nodes]``) are GenICam features written in order, and
    ``trigger`` (``[source.trigger]``) the trigger set-up, both after the other settings and before streaming starts,
    checked against the camera's node map (a :class:`SourceError` names the feature and what the camera allows).
    They are never written while streaming: :meth:`set_node` refuses while the source is open. With a software
    trigger, :meth:`fire_trigger` executes ``TriggerSoftware``; a triggered camera that delivers nothing is not
    "lost" unless a software trigger went unanswered for ``timeout_s``.
    The driver holds ``num_buffers`` frames: a consumer stalled for longer than that many frame periods makes
    the camera drop frames, which show up as gaps in ``frame_id``.

    Every loss is also reported to the ledger (``ledger_sink``, :class:`~inspection_core.records.FrameGap`): skipped
    block ids as a ``lost_ids`` gap when the next frame arrives, and an outage (LOST until reconnected) as an
    ``outage`` gap with its time span and estimated count (span × frame rate: the set one, else the measured one).

    Health: ``lost_frames`` = gaps in block ids (including wrap-around) and outage estimates; ``incomplete_frames`` = buffers the
    producer reported incomplete (harvesters drops them) plus short buffers (yielded zero-padded with
    ``meta["incomplete"] = True``). With no frame for ``timeout_s`` (at least 2.5 frame periods)
    ``lost_after_timeouts`` times in a row, or a fetch error, the camera is LOST; with ``reconnect`` it is re-found (exponential back-off up to
    ``max_backoff_s``) and iteration continues, otherwise :class:`CameraLostError` is raised.
    """

    def __init__(
        self,
        cti: str | Path | None = None,
        device: int | str = 0,
        pixel_format: str | None = "Mono8",
        frame_rate: float | None = None,
        exposure_us: float | None = None,
        width: int | None = None,
        height: int | None = None,
        timeout_s: float = 2.0,
        reconnect: bool = True,
        max_backoff_s: float = 5.0,
        name: str | None = None,
        colour: ColourMode | str = ColourMode.AUTO,
        num_buffers: int = 16,
        lost_after_timeouts: int = 2,
        trigger: TriggerConfig | None = None,
        nodes: Mapping[str, Any] | Iterable[tuple[str, Any]] = (),
        part_id: str | None = None,
    ) -> None:
        super().__init__(name or f"genicam:{device}")
        self._fixed_name = name is not None
        self.cti = Path(cti).expanduser() if cti is not None else None
        self.device = device
        self.pixel_format = pixel_format
        self.frame_rate = frame_rate
        self.exposure_us = exposure_us
        self.width = width
        self.height = height
        self.timeout_s = float(timeout_s)
        self.reconnect = reconnect
        self.max_backoff_s = float(max_backoff_s)
        try:
            self.colour = ColourMode(colour)
        except ValueError:
            raise SourceError(f"colour must be one of {[m.value for m in ColourMode]}, got {colour!r}") from None
        self.num_buffers = int(num_buffers)
        self.lost_after_timeouts = max(1, int(lost_after_timeouts))
        self.trigger = trigger
        self.part_id = PartIdReader(part_id) if part_id else None  # the feature each frame's part id is read from
        self.nodes: list[tuple[str, Any]] = []
        for node_name, value in (nodes.items() if isinstance(nodes, Mapping) else nodes):
            self._store_node(str(node_name), value)
        self._clock = CameraClock()
        self._trigger_waiting = threading.Event()  # a software trigger wants the driver lock: fetches step aside
        self._unanswered_triggers = 0  # software triggers fired and not yet answered by a frame
        self._io_lock = threading.RLock()  # serialises every call into harvesters
        self._harvester: Harvester | None = None
        self._ia: ImageAcquirer | None = None
        self._last_block_id: int | None = None
        self._sequence = 0
        self._frame_id = 0  # the last frame id given (or skipped as lost)
        self._last_frame_ns: int | None = None
        self._period_ns: float | None = None  # measured frame period (moving average)
        self._outage_since_ns: int | None = None  # set while the camera is lost
        self._pending: list[FrameGap] = []  # gaps found under the driver lock, reported outside it
        self._producer_key: str | None = None
        self.device_id: str | None = None  # the connected device's id_, e.g. "VikyTL_DEV_red"

    # -- open / close ------------------------------------------------------------------------------
    def _open(self) -> None:
        harvester_cls = _import_harvester()
        cti = self.cti or default_cti()
        if not cti.is_file():
            raise SourceError(
                f"GenTL producer {cti} not found; install the camera vendor's GenTL producer (or "
                f"`pip install genicam` for the simulated viky.cti) and pass --source genicam:/path/to/producer.cti"
            )
        self.cti = cti
        self._claim_producer(cti)
        with self._io_lock:
            try:
                self._harvester = harvester_cls()
                self._harvester.add_file(str(cti))
                self._harvester.update()  # not streaming yet: allowed
                self._connect()
            except BaseException as exc:
                self._release(reset_harvester=True)
                if isinstance(exc, Exception) and not isinstance(exc, SourceError):
                    raise SourceError(f"cannot start {self.name} through {cti}: {exc}") from exc
                raise

    def _close(self) -> None:
        with self._io_lock:  # waits for a fetch slice in progress (<= _POLL_S)
            self._release(reset_harvester=True)

    def geometry(self) -> tuple[int | None, int | None, str | None]:
        """``(width, height, pixel format)`` of the camera as it is set up now, read from its node map. The camera
        is opened for it and closed again, so ask before the line starts: a camera that cannot open raises
        :class:`SourceError` here as it would there. ``None`` where the node map does not tell."""
        self.open()
        try:
            with self._io_lock:
                node_map = self._ia.remote_device.node_map
                width, height = int(node_map.Width.value), int(node_map.Height.value)
                fmt = str(node_map.PixelFormat.value) if hasattr(node_map, "PixelFormat") else self.pixel_format
            return width, height, fmt
        except Exception:  # noqa: BLE001 - unknown here: every frame is still checked
            return None, None, self.pixel_format
        finally:
            self.close()

    # -- camera control ----------------------------------------------------------------------------
    @property
    def triggered(self) -> bool:
        """True when frames come on a trigger (``[source.trigger] mode = "On"``), not at the frame rate."""
        return self.trigger is not None and self.trigger.mode is TriggerMode.ON

    def set_node(self, name: str, value: Any) -> None:
        """Set GenICam feature ``name`` to ``value`` for the next :meth:`open` (replacing an earlier value; checked
        against the camera then). Refused while the source is open: features are never written while streaming."""
        if self.is_open:
            raise SourceError(f"{self.name} is streaming: {name} = {value!r} is not written while streaming; stop the "
                              "line (close the source), change [source.nodes], and start it again")
        self._store_node(name, value)

    def node_value(self, name: str) -> Any:
        """The current value of feature ``name`` on the open camera (reading is allowed while streaming)."""
        with self._io_lock:
            if self._ia is None:
                raise SourceError(f"{self.name} is not connected; open it before reading {name}")
            node_map = self._ia.remote_device.node_map
            if not node_map.has_node(name):
                raise SourceError(f"camera {self.device_id} has no feature {name!r}")
            return getattr(node_map, name).value

    def fire_trigger(self) -> None:
        """Execute ``TriggerSoftware``: the camera takes one frame, which iteration then yields (OPC UA's
        StartSingleJob). Needs ``[source.trigger] mode = "On", source = "Software"`` and an open source."""
        if self.trigger is None or not self.trigger.software:
            now = ("no [source.trigger]" if self.trigger is None else
                   f'[source.trigger] mode = "{self.trigger.mode.value}", source = "{self.trigger.source}"')
            raise SourceError(f'{self.name} has no software trigger ({now}); set [source.trigger] mode = "On", '
                              'source = "Software" in the recipe')
        self._trigger_waiting.set()  # the acquisition thread lets go of the driver lock after its current slice
        try:
            with self._io_lock:
                if self._ia is None:
                    raise SourceError(f"{self.name} is not streaming (not opened, or the camera is lost); the "
                                      "trigger was not fired")
                fire_software_trigger(self._ia.remote_device.node_map, device=self.device_id)
                self._unanswered_triggers += 1
        finally:
            self._trigger_waiting.clear()

    def _store_node(self, name: str, value: Any) -> None:
        if name in CAMERA_NODES_SET_BY_KEYS:
            raise SourceError(f"{name} is set by {CAMERA_NODES_SET_BY_KEYS[name]}, not as a node; set it there")
        self.nodes = [(n, v) for n, v in self.nodes if n != name] + [(name, value)]

    def _claim_producer(self, cti: Path) -> None:
        key = str(cti.resolve())
        with _PRODUCERS_LOCK:
            ref = _PRODUCERS_IN_USE.get(key)
            holder = ref() if ref is not None else None
            if holder is not None and holder is not self:
                raise SourceError(
                    f"the GenTL producer {cti} is already open in this process by {holder.name}; a producer can be "
                    "opened once per process, so close that source first (one camera per producer per process)"
                )
            _PRODUCERS_IN_USE[key] = weakref.ref(self)
        self._producer_key = key

    def _release(self, reset_harvester: bool) -> None:
        """Stop and destroy the acquirer (and the harvester); tolerant of a device that is already gone."""
        ia, self._ia = self._ia, None
        if ia is not None:
            for attempt in (1, 2):  # a vanished device can make the first destroy fail half-way
                try:
                    ia.destroy()
                    break
                except Exception as exc:  # noqa: BLE001 - the device may be gone; release what we can
                    logger.debug("destroying the image acquirer failed (attempt %d): %s", attempt, exc)
            else:
                if self._harvester is not None and ia in self._harvester.image_acquirers:
                    self._harvester.image_acquirers.remove(ia)
        if reset_harvester and self._harvester is not None:
            try:
                self._harvester.reset()
            except Exception as exc:  # noqa: BLE001
                logger.debug("resetting the harvester failed: %s", exc)
            self._harvester = None
        if reset_harvester and self._producer_key is not None:
            with _PRODUCERS_LOCK:
                _PRODUCERS_IN_USE.pop(self._producer_key, None)
            self._producer_key = None

    def _connect(self) -> None:
        """Create the acquirer for the chosen device, apply the settings and start streaming."""
        assert self._harvester is not None
        info = self._find_device()
        previous_sigint = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
        try:
            ia = self._harvester.create(info)
        except Exception as exc:  # noqa: BLE001 - harvesters raises many kinds
            raise SourceError(f"cannot open camera {info.id_}: {exc}; is another program using it?") from exc
        finally:
            if previous_sigint is not None:  # harvesters installs its own Ctrl+C handler; keep the station's
                signal.signal(signal.SIGINT, previous_sigint)
        self._ia = ia
        self.device_id = str(info.id_)
        if not self._fixed_name:
            self._name = f"genicam:{self.device_id}"
        self._apply_settings(ia)
        self._check_pixel_format(ia)
        node_map = ia.remote_device.node_map
        for node_name, value in self.nodes:  # [source.nodes], in the recipe's order
            write_feature(node_map, node_name, value, device=self.device_id, origin=f"[source.nodes] {node_name}")
        if self.trigger is not None:
            apply_trigger(node_map, self.trigger, device=self.device_id)
        if self.part_id is not None:
            self.part_id.check(node_map, self.device_id)
        self._clock = CameraClock()  # which time stamp this connection gives is found on its first frame
        self._unanswered_triggers = 0
        from harvesters.core import Callback

        source = self

        class _IncompleteCounter(Callback):
            def emit(self, context: Any = None) -> None:
                source._count("incomplete_frames")

        ia.add_callback(ia.Events.INCOMPLETE_BUFFER, _IncompleteCounter())
        try:
            ia.num_buffers = max(self.num_buffers, ia.min_num_buffers)
        except ValueError as exc:
            logger.debug("keeping the default number of buffers: %s", exc)
        self._last_block_id = None
        ia.start()

    def _find_device(self) -> Any:
        assert self._harvester is not None
        devices = list(self._harvester.device_info_list)
        if not devices:
            raise SourceError(
                f"no camera found by the GenTL producer {self.cti}; check the camera cable and power, that "
                "the producer matches the camera (pass --source genicam:/path/to/producer.cti), and that no "
                "other program (or unclosed source in this process) holds the camera"
            )
        listing = ", ".join(f"[{i}] {d.id_} (serial {d.serial_number})" for i, d in enumerate(devices))
        if isinstance(self.device, int):
            if 0 <= self.device < len(devices):
                return devices[self.device]
            raise SourceError(f"camera index {self.device} is out of range; cameras found: {listing}")
        wanted = str(self.device)
        for attribute in ("serial_number", "id_", "user_defined_name"):
            for info in devices:
                try:
                    if str(getattr(info, attribute)) == wanted:
                        return info
                except Exception:  # noqa: BLE001 - some producers do not provide every field
                    continue
        raise SourceError(f"no camera with serial number or id {wanted!r}; cameras found: {listing}; "
                          "check the cable and power or pick one of these")

    def _apply_settings(self, ia: ImageAcquirer) -> None:
        """Write the requested settings to the remote device's node map (only nodes it has)."""
        node_map = ia.remote_device.node_map
        if self.frame_rate is not None and hasattr(node_map, "AcquisitionFrameRateEnable"):
            self._set_node(node_map, "AcquisitionFrameRateEnable", True)
        exposure_node = next((n for n in ("ExposureTime", "ExposureTimeAbs") if hasattr(node_map, n)), "ExposureTime")
        if self.exposure_us is not None and hasattr(node_map, "ExposureAuto"):
            self._set_node(node_map, "ExposureAuto", "Off")
        settings: list[tuple[str, Any]] = [
            ("PixelFormat", self.pixel_format),
            ("Width", None if self.width is None else int(self.width)),
            ("Height", None if self.height is None else int(self.height)),
            ("AcquisitionFrameRate", None if self.frame_rate is None else float(self.frame_rate)),
            (exposure_node, None if self.exposure_us is None else float(self.exposure_us)),
        ]
        for node_name, value in settings:
            if value is not None:
                self._set_node(node_map, node_name, value)

    def _set_node(self, node_map: Any, node_name: str, value: Any) -> None:
        if not hasattr(node_map, node_name):
            logger.warning("%s has no %s node; ignoring %s=%r", self.device_id, node_name, node_name, value)
            return
        node = getattr(node_map, node_name)
        try:
            node.value = value
        except Exception as exc:  # noqa: BLE001 - genapi raises InvalidArgument/OutOfRange/Access exceptions
            parts = [p.strip() for p in str(exc).split(" : ")]
            reason = "; ".join(p for p in parts if p and "thrown in node" not in p
                               and not p.startswith("Feature '")) or type(exc).__name__
            raise SourceError(
                f"camera {self.device_id} rejected {node_name}={value!r}: {reason}; "
                f"allowed: {_node_limits(node)}"
            ) from exc
        try:
            logger.info("%s: %s = %s", self.device_id, node_name, node.value)
        except Exception:  # noqa: BLE001 - read-back is informational
            pass

    def _check_pixel_format(self, ia: ImageAcquirer) -> None:
        node_map = ia.remote_device.node_map
        if not hasattr(node_map, "PixelFormat"):
            return
        current = str(node_map.PixelFormat.value)
        if current not in _FORMATS and current not in _DEEP_MONO:
            allowed = [s for s in getattr(node_map.PixelFormat, "symbolics", ()) if s in _FORMATS or s in _DEEP_MONO]
            raise SourceError(f"camera {self.device_id} streams {current}, which the station cannot convert to "
                              f"8-bit images; pass pixel_format= one of {allowed or sorted(_FORMATS)}")

    # -- streaming ---------------------------------------------------------------------------------
    def _frames(self) -> Iterator[Frame]:
        # a slow frame rate must not look like a lost camera: wait at least 2.5 frame periods
        timeout_s = max(self.timeout_s, 2.5 / self.frame_rate) if self.frame_rate else self.timeout_s
        timeouts = 0
        waited_since = time.monotonic()
        try:
            yield from self._stream(timeout_s, timeouts, waited_since)
        finally:
            if self._outage_since_ns is not None:  # stopped while the camera was lost: the outage up to now
                self._report_outage(time.monotonic_ns(), "the line stopped while the camera was lost")
            self._flush_reports()

    def _flush_reports(self) -> None:
        while self._pending:
            self._report(self._pending.pop(0))

    def _stream(self, timeout_s: float, timeouts: int, waited_since: float) -> Iterator[Frame]:
        while not self.stop_requested:
            if self._ia is None:
                if not self._reconnect_loop():
                    return
                timeouts, waited_since = 0, time.monotonic()
                continue
            try:
                frame = self._fetch_once()
            except Exception as exc:  # noqa: BLE001 - any driver error means the device is gone
                self._lost(f"fetch failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                continue
            finally:
                self._flush_reports()  # outside the driver lock: the ledger's queue may make us wait
            if frame is not None:
                timeouts, waited_since = 0, time.monotonic()
                yield frame
                continue
            if self.triggered and not self._unanswered_triggers:  # waiting for a trigger is not a lost camera
                timeouts, waited_since = 0, time.monotonic()
                continue
            if time.monotonic() - waited_since >= timeout_s:
                timeouts += 1
                waited_since = time.monotonic()
                message = f"no frame for {timeout_s:g} s ({timeouts}/{self.lost_after_timeouts})"
                logger.warning("%s: %s", self.name, message)
                self._set_error(message)
                if timeouts >= self.lost_after_timeouts:
                    self._lost(f"no frame for {timeouts * timeout_s:g} s")

    def _fetch_once(self) -> Frame | None:
        """One short fetch slice; the frame (copied out of the driver buffer) or None on a timeout."""
        from genicam.gentl import TimeoutException

        if self._trigger_waiting.is_set():  # let fire_trigger() have the driver lock (Python locks are not fair)
            time.sleep(0.001)
            return None
        with self._io_lock:
            ia = self._ia
            if ia is None or self.stop_requested:
                return None
            try:
                buffer = ia.fetch(timeout=min(_TRIGGERED_POLL_S if self.triggered else _POLL_S, self.timeout_s))
            except TimeoutException:
                return None
            if buffer is None:  # harvesters discarded a buffer it could not describe
                return None
            with buffer:  # the buffer goes back to the driver on leaving this block
                return self._to_frame(buffer)

    def _to_frame(self, buffer: Any) -> Frame | None:
        """Copy the image out of a driver buffer (call only inside ``with ia.fetch() as buffer``)."""
        component = buffer.payload.components[0]
        block_id = int(buffer.module.frame_id)
        timestamp_ns = time.monotonic_ns()
        node_map = self._ia.remote_device.node_map if self._ia is not None else None
        camera_ns, clock = self._clock.read(buffer, node_map)
        part_id = self.part_id.read(node_map) if self.part_id is not None and node_map is not None else None
        self._unanswered_triggers = max(0, self._unanswered_triggers - 1)
        if self._outage_since_ns is not None:  # the first frame after a reconnect ends the outage
            self._report_outage(timestamp_ns, f"camera lost, then reconnected (block ids restart at {block_id})")
        elif self._last_block_id is not None:
            gap = frame_gap(self._last_block_id, block_id)
            if gap:
                self._count("lost_frames", gap)
                self._pending.append(FrameGap(source=self.name, kind=GapKind.LOST_IDS, first_id=self._frame_id + 1,
                                      last_id=self._frame_id + gap, count=gap,
                                      start_ns=self._last_frame_ns or timestamp_ns, end_ns=timestamp_ns,
                                      detail=f"camera block ids {self._last_block_id + 1} .. {block_id - 1} skipped "
                                             "(no free driver buffer, or dropped on the link)"))
                self._frame_id += gap
        self._last_block_id = block_id
        if self._last_frame_ns is not None:
            interval = timestamp_ns - self._last_frame_ns
            self._period_ns = interval if self._period_ns is None else 0.9 * self._period_ns + 0.1 * interval
        self._last_frame_ns = timestamp_ns
        width, height, fmt = int(component.width), int(component.height), str(component.data_format)
        bit_depth = _DEEP_MONO.get(fmt, 8)
        if fmt in _DEEP_MONO:
            image, incomplete = deep_mono_to_8bit(np.array(component.data, copy=True), width, height, fmt)
        else:
            channels, to_rgb, to_grey = _FORMATS.get(fmt, (0, None, None))
            if not channels:
                raise SourceError(f"unsupported pixel format {fmt}; pass pixel_format='Mono8'")
            expected = width * height * channels
            data = np.array(component.data, dtype=np.uint8, copy=True).ravel()  # the copy we keep
            incomplete = data.size < expected
            if incomplete:
                data = np.concatenate([data, np.zeros(expected - data.size, np.uint8)])
            raw = data[:expected].reshape((height, width) if channels == 1 else (height, width, channels))
            image = self._convert(raw, channels, to_rgb, to_grey)
        if incomplete:
            self._count("incomplete_frames")
        self._sequence += 1
        self._frame_id += 1
        return Frame(
            image=image,
            frame_id=self._frame_id,
            timestamp_ns=timestamp_ns,
            source=self.name,
            meta={"pixel_format": fmt, "incomplete": incomplete, "sequence": self._sequence,
                  "device": self.device_id, "block_id": block_id, "camera_timestamp": clock},
            camera_timestamp_ns=camera_ns,
            bit_depth=bit_depth,
            identity=PartIdentity(part_id=part_id),
        )

    def _report_outage(self, end_ns: int, why: str) -> None:
        """The outage that began at ``_outage_since_ns`` as one gap: its span and the frames it likely cost."""
        start_ns, self._outage_since_ns = self._outage_since_ns, None
        assert start_ns is not None
        # a triggered camera has no frame rate to estimate from: its frames come when the line asks
        period_ns = None if self.triggered else 1e9 / self.frame_rate if self.frame_rate else self._period_ns
        count = max(0, round((end_ns - start_ns) / period_ns) - 1) if period_ns else 0
        if count:
            self._count("lost_frames", count)
        rate = f"{1e9 / period_ns:.3g} frames/s" if period_ns else "an unknown frame rate"
        self._pending.append(FrameGap(source=self.name, kind=GapKind.OUTAGE, first_id=self._frame_id + 1,
                              last_id=self._frame_id + count, count=count, start_ns=start_ns, end_ns=end_ns,
                              detail=f"{why}; {(end_ns - start_ns) / 1e9:.2f} s without frames at {rate}: about "
                                     f"{count} frame(s) lost"))
        self._frame_id += count

    def _convert(self, raw: np.ndarray, channels: int, to_rgb: int | None, to_grey: int | None) -> np.ndarray:
        grey_native = channels == 1 and to_rgb is None
        if self.colour is ColourMode.GREY or (self.colour is ColourMode.AUTO and grey_native):
            return cv2.cvtColor(raw, to_grey) if to_grey is not None else raw
        if grey_native:
            return np.ascontiguousarray(np.repeat(raw[:, :, None], 3, axis=2))
        return cv2.cvtColor(raw, to_rgb) if to_rgb is not None else raw

    # -- loss and reconnect ------------------------------------------------------------------------
    def _lost(self, reason: str) -> None:
        """Mark the camera lost and drop the acquirer; raise CameraLostError when not reconnecting."""
        if self._outage_since_ns is None:
            self._outage_since_ns = self._last_frame_ns or time.monotonic_ns()
        self._set_state(CameraState.LOST, reason)
        with self._io_lock:
            self._release(reset_harvester=False)
        if not self.reconnect:
            raise CameraLostError(f"{self.name} lost ({reason}); check the cable and power, or enable reconnect")

    def _reconnect_loop(self) -> bool:
        """Find the device again with exponential back-off; False if stopped first."""
        backoff = _FIRST_BACKOFF_S
        while not self.stop_requested:
            self._set_state(CameraState.RECONNECTING)
            try:
                with self._io_lock:
                    if self.stop_requested or self._harvester is None:
                        return False
                    self._release(reset_harvester=False)
                    self._harvester.update()  # the old acquirer is destroyed: no streaming now
                    self._connect()
            except Exception as exc:  # noqa: BLE001 - keep trying; the reason goes to health()
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self._set_state(CameraState.LOST, f"reconnect failed: {reason}")
                logger.warning("%s: reconnect failed (%s); retrying in %.2g s", self.name, reason, backoff)
                if self._stop_event.wait(backoff):
                    return False
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            self._count("reconnects")
            self._set_state(CameraState.CONNECTED)
            return True
        return False

    # -- test hook ---------------------------------------------------------------------------------
    def _simulate_disconnect(self, kind: str = "device") -> None:
        """Test hook: break the live connection the way a cable pull does, through the real producer.

        ``kind="device"`` closes the GenTL device handle under harvesters' feet, so the next fetch raises
        a GenTL error (a USB camera unplugged); ``kind="stream"`` kills the producer's data stream, so
        fetches time out (a GigE cable pulled). Safe to call from any thread while another iterates.
        """
        from genicam.gentl import ACQ_STOP_FLAGS_LIST

        with self._io_lock:
            if self._ia is None:
                raise SourceError("no live connection to disconnect")
            if kind == "device":
                self._ia.device.module.close()
            elif kind == "stream":
                for stream in self._ia.data_streams:
                    stream.module.stop_acquisition(ACQ_STOP_FLAGS_LIST.ACQ_STOP_FLAGS_KILL)
            else:
                raise ValueError(f"kind must be 'device' or 'stream', got {kind!r}")
