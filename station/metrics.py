"""Prometheus metrics of the line on ``http://HOST:PORT/metrics`` (``[metrics] listen`` or ``--metrics HOST:PORT``).

Counted from the ledger rows the line commits (so ``/metrics`` counts the same parts as the log):

- ``station_parts_total{verdict="PASS|FAIL|NOT_INSPECTED"}``: parts, by verdict;
- ``station_gap_rows_total`` and ``station_gap_frames_total``: GAP rows and the frames they stand for;
- ``station_stage_seconds{stage=...}``: a histogram of each stage's time (the inspection's ``timings``:
  ``prepare``, ``tile``, ``infer``, ``stitch``, ``verdict``, ``total``...), ``station_inference_seconds`` (the engine's
  ``infer`` stage) and ``station_latency_seconds`` (frame timestamp to verdict).

Read from the line when Prometheus scrapes:

- ``station_frames_acquired_total``, ``station_frames_dropped_total``, ``station_frames_lost_total``;
- ``station_camera_up`` (1 while the source is connected), ``station_line_state{state=...}`` (1 for the current);
- ``station_unclean_end`` (1 when this start found that an earlier run on its reject log ended without closing it,
  killed or crashed, or left parts without a verdict) and ``station_interrupted_parts_total`` (those parts, recorded
  NOT_INSPECTED ``interrupted`` at this start; :mod:`station.journal`);
- ``station_integration_lag_rows{integration=...}`` / ``..._lag_seconds``: how far each other integration that
  reports a lag (MQTT, the fleet forwarder) is behind the log;
- ``station_info``: station id, run id, engine id, recipe (product and fingerprint) and source;
- with a ``[shadow]`` candidate (:mod:`station.shadow`): ``station_shadow_parts_total`` (parts it judged, recorded in
  the ledger's ``shadow`` table), ``station_shadow_disagreements_total`` (of those, a verdict other than the
  production engine's), ``station_shadow_skipped_total`` (parts chosen for it that found its queue full) and
  ``station_shadow_disagreement_ratio`` (disagreements over parts judged; 0 before any).

Each :class:`MetricsServer` has its own registry (never prometheus-client's global one).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from inspection_core.records import CameraState, InspectionResult, LineState, Verdict
from station.errors import StationError
from station.recipe import MISSING, TableReader, check_str
from station.rejectlog import GAP

log = logging.getLogger(__name__)

PART_VERDICTS = (Verdict.PASS.value, Verdict.FAIL.value, Verdict.NOT_INSPECTED.value)
#: seconds: from a fast GPU stage (1 ms) to a slow CPU inspection of a large frame (30 s)
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_LISTEN = 'HOST:PORT, e.g. "127.0.0.1:9400", "0.0.0.0:9400" (every interface) or "[::1]:9400" (or pass --metrics)'


@dataclass(frozen=True)
class MetricsConfig:
    host: str
    port: int


def parse_table(t: TableReader) -> MetricsConfig:
    """Check ``[metrics]``: ``listen = "HOST:PORT"`` (port 0: any free port); never binds here."""
    config = t.get("listen", MISSING, _listen, _LISTEN)
    t.finish()
    return config


def _listen(v: Any) -> MetricsConfig:
    host, _, port = check_str(v).rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or ":" in host and not v.startswith("[") or not port.isdigit() or int(port) > 65535:
        raise ValueError
    return MetricsConfig(host, int(port))


class MetricsServer:
    """The ``[metrics]`` integration (:class:`station.integrations.Integration`): counts ledger rows and serves
    ``/metrics`` on its own registry."""

    name = "metrics"

    def __init__(self, config: MetricsConfig, context: Any) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics

        # no `*_created` series beside every counter and histogram: they doubled the series and no dashboard reads
        # them (a process-wide switch of prometheus-client; the station serves no other registry)
        disable_created_metrics()
        self.config = config
        self.context = context
        self.port: int | None = None  # the bound port once started (useful with port 0)
        self.registry = CollectorRegistry(auto_describe=True)
        self.parts = Counter("station_parts", "Parts recorded in the ledger, by verdict", ["verdict"],
                             registry=self.registry)
        for verdict in PART_VERDICTS:
            self.parts.labels(verdict)
        self.gap_rows = Counter("station_gap_rows", "GAP rows in the ledger (frames the source lost)",
                                registry=self.registry)
        self.gap_frames = Counter("station_gap_frames", "Frames the GAP rows stand for", registry=self.registry)
        self.stages = Histogram("station_stage_seconds", "Time of each inspection stage", ["stage"],
                                buckets=STAGE_BUCKETS, registry=self.registry)
        self.inference = Histogram("station_inference_seconds", "Time in the engine (the infer stage) per part",
                                   buckets=STAGE_BUCKETS, registry=self.registry)
        self.latency = Histogram("station_latency_seconds", "From the frame's timestamp to its verdict",
                                 buckets=STAGE_BUCKETS, registry=self.registry)
        self._line: Any = None
        self._server: Any = None
        self._thread: Any = None

    def start(self, line: Any) -> None:
        from prometheus_client import start_http_server

        self._line = line
        self.registry.register(_LineCollector(self))
        try:
            self._server, self._thread = start_http_server(self.config.port, self.config.host, registry=self.registry)
        except OSError as exc:
            raise StationError(f"cannot serve /metrics on {self.config.host}:{self.config.port}: {exc.strerror or exc}"
                               "; choose a free port with [metrics] listen or --metrics HOST:PORT, or stop the "
                               "program holding it") from None
        self.port = self._server.server_port
        log.info("serving http://%s:%d/metrics", self.config.host, self.port)

    def on_row(self, row: Mapping[str, Any], entry: Any) -> None:
        verdict = row.get("verdict")
        if verdict == GAP:
            self.gap_rows.inc()
            self.gap_frames.inc(int(row.get("frame_count") or 0))
            return
        self.parts.labels(verdict).inc(int(row.get("frame_count") or 1))
        if isinstance(entry, InspectionResult):
            for stage, ms in entry.timings.items():
                self.stages.labels(stage).observe(ms / 1000.0)
            if "infer" in entry.timings:
                self.inference.observe(entry.timings["infer"] / 1000.0)
            self.latency.observe(max(0.0, entry.latency_ms) / 1000.0)

    def status(self) -> dict[str, Any]:
        return {"listen": f"{self.config.host}:{self.port if self.port is not None else self.config.port}",
                "serving": self._server is not None}

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            self._thread.join(5)


class _LineCollector:
    """What is read from the line at scrape time: its counters, the camera, the other integrations' lag."""

    def __init__(self, owner: MetricsServer) -> None:
        self.owner = owner

    def describe(self) -> list:
        return []  # names known only at collect time (the integrations present): no checks at registration

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        line, context = self.owner._line, self.owner.context
        stats = line.stats()
        for name, value, text in (("acquired", stats.acquired, "Frames the source delivered"),
                                  ("dropped", stats.dropped, "Frames dropped by the full frames queue"),
                                  ("lost", stats.lost, "Frames the source lost (estimated for an outage)")):
            yield CounterMetricFamily(f"station_frames_{name}", text, value=value)
        yield GaugeMetricFamily("station_camera_up", "1 while the source is connected, else 0",
                                value=int(stats.source.state is CameraState.CONNECTED))
        yield GaugeMetricFamily("station_unclean_end", "1 when an earlier run on this reject log ended without closing "
                                "it (killed, crashed) or left parts without a verdict", value=int(bool(stats.unclean_end)))
        yield CounterMetricFamily("station_interrupted_parts", "Parts earlier runs left without a verdict, recorded "
                                  "NOT_INSPECTED (interrupted) at this start", value=stats.interrupted_parts)
        state = GaugeMetricFamily("station_line_state", "1 for the line's current state", labels=["state"])
        for each in LineState:
            state.add_metric([each.value], int(stats.state is each))
        yield state
        rows = GaugeMetricFamily("station_integration_lag_rows", "Ledger rows an integration has not delivered yet",
                                 labels=["integration"])
        seconds = GaugeMetricFamily("station_integration_lag_seconds", "Age of the oldest row not delivered yet",
                                    labels=["integration"])
        for name, status in stats.links.items():  # every integration's status, read once by line.stats()
            if name == self.owner.name or "error" in status:  # a status that could not be read is left out
                continue
            if "lag_rows" in status:
                rows.add_metric([name], float(status["lag_rows"]))
            if "lag_seconds" in status:
                seconds.add_metric([name], float(status["lag_seconds"]))
        yield rows
        yield seconds
        shadow = stats.links.get("shadow")
        if shadow and "error" not in shadow:  # a [shadow] candidate beside the engine (station.shadow)
            yield CounterMetricFamily("station_shadow_parts", "Parts the shadow candidate judged beside the engine",
                                      value=shadow["shadowed"])
            yield CounterMetricFamily("station_shadow_disagreements", "Shadowed parts whose candidate verdict differs "
                                      "from the production verdict", value=shadow["disagreements"])
            yield CounterMetricFamily("station_shadow_skipped", "Parts chosen for the shadow that found its queue full",
                                      value=shadow["skipped"])
            yield GaugeMetricFamily("station_shadow_disagreement_ratio", "Disagreements over the parts the shadow "
                                    "judged (0 before any)", value=shadow["disagreement_rate"])
        recipe = context.recipe
        yield InfoMetricFamily("station", "The station, its run, engine and recipe", value={
            "station_id": context.station_id, "run_id": context.run_id, "engine_id": stats.engine_id,
            "recipe": recipe.product.name, "recipe_fingerprint": recipe.fingerprint(),
            "source": str(getattr(line.source, "name", ""))})


def from_table(t: TableReader, context: Any) -> MetricsServer:
    """The ``[metrics]`` integration of a recipe, checked (never binds here); see :mod:`station.integrations`."""
    return MetricsServer(parse_table(t), context)
