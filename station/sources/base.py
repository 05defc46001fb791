"""The one interface every frame source implements, plus the health bookkeeping they share.

A source is a context manager that yields :class:`~inspection_core.records.Frame` records::

    with open_source("replay:samples/glass") as source:
        for frame in source:          # the pipeline's acquisition thread
            ...
    # another thread may call source.stop() at any time; the loop then ends promptly

Sources never let a queue grow: they hand over one frame at a time and count what they lose. What they deliver but
cannot hand over as a frame (a file that cannot be read) and what they lose (skipped frame ids, a camera outage)
they report as ledger entries (:class:`~inspection_core.records.NotInspected`,
:class:`~inspection_core.records.FrameGap`) to ``ledger_sink``, on the iterating thread; the line sets it, so every
part and every lost frame gets its row in the reject log. Without a sink the entries wait in ``events``.
"""
from __future__ import annotations

import collections
import logging
import threading
from abc import ABC, abstractmethod
from dataclasses import fields
from types import TracebackType
from typing import Any, Callable, Iterator, Union

from inspection_core.records import CameraState, Frame, FrameGap, NotInspected, SourceHealth
from station.errors import SourceError

logger = logging.getLogger(__name__)

_COUNTERS = frozenset(f.name for f in fields(SourceHealth)) - {"state", "last_error"}
SourceEvent = Union[NotInspected, FrameGap]


class FrameSource(ABC):
    """Abstract frame source: ``with source: for frame in source: ...``.

    ``__enter__`` opens (and, for cameras, starts streaming); ``__exit__`` stops and releases everything.
    Iterating an unopened source opens it (then call :meth:`close` yourself). :meth:`stop` may be called
    from any thread and makes a running iteration end within a fraction of a second. :meth:`health` is a
    thread-safe snapshot of the counters the operator panel shows.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._health_lock = threading.Lock()
        self._health: dict[str, Any] = {f.name: f.default for f in fields(SourceHealth)}
        self._stop_event = threading.Event()
        self._opened = False
        self.ledger_sink: Callable[[SourceEvent], None] | None = None
        self.events: collections.deque[SourceEvent] = collections.deque(maxlen=10_000)

    # -- public API --------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """Short name of the source as written into ``Frame.source`` (e.g. ``replay:/data/run1``)."""
        return self._name

    @property
    def is_open(self) -> bool:
        return self._opened

    @property
    def stop_requested(self) -> bool:
        """True once :meth:`stop` was called (until the next :meth:`open`)."""
        return self._stop_event.is_set()

    def open(self) -> None:
        """Open the source (idempotent); raises :class:`~station.errors.SourceError` if it cannot."""
        if self._opened:
            return
        self._stop_event.clear()
        self._set_state(CameraState.CONNECTING)
        try:
            self._open()
        except BaseException as exc:
            self._set_state(CameraState.STOPPED, str(exc) or type(exc).__name__)
            raise
        self._opened = True
        self._set_state(CameraState.CONNECTED)

    def close(self) -> None:
        """Stop any running iteration and release every resource (idempotent)."""
        self._stop_event.set()
        if self._opened:
            try:
                self._close()
            finally:
                self._opened = False
        self._set_state(CameraState.STOPPED)

    def stop(self) -> None:
        """Ask a running iteration (possibly in another thread) to end promptly; safe to call any time."""
        self._stop_event.set()

    def fire_trigger(self) -> None:
        """A software trigger: deliver one frame (OPC UA's StartSingleJob fires it). A camera whose recipe sets
        ``[source.trigger] source = "Software"`` executes TriggerSoftware; a replay in triggered mode hands over its
        next file. Sources without one raise :class:`~station.errors.SourceError`."""
        raise SourceError(f"{self.name} has no software trigger; set [source.trigger] source = \"Software\" (camera) "
                          "or trigger = true (replay) in the recipe")

    def health(self) -> SourceHealth:
        """A consistent snapshot of state and counters (safe to call from any thread)."""
        with self._health_lock:
            return SourceHealth(**self._health)

    def __enter__(self) -> FrameSource:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        if not self._opened:
            self.open()
        return self._counted(self._frames())

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._name!r} {self.health().state.value}>"

    # -- for subclasses ----------------------------------------------------------------------------
    @abstractmethod
    def _open(self) -> None:
        """Acquire resources; raise SourceError with a message that says what to do."""

    @abstractmethod
    def _close(self) -> None:
        """Release resources; must tolerate a half-open source and a concurrent iteration ending."""

    @abstractmethod
    def _frames(self) -> Iterator[Frame]:
        """Yield frames until exhausted or ``self.stop_requested``."""

    def _counted(self, frames: Iterator[Frame]) -> Iterator[Frame]:
        for frame in frames:
            if self._stop_event.is_set():
                break
            self._count("frames")
            yield frame

    def _report(self, entry: SourceEvent) -> None:
        """Hand a part not delivered as a frame, or a gap of lost frames, to the ledger (see the module docstring)."""
        sink = self.ledger_sink
        if sink is not None:
            sink(entry)
        else:
            self.events.append(entry)

    def _count(self, counter: str, n: int = 1) -> None:
        if counter not in _COUNTERS:
            raise KeyError(counter)
        with self._health_lock:
            self._health[counter] += n

    def _set_error(self, message: str | None) -> None:
        with self._health_lock:
            self._health["last_error"] = message

    def _set_state(self, state: CameraState, error: str | None = None) -> None:
        """Change the state (logged once per transition); ``error`` also sets ``last_error``."""
        with self._health_lock:
            previous = self._health["state"]
            self._health["state"] = state
            if error is not None:
                self._health["last_error"] = error
        if previous is not state:
            level = logging.WARNING if state is CameraState.LOST else logging.INFO
            logger.log(level, "%s: %s -> %s%s", self._name, previous.value, state.value,
                       f" ({error})" if error else "")
