"""The line's integrations: OPC UA (PLCs), MQTT (MES, SCADA), Prometheus metrics (dashboards), the fleet database.

Each is optional and set by its recipe table (``[opcua]``, ``[mqtt]``, ``[metrics]``, ``[fleet]``) or its command-line
flag (``--opcua``, ``--mqtt``, ``--metrics``, ``--fleet``), which sets the table's address key. The part ledger is the
record; integrations publish from it. Every committed ledger row reaches each integration through
:meth:`Integration.on_row` on the line's logging thread, so an integration must hand the row off (a queue, a counter)
and return at once. An integration that fails to start, or whose peer goes away, is logged and never stops the
line nor loses a row: publishers that need every row ship from the log itself (:mod:`station.outbox`).

A module providing an integration exposes ``from_table(t, context) -> Integration``: ``t`` is the table as a
:class:`~station.recipe.TableReader` (``t.base`` is the recipe's folder), read key by key with ``t.get`` and closed
with ``t.finish()``, so a bad key raises :class:`~station.errors.RecipeError` with what to fix, in the same words as
the recipe's own tables; it never connects anywhere.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol

from station.recipe import INTEGRATION_TABLES, Recipe, TableReader

log = logging.getLogger(__name__)

#: table -> (module providing ``from_table``, the key its command-line flag sets)
PROVIDERS: dict[str, tuple[str, str]] = {
    "opcua": ("station.opcua", "endpoint"),
    "mqtt": ("station.mqtt", "url"),
    "metrics": ("station.metrics", "listen"),
    "fleet": ("station.fleet.forwarder", "to"),
}
assert set(PROVIDERS) == set(INTEGRATION_TABLES)


class Integration(Protocol):
    """What the line needs of an integration."""

    name: str

    def start(self, line: Any) -> None:
        """Begin serving or publishing for ``line`` (a :class:`station.pipeline.Line`, not started yet); may raise,
        the caller logs it and runs on without this integration."""

    def on_row(self, row: Mapping[str, Any], entry: Any) -> None:
        """A committed ledger row (a dict with ``id``) and the entry it records; called on the logging thread."""

    def status(self) -> dict[str, Any]:
        """A few figures for the run's summary (connected, sent, lag...)."""

    def close(self) -> None:
        """Stop, after a bounded wait to hand over what is pending; never raises."""


@dataclass(frozen=True)
class Context:
    """What an integration knows of the station it serves."""

    recipe: Recipe
    db_path: Path
    station_id: str
    run_id: str


def flag_overrides(opcua: str | None = None, mqtt: str | None = None, metrics: str | None = None,
                   fleet: str | None = None) -> dict[str, str]:
    """Recipe overrides (``"table.key": value``) for the command-line flags that were given."""
    given = {"opcua": opcua, "mqtt": mqtt, "metrics": metrics, "fleet": fleet}
    return {f"{name}.{PROVIDERS[name][1]}": value for name, value in given.items() if value}


def configure(recipe: Recipe, context: Context) -> list[Integration]:
    """The integrations the recipe asks for, checked and built (not started); a bad table raises
    :class:`~station.errors.RecipeError` before anything runs."""
    built = []
    for name in INTEGRATION_TABLES:
        table = recipe.integrations.get(name)
        if table is None:
            continue
        module = importlib.import_module(PROVIDERS[name][0])
        reader = TableReader(table, str(recipe.path), name, Path(recipe.path).resolve().parent)
        built.append(module.from_table(reader, context))
    return built


def start_all(integrations: list[Integration], line: Any) -> list[Integration]:
    """Start each integration and attach it to the line's ledger rows; one that fails to start is logged and
    left out (the line runs on without it). Returns those started."""
    started = []
    for integration in integrations:
        try:
            integration.start(line)
        except Exception as exc:  # noqa: BLE001 - an integration never stops inspection
            log.error("%s did not start (%s: %s); the line runs without it, every part is still in the reject log",
                      integration.name, type(exc).__name__, exc)
            continue
        line.listeners.append(integration)
        started.append(integration)
    return started


def close_all(integrations: list[Integration]) -> dict[str, dict[str, Any]]:
    """Close each integration (after the line stopped) and return their final status by name."""
    report = {}
    for integration in integrations:
        try:
            integration.close()
        except Exception:  # noqa: BLE001 - closing never fails the run
            log.exception("%s did not close cleanly", integration.name)
        try:
            report[integration.name] = integration.status()
        except Exception as exc:  # noqa: BLE001
            report[integration.name] = {"error": str(exc)}
    return report
