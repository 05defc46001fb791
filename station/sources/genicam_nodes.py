"""GenICam features by name, for :class:`~station.sources.genicam.GenICamSource`: checked against the camera's node
map and written before streaming starts (``[source.nodes]``, ``[source.trigger]``), the software trigger, and the
camera's own time stamp of each frame.

Every function takes a GenApi node map (``genicam.genapi.NodeMap``: the camera's ``remote_device.node_map``, or one
loaded from a device description) and raises :class:`~station.errors.SourceError` naming the feature, the value and
what the camera allows::

    write_feature(node_map, "Gain", 6.0, device="cam-A", origin="[source.nodes] Gain")
    apply_trigger(node_map, TriggerConfig(source="Line1", activation="RisingEdge"), device="cam-A")

Feature names follow the SFNC (GenICam Standard Features Naming Convention): ``TriggerSelector``, ``TriggerMode``,
``TriggerSource``, ``TriggerActivation``, ``TriggerDelay`` (``TriggerDelayAbs`` on older cameras), ``TriggerSoftware``;
``ChunkTimestamp`` (with ``GevTimestampTickFrequency`` on GigE Vision cameras) for the time stamp in chunk data.
"""
from __future__ import annotations

import difflib
import logging
from typing import Any

from station.errors import SourceError
from station.recipe import TriggerConfig, TriggerMode

logger = logging.getLogger(__name__)

_NS_PER_S = 1_000_000_000


def node_limits(node: Any) -> str:
    """The values a node accepts, for error messages."""
    try:
        symbolics = node.symbolics
    except AttributeError:
        pass
    else:
        return "one of " + ", ".join(map(str, symbolics))
    try:
        text = f"{node.min} .. {node.max}"
    except Exception:  # noqa: BLE001 - limits are only for the message
        return "a valid value (limits unknown)"
    try:  # a float node without an increment raises here (GenApi RuntimeException), not AttributeError
        inc = node.inc
        if inc is not None and float(inc) not in (0.0, 1.0):
            text += f" in steps of {inc}"
    except Exception:  # noqa: BLE001
        pass
    return text


def feature_names(node_map: Any) -> list[str]:
    """The names of the node map's features (what a user may name; helper nodes left out)."""
    names = []
    for node in node_map.nodes:
        try:
            if node.node.is_feature():
                names.append(str(node.node.name))
        except Exception:  # noqa: BLE001 - a node that cannot say is not offered as a hint
            continue
    return names


def _access(node: Any) -> str:
    """``"RW"``, ``"RO"``, ``"WO"``, ``"NA"`` (not available now) or ``"NI"`` (not implemented)."""
    from genicam.genapi import EAccessMode

    mode = node.node.get_access_mode()
    for name in ("RW", "RO", "WO", "NA", "NI"):
        if mode == getattr(EAccessMode, name):
            return name
    return "NA"


def _value_problem(node: Any, kind: str, value: Any) -> str | None:
    """Why ``value`` does not fit the node (its type, entries or range), or None when it does."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "IEnumeration":
        return None if isinstance(value, str) and value in node.symbolics else "not one of its entries"
    if kind == "IInteger":
        if not (number and float(value).is_integer()):
            return "it takes an integer"
        low, high, inc = int(node.min), int(node.max), int(getattr(node, "inc", 1) or 1)
        if not low <= int(value) <= high:
            return "out of range"
        return None if (int(value) - low) % inc == 0 else f"not on a step of {inc} from {low}"
    if kind == "IFloat":
        if not number:
            return "it takes a number"
        return None if float(node.min) <= float(value) <= float(node.max) else "out of range"
    if kind == "IBoolean":
        return None if isinstance(value, bool) else "it takes true or false"
    if kind == "IString":
        return None if isinstance(value, str) else "it takes a string"
    return None


def write_feature(node_map: Any, name: str, value: Any, *, device: str | None, origin: str) -> None:
    """Check ``name = value`` against the node map (the feature exists, is writable now, and the value is of its type
    and among its entries or in its range), then write it. ``origin`` names the recipe line in messages.

    Call it only while the camera is not streaming (:class:`GenICamSource` writes before ``start()``)."""
    camera = f"camera {device}" if device else "the camera"
    if not node_map.has_node(name):
        close = difflib.get_close_matches(name, feature_names(node_map), n=3)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise SourceError(f"{origin}: {camera} has no feature {name!r}; {hint}feature names are case-sensitive and "
                          "differ between cameras: see the camera's documentation, or remove the line")
    node = getattr(node_map, name)
    kind = type(node).__name__
    if kind in ("ICommand", "ICategory", "IRegister", "IPort", "IValue", "IBase"):
        what = {"ICommand": "a command", "ICategory": "a category"}.get(kind, "not a feature with a value")
        raise SourceError(f"{origin}: {name} is {what} on {camera}, not a setting; remove it from the recipe")
    access = _access(node)
    if access == "RO":
        raise SourceError(f"{origin}: {name} is read-only on {camera}; remove the line (the camera sets it itself)")
    if access in ("NA", "NI"):
        raise SourceError(f"{origin}: {name} is not available on {camera} now: it depends on another feature (a "
                          "selector or a mode, e.g. set ChunkSelector before ChunkEnable); write that one first, "
                          "above it in the recipe")
    allowed = {"IBoolean": "true or false", "IString": "a string"}.get(kind) or node_limits(node)  # for messages
    problem = _value_problem(node, kind, value)
    if problem is not None:
        raise SourceError(f"{origin}: {camera} refuses {name} = {value!r} ({problem}); allowed: {allowed}")
    try:
        node.value = int(value) if kind == "IInteger" else float(value) if kind == "IFloat" else value
    except Exception as exc:  # noqa: BLE001 - genapi raises InvalidArgument/OutOfRange/Access exceptions
        parts = [p.strip() for p in str(exc).split(" : ")]
        reason = "; ".join(p for p in parts if p and "thrown in node" not in p
                           and not p.startswith("Feature '")) or type(exc).__name__
        raise SourceError(f"{origin}: {camera} rejected {name} = {value!r}: {reason}; allowed: {allowed}") from exc
    logger.info("%s: %s = %r (%s)", device, name, value, origin)


def apply_trigger(node_map: Any, trigger: TriggerConfig, *, device: str | None) -> None:
    """Set up the camera's trigger as ``[source.trigger]`` says (selector, source, activation, delay, then the
    mode); raises :class:`SourceError` when the camera has no such trigger or refuses a value."""
    camera = f"camera {device}" if device else "the camera"
    if not node_map.has_node("TriggerMode"):
        if trigger.mode is TriggerMode.OFF:
            logger.info("%s has no TriggerMode feature: it always runs free, as [source.trigger] mode = \"Off\" asks",
                        camera)
            return
        raise SourceError(f"[source.trigger]: {camera} has no TriggerMode feature, so it cannot be triggered (it runs "
                          "free at its frame rate); remove [source.trigger] from the recipe, or use a camera with a "
                          "trigger")
    if node_map.has_node("TriggerSelector"):
        write_feature(node_map, "TriggerSelector", trigger.selector, device=device, origin="[source.trigger] selector")
    if trigger.mode is TriggerMode.ON:
        write_feature(node_map, "TriggerSource", trigger.source, device=device, origin="[source.trigger] source")
        if trigger.activation is not None:
            write_feature(node_map, "TriggerActivation", trigger.activation, device=device,
                          origin="[source.trigger] activation")
        if trigger.delay_us is not None:
            delay = next((n for n in ("TriggerDelay", "TriggerDelayAbs") if node_map.has_node(n)), "TriggerDelay")
            write_feature(node_map, delay, float(trigger.delay_us), device=device, origin="[source.trigger] delay_us")
        if trigger.software and not node_map.has_node("TriggerSoftware"):
            raise SourceError(f'[source.trigger] source = "Software": {camera} has no TriggerSoftware command; use '
                              "one of its hardware inputs (TriggerSource allows "
                              f"{node_limits(node_map.TriggerSource)})")
    write_feature(node_map, "TriggerMode", trigger.mode.value, device=device, origin="[source.trigger] mode")


def fire_software_trigger(node_map: Any, *, device: str | None) -> None:
    """Execute ``TriggerSoftware`` (one frame from a camera in software trigger mode)."""
    try:
        node_map.TriggerSoftware.execute()
    except Exception as exc:  # noqa: BLE001 - genapi raises Access/LogicalError exceptions
        first = str(exc).split(" : ")[0].strip() or type(exc).__name__
        raise SourceError(f"camera {device} did not take the software trigger: {first}; check that it is streaming "
                          'with [source.trigger] mode = "On", source = "Software"') from exc


def ticks_to_ns(ticks: int, frequency_hz: int | float) -> int:
    """A camera clock reading in ticks of ``frequency_hz`` as nanoseconds (integer arithmetic for integer rates:
    a 64-bit tick count at 1 GHz or 125 MHz stays exact)."""
    if frequency_hz <= 0:
        raise ValueError(f"a tick frequency must be > 0 Hz, got {frequency_hz}")
    if isinstance(frequency_hz, int) or float(frequency_hz).is_integer():
        return int(ticks) * _NS_PER_S // int(frequency_hz)
    return round(int(ticks) * _NS_PER_S / float(frequency_hz))


class CameraClock:
    """Reads the camera's own time stamp of each frame, the first way that works on this camera:

    1. ``chunk``: the ``ChunkTimestamp`` chunk feature (enable it with ``[source.nodes]`` ChunkModeActive = true,
       ChunkSelector = "Timestamp", ChunkEnable = true), in ticks of ``GevTimestampTickFrequency`` where the camera
       has that feature, else in ns (SFNC);
    2. ``buffer``: the GenTL buffer's time stamp (``BUFFER_INFO_TIMESTAMP_NS``, else the raw one with the device's
       tick frequency).

    A way that fails once is not tried again on this connection (a failed GenTL query costs an exception a
    frame); a camera that gives none gives ``None``. Create one per connection.
    """

    def __init__(self) -> None:
        self._dead: set[str] = set()

    def read(self, buffer: Any, node_map: Any) -> tuple[int | None, str | None]:
        """``(camera time in ns, "chunk" or "buffer")``, or ``(None, None)``; call inside ``with ia.fetch()``."""
        for way, reader in (("chunk", self._chunk), ("buffer_ns", self._buffer_ns), ("buffer", self._buffer_ticks)):
            if way in self._dead:
                continue
            try:
                value = reader(buffer, node_map)
            except Exception:  # noqa: BLE001 - genapi/GenTL say "not available" in many ways
                value = None
            if value is None:
                self._dead.add(way)
                continue
            return value, way.removesuffix("_ns")
        return None, None

    @staticmethod
    def _chunk(buffer: Any, node_map: Any) -> int | None:
        if not node_map.has_node("ChunkTimestamp"):
            return None
        ticks = int(node_map.ChunkTimestamp.value)
        if node_map.has_node("GevTimestampTickFrequency"):
            return ticks_to_ns(ticks, int(node_map.GevTimestampTickFrequency.value))
        return ticks

    @staticmethod
    def _buffer_ns(buffer: Any, node_map: Any) -> int | None:
        return int(buffer.module.timestamp_ns)

    @staticmethod
    def _buffer_ticks(buffer: Any, node_map: Any) -> int | None:
        frequency = int(buffer.module.parent.parent.timestamp_frequency)  # the device module's clock
        return ticks_to_ns(int(buffer.module.timestamp), frequency)


class PartIdReader:
    """Reads each frame's part id from a camera feature (``[source] part_id``), inside the frame's buffer:

    - a chunk feature: a value the camera latched with the exposure and sent in the frame's chunk data, e.g. SFNC's
      ``ChunkLineStatusAll`` (the I/O lines, a part-present or code input), ``ChunkCounterValue`` or
      ``ChunkEncoderValue``, or a vendor's chunk carrying a code reader's result (enable it in ``[source.nodes]``:
      ChunkModeActive, ChunkSelector, ChunkEnable);
    - any other readable feature (``LineStatusAll``, ``Counter0Value``...): its value when the frame is copied out of
      the driver, which for an input that changes between parts is later than the exposure; prefer its chunk.

    The value becomes text (an integer in decimal). A frame whose value cannot be read has none (logged once).
    """

    def __init__(self, feature: str) -> None:
        self.feature = feature
        self._warned = False

    def check(self, node_map: Any, device: str | None) -> None:
        """Refuse a feature the camera does not have, or one that holds no value (at open, before streaming)."""
        camera = f"camera {device}" if device else "the camera"
        origin = f"[source] part_id = {self.feature!r}"
        if not node_map.has_node(self.feature):
            close = difflib.get_close_matches(self.feature, feature_names(node_map), n=3)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise SourceError(f"{origin}: {camera} has no feature {self.feature!r}; {hint}name a chunk feature the "
                              "camera sends with each frame (e.g. ChunkLineStatusAll, ChunkCounterValue) or another "
                              "readable feature, or remove the key")
        kind = type(getattr(node_map, self.feature)).__name__
        if kind not in ("IInteger", "IString", "IEnumeration", "IBoolean", "IFloat"):
            raise SourceError(f"{origin}: {self.feature} on {camera} is not a feature with a value ({kind}); name an "
                              "integer or string feature")

    def read(self, node_map: Any) -> str | None:
        """The part id of the frame whose buffer is attached now (call inside ``with ia.fetch()``), or None."""
        try:
            value = getattr(node_map, self.feature).value
        except Exception as exc:  # noqa: BLE001 - genapi says "not available" in many ways
            if not self._warned:
                self._warned = True
                logger.warning("the part id feature %s could not be read (%s); frames without it have no part id",
                               self.feature, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return None
        return None if value is None else str(int(value) if isinstance(value, bool) else value)
