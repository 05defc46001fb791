"""Who each part is (station/part_identity.py, inspection_core PartIdentity): the PLC's ids joined to the source's
part id once, when the line acquires the part, and the ledger columns that record them."""
from __future__ import annotations

import asyncio
import csv
import dataclasses
import json
import time

import numpy as np
import pytest

from inspection_core.records import Frame, FrameGap, GapKind, NotInspected, NotInspectedReason, PartIdentity
from station.part_identity import IdentityBook


class Clock:
    def __init__(self) -> None:
        self.now = 1_000

    def __call__(self) -> int:
        return self.now


def frame(taken: int, part_id: str | None = None) -> Frame:
    return Frame(np.zeros((4, 4), np.uint8), 1, taken, "replay:x", identity=PartIdentity(part_id=part_id))


def test_an_identity_reads_empty_as_unsaid_and_the_plcs_values_win():
    assert PartIdentity(part_id="", meas_id="", product_id="", job_id="") == PartIdentity()
    assert not PartIdentity() and PartIdentity(meas_id="M-1")
    plc = PartIdentity(meas_id="M-1", product_id="X-7", job_id="run-1")
    assert plc.over(PartIdentity(part_id="a.jpg")) == PartIdentity("a.jpg", "M-1", "X-7", "run-1")
    assert PartIdentity(part_id="P-1").over(PartIdentity(part_id="a.jpg")).part_id == "P-1"
    assert PartIdentity(part_id=7).part_id == "7"


def test_frames_taken_during_a_flow_keep_its_identity_after_abort():
    clock = Clock()
    book = IdentityBook(clock=clock)
    clock.now = 2_000
    flow = PartIdentity(meas_id="lot-4", product_id="X-7", job_id="run-1")
    book.start_flow(flow)
    assert book.flowing == flow
    clock.now = 3_000
    assert book.hold_flow() == flow and book.flowing is None  # Abort
    book.expect(PartIdentity(part_id="P-2", job_id="run-2"))
    late = book.identify(frame(2_500, "a.jpg"))  # taken before the Abort, acquired after: still the flow's
    assert late.identity == PartIdentity("a.jpg", "lot-4", "X-7", "run-1")  # the source's part id: the PLC gave none
    assert book.identify(frame(3_100, "b.jpg")).identity == PartIdentity("P-2", None, None, "run-2")  # the single's
    alone = frame(3_200, "c.jpg")
    assert book.identify(alone) is alone  # no job asked for it: as the source made it


def test_single_jobs_in_order_a_lost_part_answers_one_and_dropped_triggers_are_forgotten():
    book = IdentityBook(clock=Clock())
    for job in ("a", "b", "c", "d"):
        book.expect(PartIdentity(part_id=f"P-{job}", job_id=job))
    assert book.drop_unfired(2) == ["d", "c"]  # Abort: the source had not served the last two triggers
    gap = FrameGap("genicam:cam", GapKind.LOST_IDS, 5, 5, 1, 4_000, 4_100)
    assert book.identify(gap).identity == PartIdentity(part_id="P-a", job_id="a")  # the part was lost: its row
    unreadable = NotInspected(6, 5_001, "replay:x", NotInspectedReason.UNREADABLE, file="z.jpg",
                              identity=PartIdentity(part_id="z.jpg"))
    assert book.identify(unreadable).identity == PartIdentity(part_id="P-b", job_id="b")
    assert book.waiting == 0
    book.expect(PartIdentity(job_id="e"))
    book.cancel("e")  # the trigger could not be fired
    assert book.claim(5_002) == PartIdentity()


def test_a_dropped_frame_keeps_the_identity_it_was_acquired_with():
    identified = dataclasses.replace(frame(time.monotonic_ns(), "a.jpg"),
                                     identity=PartIdentity(part_id="P-9", meas_id="M-9"))
    entry = NotInspected.of(identified, NotInspectedReason.DROPPED)
    assert entry.identity == PartIdentity(part_id="P-9", meas_id="M-9")


# -- end to end: the documented PLC sequence over OPC UA, to the ledger, MQTT and PostgreSQL ---------------------

@pytest.mark.slow
def test_a_plcs_meas_and_part_ids_reach_the_ledger_opcua_mqtt_and_postgresql(tmp_path, pg, fleet):
    """A PLC (a real asyncua client) runs PrepareRecipe → StartSingleJob(MeasId, PartId, ProductId) → ResultReady →
    GetResultById, then a continuous job, against a line that also publishes to a real broker (amqtt) and forwards to
    a real PostgreSQL server; the part ids are found in every one of them, and `station export` filters on them."""
    pytest.importorskip("asyncua")
    pytest.importorskip("paho.mqtt")
    pytest.importorskip("psycopg")
    from asyncua import Client, ua

    from station import integrations
    from station.app import build_line
    from station.cli import main as station_main
    from station.fleet.central import fetch_central
    from station.opcua import hash_password
    from station.recipe import load_recipe, shipped_recipe_path
    from station.rejectlog import fetch_rows, new_run_id
    from tests.station.pg_util import STATION_USER
    from tests.station.test_mqtt import AMQTT, Broker, Subscriber
    from tests.station.test_opcua import PASSWORD, SMALL, USER, Plc, run, small_frames
    from tests.station.waiting import free_port, wait_until

    if not AMQTT.exists():
        pytest.skip(f"needs the amqtt broker ({AMQTT}); pip install amqtt")
    frames = small_frames(tmp_path)
    (frames / "zz_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all" * 4)
    users = tmp_path / "users.toml"
    users.write_text(f'[users]\n{USER} = "{hash_password(PASSWORD)}"\n')
    broker = Broker(tmp_path).start()
    subscriber = Subscriber(broker.port, "inspection/+/results")
    db, endpoint = tmp_path / "rejects.db", f"opc.tcp://127.0.0.1:{free_port()}"
    recipe = load_recipe(shipped_recipe_path("magnetic_tile")).with_overrides({
        "source.path": str(frames), "engine.threads": 1, "log.db": str(db), "station.min_free_mb": 0,
        "station.id": "line-7", "opcua.endpoint": endpoint, "opcua.users_file": str(users),
        "opcua.pki": str(tmp_path / "pki"), "mqtt.url": f"mqtt://127.0.0.1:{broker.port}",
        "fleet.to": pg.url(STATION_USER, fleet), "fleet.interval_s": 0.2})
    run_id = new_run_id()
    wanted = integrations.configure(recipe, integrations.Context(recipe, db, recipe.station.id, run_id))
    line = build_line(recipe, run_id=run_id)
    active = integrations.start_all(wanted, line)
    assert sorted(i.name for i in active) == ["fleet", "mqtt", "opcua"]
    line.start()
    try:
        async def plc() -> list:
            client = Client(endpoint, timeout=30)
            client.set_user(USER)
            client.set_password(PASSWORD)
            async with client:
                p = await Plc(client).setup()
                _internal, _completed, error = await p.prepare("magnetic_tile")  # 1. select the recipe
                assert error == 0
                results = await p.vision.get_child(f"{p.mv}:ResultManagement")
                seen = []
                for meas, part, product in (("M-1", "P-1", "X-7"), ("M-2", "", ""), ("M-3", "P-3", "X-7"),
                                            ("M-4", "P-4", "")):  # the 4th part is the corrupt file
                    job, error = await p.call("StartSingleJob", ua.MeasIdDataType(Id=meas), ua.PartIdDataType(Id=part),
                                              ua.RecipeIdExternalDataType(Id=""), ua.ProductIdDataType(Id=product))
                    assert error == 0
                    event = await asyncio.wait_for(p.events.get(), 120)  # 3. its ResultReady
                    assert event.JobId == job
                    _h, by_id, error = await results.call_method(f"{p.mv}:GetResultById", event.ResultId,
                                                                 ua.Variant(0, ua.VariantType.Int32))
                    last = await (await results.get_child([f"{p.mv}:Results", f"{p.st}:LastResult"])).read_value()
                    for result in (event, by_id, last):
                        assert (result.MeasId.Id, result.JobId if result is event else result.JobId.Id) == (meas, job)
                        assert result.ProductId.Id == (product or "magnetic_tile")  # else the recipe's product
                    seen.append((event.ResultId, job, event.PartId.Id, by_id.PartId.Id, last.PartId.Id,
                                 await p.part("PartId"), await p.part("MeasId")))
                # a continuous job: its MeasId and ProductId on every part, the part ids the source's (file names)
                flow, _ = await p.call("StartContinuous", ua.MeasIdDataType(Id="lot-9"), ua.PartIdDataType(Id=""),
                                       ua.RecipeIdExternalDataType(Id=""), ua.ProductIdDataType(Id="X-8"))
                flowed = [await asyncio.wait_for(p.events.get(), 120) for _ in range(2)]
                await p.call("Stop")
                await p.wait_state("Ready", timeout=60)
                return seen, flow, flowed

        seen, flow, flowed = run(plc())
        files = [*SMALL, "zz_corrupt.jpg"]
        assert [s[2] for s in seen] == ["P-1", files[1], "P-3", "P-4"]  # ResultReady: the PLC's PartId, else the file
        assert all(s[2] == s[3] == s[4] == s[5] for s in seen)  # GetResultById, LastResult and LastPart agree
        assert [s[6] for s in seen] == ["M-1", "M-2", "M-3", "M-4"]
        assert {e.JobId for e in flowed} == {flow} and {e.MeasId.Id for e in flowed} == {"lot-9"}

        ledger = {str(r["id"]): r for r in fetch_rows(db)}
        assert [(ledger[s[0]]["part_id"], ledger[s[0]]["meas_id"], ledger[s[0]]["product_id"], ledger[s[0]]["job_id"])
                for s in seen] == [("P-1", "M-1", "X-7", seen[0][1]), (files[1], "M-2", None, seen[1][1]),
                                   ("P-3", "M-3", "X-7", seen[2][1]), ("P-4", "M-4", None, seen[3][1])]
        assert ledger[seen[3][0]]["verdict"] == "NOT_INSPECTED"  # the unreadable file's row carries its ids too
        flow_rows = [r for r in ledger.values() if r["job_id"] == flow]
        assert len(flow_rows) >= 2 and {(r["meas_id"], r["product_id"]) for r in flow_rows} == {("lot-9", "X-8")}
        assert {r["part_id"] for r in flow_rows} <= set(files)

        wait_until(lambda: {m["id"] for m in subscriber.results()} >= {int(i) for i in ledger}, 60,
                   "every ledger row at the MQTT subscriber")
        message = next(m for m in subscriber.results() if str(m["id"]) == seen[0][0])
        assert (message["part_id"], message["meas_id"], message["product_id"], message["job_id"]) == (
            "P-1", "M-1", "X-7", seen[0][1])

        wait_until(lambda: len(fetch_central(pg.url(db=fleet), station="line-7")) >= len(ledger), 60,
                   "every ledger row in PostgreSQL")
        [central] = fetch_central(pg.url(db=fleet), part_id="P-1")
        assert (str(central["id"]), central["meas_id"], central["product_id"], central["job_id"]) == (
            seen[0][0], "M-1", "X-7", seen[0][1])
        assert [r["part_id"] for r in fetch_central(pg.url(db=fleet), meas_id="lot-9")] == [
            r["part_id"] for r in sorted(flow_rows, key=lambda r: r["id"])]
    finally:
        line.stop("test done")
        line.join(60)
        integrations.close_all(active)
        subscriber.close()
        broker.kill()
    # `station export` on the station's ledger and on the fleet database, filtered by part and measurement
    out = tmp_path / "p1.json"
    assert station_main(["export", "--db", str(db), "--format", "json", "--part-id", "P-1", "--meas-id", "M-1",
                         "--out", str(out)]) == 0
    [row] = json.loads(out.read_text())
    assert (str(row["id"]), row["part_id"], row["meas_id"], row["job_id"]) == (seen[0][0], "P-1", "M-1", seen[0][1])
    assert station_main(["export", "--db", str(db), "--format", "json", "--part-id", "P-1", "--meas-id", "M-2",
                         "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == []  # both filters hold
    csv_out = tmp_path / "fleet.csv"
    assert station_main(["export", "--db", pg.url(db=fleet), "--format", "csv", "--part-id", "P-3",
                         "--out", str(csv_out)]) == 0
    [fleet_row] = list(csv.DictReader(csv_out.open()))
    assert (fleet_row["id"], fleet_row["part_id"], fleet_row["meas_id"], fleet_row["station_id"]) == (
        seen[2][0], "P-3", "M-3", "line-7")
