"""The OPC UA integration as the line sees it: a thread with its own asyncio loop, started before the line, fed each
committed ledger row without ever waiting on the network."""
from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Mapping

from inspection_core.records import InspectionResult
from station.errors import StationError
from station.opcua import OpcUaConfig

log = logging.getLogger(__name__)
START_TIMEOUT_S = 120.0  # importing the NodeSet takes seconds on a busy machine
CLOSE_TIMEOUT_S = 10.0


class OpcUaIntegration:
    """``[opcua]``: serves OPC UA for Machine Vision for one line (see :mod:`station.opcua`)."""

    name = "opcua"

    def __init__(self, config: OpcUaConfig, context: Any) -> None:
        self.config, self.context = config, context
        self.server: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._closing: asyncio.Event | None = None
        self.rows_handed = 0

    def start(self, line: Any) -> None:
        """Import the NodeSet, build the address space and listen (in the OPC UA thread); raises when the server
        cannot start (a taken port), leaving nothing running. With ``control = "plc"`` a replay is put in triggered
        mode once the server listens."""
        quiet = logging.getLogger("asyncua")
        if quiet.level == logging.NOTSET:  # asyncua logs every request at INFO: keep the station's log readable
            quiet.setLevel(logging.WARNING)
        self._thread = threading.Thread(target=self._run, args=(line,), name="opcua", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise StationError(f"the OPC UA server did not start within {START_TIMEOUT_S:g} s")
        if self._error is not None:
            raise self._error

    def _run(self, line: Any) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)  # this thread's loop, for asyncua and the clean-up below
        self._loop = loop
        try:
            loop.run_until_complete(self._main(line))
        finally:
            leftover = asyncio.all_tasks(loop)  # sessions of clients that never said goodbye
            for task in leftover:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
            loop.close()

    async def _main(self, line: Any) -> None:
        from station.opcua.server import VisionSystemServer

        self._closing = asyncio.Event()
        server = VisionSystemServer(self.config, self.context, line)
        try:
            await server.start()
        except BaseException as exc:  # noqa: BLE001 - reported by start() in the caller's thread
            self._error = exc
            try:
                if server.server is not None:
                    await server.server.stop()
            except Exception:  # noqa: BLE001 - it never listened
                pass
            self._ready.set()
            return
        self.server = server
        self._ready.set()
        await self._closing.wait()
        await server.stop()

    def on_row(self, row: Mapping[str, Any], entry: Any) -> None:
        """Hand the row to the OPC UA loop and return (the logging thread never waits on a client)."""
        server = self.server
        if server is None:
            return
        inspect_ms = entry.timings.get("total") if isinstance(entry, InspectionResult) else None
        self.rows_handed += 1
        server.push_row(dict(row), inspect_ms)

    def status(self) -> dict[str, Any]:
        server = self.server
        return {"endpoint": self.config.endpoint, "control": self.config.control.value,
                "serving": server is not None, "state": getattr(server, "state", None),
                "results_published": getattr(server, "published", 0), "rows": self.rows_handed,
                "recipe": getattr(getattr(server, "book", None), "active_id", None)}

    def close(self) -> None:
        """Publish what is queued, stop the server and its thread (bounded wait). After a Halt over OPC UA the server
        first serves on until the PLC disconnects, at most ``halt_timeout_s`` (Ctrl-C cuts that short)."""
        loop, closing = self._loop, self._closing
        if loop is not None and closing is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(closing.set)
            except RuntimeError:  # the loop ended meanwhile
                pass
        if self._thread is not None:
            halted = bool(getattr(self.server, "halted", False))
            try:
                self._thread.join(CLOSE_TIMEOUT_S + (self.config.halt_timeout_s if halted else 0.0))
            except KeyboardInterrupt:
                log.warning("interrupted: the OPC UA server stops now")
                if loop is not None and not loop.is_closed():
                    try:
                        loop.call_soon_threadsafe(self.server.cut_linger)
                    except RuntimeError:
                        pass
                self._thread.join(CLOSE_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning("the OPC UA server did not stop within %g s; left to end with the process",
                            CLOSE_TIMEOUT_S)
