# Over 500 lines on purpose: one address space (the VisionSystem, its state machine, methods and events) and its asyncua glue.
"""The asyncua server behind :mod:`station.opcua`: the MachineVision address space, its state machine, methods,
events and results. Everything here runs on the OPC UA thread's asyncio loop; the line's threads are only touched
through ``source.fire_trigger`` / ``set_triggered`` and by switching the line's judge between frames
(:meth:`station.pipeline.Line.switch`).

States (``VisionStateMachine`` / ``AutomaticModeStateMachine`` CurrentState) mapped onto the line:

- Preoperational: the server is up, automatic mode not selected (after Reset);
- Initialized: automatic mode, no recipe prepared (after UnprepareRecipe);
- Ready: a recipe prepared, no job running: the line waits for a trigger (``control = "plc"``);
- SingleExecution: StartSingleJob fired one trigger; back to Ready with its ResultReady;
- ContinuousExecution: frames flow (StartContinuous; always so with ``control = "observe"``);
- Error: the line stopped on an error, or a trigger could not be fired; Halted: the line stopped (Halt, or its end).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
from datetime import datetime, timezone
from typing import Any, Callable

from asyncua import ua

from inspection_core.records import PartIdentity
from station.app import line_scan
from station.opcua import NAMESPACE, NODESET, Control, OpcUaConfig, Security
from station.opcua.certificates import ClientTrustList, endpoint_names, ensure_certificate, load_plant_certificate
from station.opcua.identity import build_info
from station.opcua.jobs import JobBook
from station.opcua.recipes import RecipeBook, RecipeChanges, ledger_label
from station.opcua.results import RESULT_FIELDS, inherit_struct_definitions, result_record
from station.opcua.security import SECURITY_POLICIES, StationRules, StationUsers, check_port
from station.opcua.sessions import CALLER, StationServer
from station.promotion import VIA_OPCUA, record_promotion, weights_changed
from station.shadow import judging_of

log = logging.getLogger(__name__)

STATION_NS = "urn:inspection-station:opcua"
#: NodeIds of the published NodeSet (OPC 40100-1, NodeIds.csv), in its namespace
VISION_SYSTEM_TYPE, RESULT_TYPE = 1003, 2002
JOB_STARTED_EVENT, READY_EVENT, RESULT_READY_EVENT, RECIPE_PREPARED_EVENT = 1013, 1023, 1024, 1022
TOP_STATES = {"Preoperational": 5028, "Operational": 5031, "Error": 5030, "Halted": 5029}
AUTO_STATES = {"Initialized": 5056, "Ready": 5057, "SingleExecution": 5058, "ContinuousExecution": 5059}
_EO = ua.VariantType.ExtensionObject


def _identity(job: str, meas_id: Any, part_id: Any, product_id: Any) -> PartIdentity:
    """What a job's arguments say of its part(s): the ``Id`` of the PLC's MeasId, PartId and ProductId (an empty one
    says nothing: the part id then comes from the source), and the JobId."""
    return PartIdentity(part_id=getattr(part_id, "Id", None), meas_id=getattr(meas_id, "Id", None),
                        product_id=getattr(product_id, "Id", None), job_id=job)


class Refused(Exception):
    """A method the state or the arguments do not allow: answered with ``status``, the text logged and shown in
    ``Station/LastError``."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


class VisionSystemServer:
    """The server for one line; :meth:`start` and :meth:`stop` on the loop, :meth:`push_row` from any thread."""

    def __init__(self, config: OpcUaConfig, context: Any, line: Any) -> None:
        self.config, self.context, self.line = config, context, line
        self.book = RecipeBook(context.recipe, config.recipes)
        self.changes: RecipeChanges | None = None
        self.server: StationServer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.rows: asyncio.Queue = asyncio.Queue()
        self.state = "Preoperational"
        self.prepared = False
        self.jobs = JobBook(line.identities)  # the jobs' ids go to the line's parts; the rows record them
        self.job_ids = itertools.count(1)
        self.halted = False  # Halt was called: the server stays up for the PLC after the run (halt_timeout_s)
        self.trust: ClientTrustList | None = None
        self.parts_seen = 0
        self.published = 0
        self.switching = False
        self.last_result: dict[str, Any] | None = None
        self._tasks: list[asyncio.Task] = []
        self._trigger_loop: asyncio.Task | None = None
        self._stopping: asyncio.Task | None = None
        self._cut_linger: asyncio.Event | None = None

    # -- start / stop ----------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Build the address space and listen; raises (OSError when the port is taken) with nothing left running."""
        self.loop = asyncio.get_running_loop()
        cfg = self.config
        check_port(cfg)  # before the seconds of NodeSet import: a taken port fails at once
        self._cut_linger = asyncio.Event()
        server = StationServer(user_manager=StationUsers(cfg))
        await server.init()
        server.set_endpoint(cfg.endpoint)
        station_id = self.context.station_id or "station"
        server.set_server_name(f"Inspection station {station_id}")
        info = build_info()  # what asset management reads: the package, not asyncua's defaults
        server.product_uri, server.manufacturer_name = info.product_uri, info.manufacturer_name
        await server.set_build_info(info.product_uri, info.manufacturer_name, info.product_name,
                                    info.software_version, info.build_number, info.build_date)
        app_uri = f"urn:inspection-station:{station_id}"
        if any(s is not Security.NONE for s in cfg.security):
            names = endpoint_names(cfg.host)
            if cfg.certificate is not None:  # the plant's: as it is; the application URI is the certificate's
                cert, key, uri = await asyncio.to_thread(load_plant_certificate, cfg.certificate, cfg.private_key,
                                                         names)
                app_uri = uri or app_uri
                await server.load_certificate(cert, "der")
                await server.load_private_key(key, None, "pem")
            else:
                key_path, cert_path = await asyncio.to_thread(ensure_certificate, cfg.pki, app_uri, names)
                await server.load_certificate(str(cert_path))
                await server.load_private_key(str(key_path))
            if cfg.trust_clients:
                self.trust = ClientTrustList(cfg.pki)
                server.set_certificate_validator(self.trust)
        if Security.NONE in cfg.security and Security.SIGN_ENCRYPT not in cfg.security and cfg.users:
            log.warning('OPC UA: a password sent on the "none" endpoint crosses the wire in clear: add "sign_encrypt" '
                        "to [opcua] security (its policy encrypts the password token with the server certificate)")
        await server.set_application_uri(app_uri)
        server.set_security_policy([SECURITY_POLICIES[s] for s in cfg.security], permission_ruleset=StationRules())
        tokens = [ua.UserNameIdentityToken] + ([ua.AnonymousIdentityToken] if cfg.allow_anonymous else [])
        server.set_identity_tokens(tokens)
        await server.import_xml(str(NODESET))
        self.mv = await server.get_namespace_index(NAMESPACE)
        self.st = await server.register_namespace(STATION_NS)
        await inherit_struct_definitions(server, self.mv)
        await server.load_data_type_definitions()
        self.server = server
        await self._build_nodes()
        self.changes = RecipeChanges(self.context.db_path)
        await server.start()  # binds the port: an OSError here leaves the line running without OPC UA
        self._tasks = [asyncio.create_task(self._consume_rows()), asyncio.create_task(self._watch_line())]
        log.info("OPC UA server at %s (namespace %s, control = %s, security %s)", cfg.endpoint, NAMESPACE,
                 cfg.control.value, ", ".join(s.value for s in cfg.security))
        if cfg.control is Control.PLC:
            if hasattr(self.line.source, "set_triggered"):
                self.line.source.set_triggered(True)
            await self._select_automatic()
            self.prepared = True
            await self._set_state("Ready")
        else:
            self.jobs.start_flow(PartIdentity(job_id=f"observe-{self.context.run_id}"))
            await self._set_state("ContinuousExecution")

    async def stop(self) -> None:
        """Publish the rows still queued (a bounded wait); after Halt, serve on until the clients disconnect (at
        most ``halt_timeout_s``); then stop serving."""
        consumer, *others = self._tasks or [None]
        for task in others + ([self._trigger_loop] if self._trigger_loop else []):
            task.cancel()
        if consumer is not None:
            self.rows.put_nowait(None)
            try:
                await asyncio.wait_for(consumer, 10.0)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                log.warning("OPC UA: %d ledger row(s) not published before the server stopped", self.rows.qsize())
        if self.halted and self.server is not None:
            await self._linger()
        if self.server is not None:
            await self.server.stop()
        if self.changes is not None:
            self.changes.close()

    async def _linger(self) -> None:
        """After Halt: the PLC reads Halted and the last results, then disconnects; the server stops when no client
        is connected, after ``halt_timeout_s`` at most, or at once when :meth:`cut_linger` is called."""
        timeout = self.config.halt_timeout_s
        if self.server.connections() == 0 or timeout <= 0:
            return
        log.info("OPC UA: halted; serving until the PLC disconnects (%d connection(s), at most %g s)",
                 self.server.connections(), timeout)
        deadline = self.loop.time() + timeout
        while self.server.connections() and self.loop.time() < deadline and not self._cut_linger.is_set():
            await asyncio.sleep(0.05)
        if self.server.connections():
            log.info("OPC UA: %d client(s) still connected %g s after Halt; the server stops",
                     self.server.connections(), timeout)

    def cut_linger(self) -> None:
        """Stop waiting for clients after Halt (on the loop)."""
        if self._cut_linger is not None:
            self._cut_linger.set()

    def push_row(self, row: dict, inspect_ms: float | None) -> None:
        """A committed ledger row (any thread): queued for the loop, never waits."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.rows.put_nowait, (row, inspect_ms))

    # -- address space ---------------------------------------------------------------------------------------
    async def _build_nodes(self) -> None:
        server, mv, st = self.server, self.mv, self.st
        vision = await server.nodes.objects.add_object(st, "VisionSystem", ua.NodeId(VISION_SYSTEM_TYPE, mv))
        self.vision = vision
        vsm = await vision.get_child(f"{mv}:VisionStateMachine")
        auto = await vsm.get_child(f"{mv}:AutomaticModeStateMachine")
        self.top_state = await vsm.get_child("0:CurrentState")
        self.auto_state = await auto.get_child("0:CurrentState")
        recipes = await vision.get_child(f"{mv}:RecipeManagement")
        results = await vision.get_child(f"{mv}:ResultManagement")
        methods: dict[Any, Callable] = {
            (vsm, "SelectModeAutomatic"): self.m_select_mode_automatic, (vsm, "Reset"): self.m_reset,
            (vsm, "Halt"): self.m_halt, (auto, "StartSingleJob"): self.m_start_single_job,
            (auto, "StartContinuous"): self.m_start_continuous, (auto, "Stop"): self.m_stop,
            (auto, "Abort"): self.m_abort, (recipes, "PrepareRecipe"): self.m_prepare_recipe,
            (recipes, "UnprepareRecipe"): self.m_unprepare_recipe, (results, "GetResultById"): self.m_get_result,
        }
        for (parent, name), handler in methods.items():
            server.link_method(await parent.get_child(f"{mv}:{name}"), self._guarded(name, handler))
        from asyncua.common.instantiate_util import instantiate

        folder = await results.get_child(f"{mv}:Results")
        self.result_var = (await instantiate(folder, server.get_node(ua.NodeId(RESULT_TYPE, mv)),
                                             bname=ua.QualifiedName("LastResult", st), idx=st))[0]
        part = await vision.add_object(st, "LastPart")
        self.part_vars = {}
        for name, kind, value in (("RowId", ua.VariantType.Int64, 0), ("JobId", ua.VariantType.String, ""),
                                  ("PartId", ua.VariantType.String, ""), ("MeasId", ua.VariantType.String, ""),
                                  ("ProductId", ua.VariantType.String, ""), ("FrameId", ua.VariantType.Int64, 0),
                                  ("File", ua.VariantType.String, ""), ("Verdict", ua.VariantType.String, ""),
                                  ("Reason", ua.VariantType.String, ""), ("DefectCount", ua.VariantType.Int32, 0),
                                  ("DefectClasses", ua.VariantType.String, []),
                                  ("Recipe", ua.VariantType.String, ""),
                                  ("CreationTime", ua.VariantType.DateTime, datetime.now(timezone.utc)),
                                  ("LatencyMs", ua.VariantType.Double, 0.0),
                                  ("InspectionMs", ua.VariantType.Double, 0.0),
                                  ("ResultCount", ua.VariantType.UInt64, 0)):
            self.part_vars[name] = await part.add_variable(st, name, ua.Variant(value, kind))
        info = await vision.add_object(st, "Station")
        self.info_vars = {}
        for name, value in (("StationId", self.context.station_id or ""), ("RunId", self.context.run_id or ""),
                            ("Control", self.config.control.value), ("ActiveRecipe", self.book.active_id),
                            ("ActiveRecipeFingerprint", self.book.active.fingerprint()),
                            ("KnownRecipes", self.book.ids()), ("LastError", ""), ("State", self.state)):
            self.info_vars[name] = await info.add_variable(st, name, ua.Variant(value, ua.VariantType.String))
        self.events = {}
        for name, type_id in (("JobStarted", JOB_STARTED_EVENT), ("Ready", READY_EVENT),
                              ("ResultReady", RESULT_READY_EVENT), ("RecipePrepared", RECIPE_PREPARED_EVENT)):
            gen = await server.get_event_generator(ua.NodeId(type_id, mv), server.nodes.server)
            gen.event.SourceNode = vision.nodeid
            gen.event.SourceName = "VisionSystem"
            self.events[name] = gen

    def _guarded(self, name: str, handler: Callable) -> Callable:
        async def call(parent: ua.NodeId, *args: ua.Variant):
            try:
                return await handler(*[a.Value for a in args])
            except Refused as exc:
                log.warning("OPC UA %s refused: %s", name, exc)
                await self._write(self.info_vars["LastError"], f"{name}: {exc}", ua.VariantType.String)
                return ua.StatusCode(exc.status)
        return call

    async def _write(self, node: Any, value: Any, kind: ua.VariantType) -> None:
        await self.server.write_attribute_value(node.nodeid, ua.DataValue(ua.Variant(value, kind)))

    # -- the state machine -----------------------------------------------------------------------------------
    async def _set_state(self, state: str) -> None:
        self.state = state
        top = state if state in TOP_STATES else "Operational"
        await self._write(self.top_state, ua.LocalizedText(top), ua.VariantType.LocalizedText)
        await self._write(await self.top_state.get_child("0:Id"), ua.NodeId(TOP_STATES[top], self.mv),
                          ua.VariantType.NodeId)
        auto = state if state in AUTO_STATES else ""
        await self._write(self.auto_state, ua.LocalizedText(auto), ua.VariantType.LocalizedText)
        await self._write(await self.auto_state.get_child("0:Id"),
                          ua.NodeId(AUTO_STATES[auto], self.mv) if auto else ua.NodeId(), ua.VariantType.NodeId)
        await self._write(self.info_vars["State"], state, ua.VariantType.String)

    def _expect(self, *states: str) -> None:
        if self.state not in states:
            raise Refused(ua.StatusCodes.BadInvalidState, f"the vision system is {self.state}; allowed only in "
                                                          f"{' or '.join(states)}")

    def _plc(self) -> None:
        if self.config.control is not Control.PLC:
            raise Refused(ua.StatusCodes.BadInvalidState, 'control = "observe": the line runs by itself and OPC UA '
                                                          'only reports; set [opcua] control = "plc" to drive it')

    def _not_switching(self) -> None:
        if self.switching:
            raise Refused(ua.StatusCodes.BadInvalidState, "a recipe is being prepared; start the job after its "
                                                          "RecipePrepared event")

    def in_flight(self) -> int:
        """Parts the source delivered (or single jobs fired) whose ledger row has not arrived yet."""
        return max(0, self.line.counters.acquired - self.parts_seen) + self.jobs.waiting

    async def _select_automatic(self) -> None:
        await self._set_state("Initialized")

    async def m_select_mode_automatic(self):
        self._plc()
        self._expect("Preoperational")
        await self._select_automatic()
        if self.prepared:
            await self._set_state("Ready")
        return [ua.Variant(0, ua.VariantType.Int32)]

    async def m_reset(self, *_args):
        self._expect("Error", "Halted", "Preoperational", "Initialized", "Ready")
        if self.line.failure is not None or (self.line._threads and not self.line.running):
            raise Refused(ua.StatusCodes.BadInvalidState, "the line has stopped"
                          + (f" on an error ({self.line.failure})" if self.line.failure else "")
                          + "; start the station again")
        await self._set_state("Preoperational")
        return [ua.Variant(0, ua.VariantType.Int32)]

    async def m_halt(self, *_args):
        """Stop the line (a drain: parts in flight keep their jobs) and go Halted; the server stays up after the run
        until the PLC disconnects (at most ``halt_timeout_s``)."""
        self.halted = True
        self.line.stop("halted over OPC UA")
        self.jobs.hold_flow()
        if self._trigger_loop is not None:
            self._trigger_loop.cancel()
            self._trigger_loop = None
        await self._set_state("Halted")
        return [ua.Variant(0, ua.VariantType.Int32)]

    def _new_job(self, recipe_id) -> str:
        """The id of a job a PLC may start now (the line Ready under PLC control, no recipe switch under way,
        ``recipe_id`` empty or the prepared recipe's); :class:`Refused` otherwise."""
        self._plc()
        self._expect("Ready")
        self._not_switching()
        self._check_recipe_arg(recipe_id)
        return f"{self.context.run_id}-{next(self.job_ids)}"

    async def m_start_single_job(self, meas_id=None, part_id=None, recipe_id=None, product_id=None, *_rest):
        job = self._new_job(recipe_id)
        self.jobs.start_single(_identity(job, meas_id, part_id, product_id))
        await self._set_state("SingleExecution")
        await self._event("JobStarted", job)
        try:
            await asyncio.to_thread(self.line.source.fire_trigger)
        except Exception as exc:  # noqa: BLE001 - told to the PLC, the line goes on
            self.jobs.cancel_single(job)
            await self._set_state("Error")
            raise Refused(ua.StatusCodes.BadNotSupported, f"the trigger could not be fired: {exc}") from None
        return [ua.Variant(job, ua.VariantType.String), ua.Variant(0, ua.VariantType.Int32)]

    async def m_start_continuous(self, meas_id=None, part_id=None, recipe_id=None, product_id=None, *_rest):
        job = self._new_job(recipe_id)
        self.jobs.start_flow(_identity(job, meas_id, part_id, product_id))
        await self._set_state("ContinuousExecution")
        await self._event("JobStarted", job)
        source = self.line.source
        if hasattr(source, "set_triggered"):
            source.set_triggered(False)
        else:  # a camera on software trigger: the next trigger as soon as the last part has its row
            self._trigger_loop = asyncio.create_task(self._keep_triggering())
        return [ua.Variant(job, ua.VariantType.String), ua.Variant(0, ua.VariantType.Int32)]

    async def _keep_triggering(self) -> None:
        while self.state == "ContinuousExecution":
            if self.in_flight() == 0:
                await asyncio.to_thread(self.line.source.fire_trigger)
            await asyncio.sleep(0.002)

    async def m_stop(self, *_args):
        """Hold the frames and answer at once; Ready (state and event) follows when the parts under way have their
        rows, so the call never outlasts a client's request timeout."""
        self._plc()
        self._expect("SingleExecution", "ContinuousExecution")
        if self._stopping is None or self._stopping.done():
            self._stopping = asyncio.create_task(self._halt_flow(wait=True))
        return [ua.Variant(0, ua.VariantType.Int32)]

    async def m_abort(self, *_args):
        self._plc()
        self._expect("SingleExecution", "ContinuousExecution")
        await self._halt_flow(wait=False)
        return [ua.Variant(0, ua.VariantType.Int32)]

    async def _halt_flow(self, wait: bool) -> None:
        """Stop the frames (the replay holds its next file, the trigger loop ends) and go Ready; ``wait``: after
        the parts under way have their rows (at most the line's drain timeout). Parts already taken keep their job
        (their ResultReady carries its JobId, after an Abort too); single jobs whose trigger the source dropped
        are forgotten."""
        if self._trigger_loop is not None:
            self._trigger_loop.cancel()
            self._trigger_loop = None
        dropped = 0
        if hasattr(self.line.source, "set_triggered"):
            dropped = self.line.source.set_triggered(True) or 0
        job = self.jobs.hold_flow() or self.jobs.oldest_waiting or ""
        self.jobs.drop_unfired(dropped)
        if not wait and self._stopping is not None:
            self._stopping.cancel()
        deadline = self.loop.time() + self.line.drain_timeout_s
        while wait and self.in_flight() and self.loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self.state not in ("SingleExecution", "ContinuousExecution"):
            return  # halted or failed meanwhile
        if wait and self.jobs.waiting:
            log.warning("OPC UA Stop: no row came for job(s) %s within %g s; forgotten",
                        ", ".join(self.jobs.drop_waiting()), self.line.drain_timeout_s)
        await self._set_state("Ready")
        await self._event("Ready", job)

    def _check_recipe_arg(self, recipe_id: Any) -> None:
        wanted = getattr(recipe_id, "Id", None)
        if wanted and wanted != self.book.active_id:
            raise Refused(ua.StatusCodes.BadInvalidArgument, f"recipe {wanted!r} is not the prepared one "
                                                             f"({self.book.active_id!r}); call PrepareRecipe first")

    # -- recipes ---------------------------------------------------------------------------------------------
    def _internal_id(self) -> Any:
        fingerprint = self.book.active.fingerprint()
        return ua.RecipeIdInternalDataType(Id=self.book.active_id, Version=fingerprint,
                                           Hash=bytes.fromhex(fingerprint), HashAlgorithm="sha256/48")

    async def m_prepare_recipe(self, external_id=None, internal_id=None, *_rest):
        self._plc()
        self._expect("Initialized", "Ready")
        wanted = getattr(external_id, "Id", None) or getattr(internal_id, "Id", None)
        if not wanted:
            raise Refused(ua.StatusCodes.BadInvalidArgument, "ExternalId.Id must name a recipe; known: "
                                                             + ", ".join(self.book.ids()))
        if wanted not in self.book.paths:
            raise Refused(ua.StatusCodes.BadNotFound, f"no recipe {wanted!r} known; known: "
                                                      + ", ".join(self.book.ids()))
        if self.switching:
            raise Refused(ua.StatusCodes.BadInvalidState, "a recipe is being prepared; wait for its RecipePrepared "
                                                          "event")
        if wanted == self.book.active_id:
            self.prepared = True
            await self._set_state("Ready")
            await self._recipe_prepared()
            return [ua.Variant(self._internal_id()), ua.Variant(True, ua.VariantType.Boolean),
                    ua.Variant(0, ua.VariantType.Int32)]
        if line_scan(self.book.active):
            raise Refused(ua.StatusCodes.BadNotSupported, "recipes of line-scan lines are switched by restarting "
                                                          "the station")
        if self.in_flight():
            raise Refused(ua.StatusCodes.BadInvalidState, f"{self.in_flight()} part(s) are still being inspected; "
                                                          "wait for their ResultReady, then prepare the recipe")
        # loading a model takes seconds: IsCompleted = false now, RecipePrepared (and Ready) when it is active
        self.switching = True
        self._tasks.append(asyncio.create_task(self._switch(wanted, CALLER.get())))
        return [ua.Variant(self._internal_id()), ua.Variant(False, ua.VariantType.Boolean),
                ua.Variant(0, ua.VariantType.Int32)]

    async def _recipe_prepared(self) -> None:
        gen = self.events["RecipePrepared"]
        internal = self._internal_id()
        gen.event.add_property("ExternalId", ua.RecipeIdExternalDataType(Id=internal.Id), _EO)
        gen.event.add_property("InternalId", internal, _EO)
        await gen.trigger(message=f"recipe {internal.Id} {internal.Version} prepared")

    async def _switch(self, recipe_id: str, user: str | None = None) -> None:
        """Prepare ``recipe_id`` off the loop and make it active between two frames; a recipe that does not load
        leaves the active one in place (LastError says why). A recipe that runs other weights is a promotion,
        recorded with the session's ``user`` (:mod:`station.promotion`) before it becomes active."""
        try:
            try:
                prepared = await asyncio.to_thread(self.book.prepare, recipe_id)
            except Exception as exc:  # noqa: BLE001 - a recipe that does not load leaves the active one in place
                raise Refused(ua.StatusCodes.BadConfigurationError,
                              f"recipe {recipe_id!r} was not activated: {exc}") from None
            if self.in_flight() or self.state not in ("Initialized", "Ready"):
                raise Refused(ua.StatusCodes.BadInvalidState, f"recipe {recipe_id!r} was not activated: a job "
                                                              "started while it was prepared; prepare it when idle")
            old = self.book.active
            await asyncio.to_thread(self.changes.record, station_id=self.context.station_id,
                                    run_id=self.context.run_id, old=old, new=prepared.recipe,
                                    new_path=self.book.paths[recipe_id], via="opcua PrepareRecipe")
            if await asyncio.to_thread(weights_changed, old, prepared.recipe):  # a candidate promoted: who, and why
                await asyncio.to_thread(record_promotion, self.context.db_path, prepared.recipe,
                                        user or "anonymous OPC UA session", VIA_OPCUA,
                                        station_id=self.context.station_id, from_recipe=ledger_label(old),
                                        from_engine=self.line.judge.engine_id,
                                        judging=judging_of(prepared.judge.inspector))
                log.info("OPC UA PrepareRecipe %s by %s puts other weights on the line: a promotion, recorded in %s "
                         "promotions", recipe_id, user or "an anonymous session", self.context.db_path)
            self.line.switch(prepared.judge)  # between frames: nothing is in flight; the rows follow it
            self.book.active, self.book.active_id = prepared.recipe, recipe_id
            log.info("recipe %s active (was %s), recorded in %s recipe_changes", prepared.judge.recipe,
                     ledger_label(old), self.context.db_path)
            await self._write(self.info_vars["ActiveRecipe"], recipe_id, ua.VariantType.String)
            await self._write(self.info_vars["ActiveRecipeFingerprint"], prepared.recipe.fingerprint(),
                              ua.VariantType.String)
            self.prepared = True
            await self._set_state("Ready")
            await self._recipe_prepared()
        except Refused as exc:
            log.error("OPC UA PrepareRecipe: %s", exc)
            await self._write(self.info_vars["LastError"], f"PrepareRecipe: {exc}", ua.VariantType.String)
        except Exception:  # noqa: BLE001 - the server goes on with the active recipe
            log.exception("OPC UA PrepareRecipe %s failed", recipe_id)
        finally:
            self.switching = False

    async def m_unprepare_recipe(self, external_id=None, internal_id=None, *_rest):
        self._plc()
        self._expect("Ready")
        self._not_switching()
        self.prepared = False
        await self._set_state("Initialized")
        return [ua.Variant(self._internal_id()), ua.Variant(0, ua.VariantType.Int32)]

    async def m_get_result(self, result_id=None, _timeout=None, *_rest):
        # ResultId is a ResultIdDataType, as the method declares it (a typed client such as node-opcua sends one); a
        # String (the ResultId of a ResultReady event) is taken too
        result_id = getattr(result_id, "Id", result_id)
        try:
            row = await asyncio.to_thread(self.changes.row, int(str(result_id)))
        except ValueError:
            row = None
        if row is None:
            raise Refused(ua.StatusCodes.BadNotFound, f"no ledger row {result_id!r}; result ids are row ids")
        return [ua.Variant(0, ua.VariantType.UInt32), ua.Variant(result_record(row, None)),
                ua.Variant(0, ua.VariantType.Int32)]

    # -- results ---------------------------------------------------------------------------------------------
    async def _event(self, name: str, job: str, message: str | None = None) -> None:
        gen = self.events[name]
        gen.event.add_property("JobId", job, ua.VariantType.String)
        await gen.trigger(message=message or f"{name} {job}")

    async def _consume_rows(self) -> None:
        """Publish rows in ledger order until the end marker (None) that :meth:`stop` queues."""
        while (item := await self.rows.get()) is not None:
            row, inspect_ms = item
            try:
                await self._publish(row, inspect_ms)
            except Exception:  # noqa: BLE001 - a result that cannot be published never stops the next ones
                log.exception("OPC UA: ledger row %s not published", row.get("id"))

    async def _publish(self, row: dict, inspect_ms: float | None) -> None:
        """One ledger row: LastResult, LastPart, a ResultReady event, and the end of its single job."""
        if row["verdict"] != "GAP":
            self.parts_seen += 1
        job = self.jobs.assign(row)
        result = result_record(row, inspect_ms)
        self.published += 1
        await self._write(self.result_var, result, ua.VariantType.ExtensionObject)
        values = {"RowId": int(row["id"]), "JobId": job, "PartId": result.PartId.Id, "MeasId": result.MeasId.Id,
                  "ProductId": result.ProductId.Id, "FrameId": int(row["frame_id"]),
                  "File": row.get("file") or "", "Verdict": row["verdict"], "Reason": row.get("reason") or "",
                  "DefectCount": result.ResultContent[1].Value, "DefectClasses": result.ResultContent[2].Value,
                  "Recipe": row.get("recipe") or "", "CreationTime": result.CreationTime,
                  "LatencyMs": float(row.get("latency_ms") or 0.0),
                  "InspectionMs": float(inspect_ms) if inspect_ms is not None else 0.0,
                  "ResultCount": self.published}
        for name, value in values.items():
            kind = (await self.part_vars[name].read_data_value()).Value.VariantType
            await self._write(self.part_vars[name], value, kind)
        self.last_result = values
        gen = self.events["ResultReady"]
        for name, kind in RESULT_FIELDS.items():
            value = getattr(result, name)
            gen.event.add_property(name, value.Id if name in ("ResultId", "JobId") else value, kind)  # String
        await gen.trigger(message=f"{row['verdict']} {result.PartId.Id} (row {row['id']})")
        if self.state == "SingleExecution" and not self.jobs.waiting:
            await self._set_state("Ready")
            await self._event("Ready", job)

    async def _watch_line(self) -> None:
        """Error when the line stops on an error, Halted when it ends."""
        while True:
            await asyncio.sleep(0.2)
            state = getattr(self.line.state, "value", str(self.line.state))
            if state == "error" and self.state not in ("Error",):
                await self._set_state("Error")
            elif state in ("stopped", "draining") and self.state not in ("Halted", "Error"):
                await self._set_state("Halted")
