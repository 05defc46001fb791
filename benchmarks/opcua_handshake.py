"""The PLC handshake over OPC UA: round-trip latency of single jobs against the bare inspection time.

    .venv/bin/python benchmarks/opcua_handshake.py                         # 100 jobs, bundled frames, 1 thread
    .venv/bin/python benchmarks/opcua_handshake.py --jobs 20 --security sign_encrypt --json handshake.json

A real station (the shipped ``magnetic_tile`` recipe on the bundled frames, ONNX Runtime, ``[opcua] control =
"plc"``, ledger in a temporary folder) is started in this process with its OPC UA server on a free loopback port.
A real asyncua client then does what a PLC does, ``--jobs`` times: StartSingleJob, wait for the ResultReady event
of that job, read ``LastPart/Verdict``. Figures, from the same run:

- ``round_trip_ms``: the client's clock from the StartSingleJob call to the verdict read back;
- ``ledger_latency_ms``: the ledger row's ``latency_ms`` (frame read from disk → verdict recorded);
- ``inspection_ms``: the inspector's own time (``timings["total"]``, ``LastPart/InspectionMs``);
- ``overhead_ms``: round trip minus ledger latency, per job: what OPC UA, the trigger and the ledger add.

Exit codes: 0 done (every verdict equal to its ledger row), 1 a verdict differed or a job timed out, 2 bad arguments.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import socket
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"p50": round(float(np.percentile(a, 50)), 2), "p99": round(float(np.percentile(a, 99)), 2),
            "mean": round(float(a.mean()), 2), "min": round(float(a.min()), 2), "max": round(float(a.max()), 2)}


def start_station(root: Path, threads: int, frames: Path | None):
    from station import integrations
    from station.app import build_line
    from station.recipe import load_recipe, shipped_recipe_path
    from station.rejectlog import new_run_id

    port = free_port()
    overrides = {"engine.threads": threads, "log.db": str(root / "rejects.db"), "log.save_reject_images": False,
                 "station.min_free_mb": 0, "opcua.endpoint": f"opc.tcp://127.0.0.1:{port}",
                 "opcua.pki": str(root / "pki")}
    if frames is not None:
        overrides["source.path"] = str(frames)
    recipe = load_recipe(shipped_recipe_path("magnetic_tile")).with_overrides(overrides)
    run_id = new_run_id()
    wanted = integrations.configure(recipe, integrations.Context(recipe, root / "rejects.db", recipe.station.id,
                                                                 run_id))
    line = build_line(recipe, run_id=run_id)
    active = integrations.start_all(wanted, line)
    if not active:
        raise SystemExit("the OPC UA server did not start; see the log above")
    line.start()
    return line, active, f"opc.tcp://127.0.0.1:{port}"


async def handshake(endpoint: str, user: str, password: str, jobs: int, db: Path, security: str,
                    pki: Path) -> list[dict]:
    from asyncua import Client, ua

    from station.opcua import NAMESPACE
    from station.opcua.server import RESULT_READY_EVENT, STATION_NS

    client = Client(endpoint, timeout=120)
    client.set_user(user)
    client.set_password(password)
    if security == "sign_encrypt":
        from asyncua.crypto.cert_gen import setup_self_signed_certificate
        from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
        from cryptography.x509.oid import ExtendedKeyUsageOID

        key, cert = pki / "plc_key.pem", pki / "plc_cert.der"
        await setup_self_signed_certificate(key, cert, "urn:benchmark:plc", "localhost",
                                            [ExtendedKeyUsageOID.CLIENT_AUTH], {"commonName": "plc"})
        client.application_uri = "urn:benchmark:plc"
        await client.set_security(SecurityPolicyBasic256Sha256, str(cert), str(key),
                                  server_certificate=str(pki / "server_cert.der"),
                                  mode=ua.MessageSecurityMode.SignAndEncrypt)
    events: asyncio.Queue = asyncio.Queue()

    class Handler:
        def event_notification(self, event) -> None:
            events.put_nowait(event)

        def status_change_notification(self, status) -> None:
            pass

    out = []
    async with client:
        await client.load_data_type_definitions()
        mv = await client.get_namespace_index(NAMESPACE)
        st = await client.get_namespace_index(STATION_NS)
        vision = await client.nodes.objects.get_child(f"{st}:VisionSystem")
        auto = await vision.get_child([f"{mv}:VisionStateMachine", f"{mv}:AutomaticModeStateMachine"])
        recipes = await vision.get_child(f"{mv}:RecipeManagement")
        verdict_node = await vision.get_child([f"{st}:LastPart", f"{st}:Verdict"])
        inspect_node = await vision.get_child([f"{st}:LastPart", f"{st}:InspectionMs"])
        start = await auto.get_child(f"{mv}:StartSingleJob")
        sub = await client.create_subscription(5, Handler())  # 5 ms publishing interval
        await sub.subscribe_events(client.nodes.server, ua.NodeId(RESULT_READY_EVENT, mv))
        await recipes.call_method(f"{mv}:PrepareRecipe", ua.RecipeIdExternalDataType(Id="magnetic_tile"),
                                  ua.RecipeIdInternalDataType(Id=""))
        args = (ua.MeasIdDataType(Id=""), ua.PartIdDataType(Id=""), ua.RecipeIdExternalDataType(Id=""),
                ua.ProductIdDataType(Id=""))
        for n in range(jobs):
            t0 = time.perf_counter()
            job, _error = await auto.call_method(start, *args)
            while True:
                event = await asyncio.wait_for(events.get(), 300)
                if event.JobId == job:
                    break
            verdict = await verdict_node.read_value()
            t1 = time.perf_counter()
            inspect_ms = await inspect_node.read_value()
            with sqlite3.connect(db) as con:
                row = con.execute("SELECT verdict, latency_ms, file FROM inspections WHERE id = ?",
                                  (int(event.ResultId),)).fetchone()
            out.append({"job": n + 1, "round_trip_ms": (t1 - t0) * 1000, "ledger_latency_ms": row[1],
                        "inspection_ms": inspect_ms, "verdict": verdict, "ledger_verdict": row[0], "file": row[2]})
            print(f"\rjob {n + 1}/{jobs}: {verdict} in {(t1 - t0) * 1000:.0f} ms", end="", file=sys.stderr,
                  flush=True)
    print(file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100, help="single jobs to run (default 100)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1)")
    parser.add_argument("--frames", type=Path, help="replay folder (default: the bundled magnetic-tile frames)")
    parser.add_argument("--security", choices=("none", "sign_encrypt"), default="none",
                        help="the endpoint the client uses (default none; sign_encrypt: Basic256Sha256)")
    parser.add_argument("--json", type=Path, help="also write the figures (and every job) to this file")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.threads < 0:
        parser.error("--jobs must be >= 1 and --threads >= 0")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    user, password = "benchmark", secrets.token_urlsafe(12)
    os.environ["STATION_OPCUA_USER"], os.environ["STATION_OPCUA_PASSWORD"] = user, password
    with tempfile.TemporaryDirectory(prefix="opcua-handshake-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        line, active, endpoint = start_station(root, args.threads, args.frames)
        started_s = time.perf_counter() - t
        try:
            jobs = asyncio.run(handshake(endpoint, user, password, args.jobs, root / "rejects.db", args.security,
                                         root / "pki"))
        finally:
            line.stop("benchmark done")
            line.join(60)
            from station import integrations

            integrations.close_all(active)
    mismatched = [j for j in jobs if j["verdict"] != j["ledger_verdict"]]
    report = {
        "jobs": len(jobs), "security": args.security, "threads": args.threads, "station_start_s": round(started_s, 1),
        "round_trip_ms": percentiles([j["round_trip_ms"] for j in jobs]),
        "ledger_latency_ms": percentiles([j["ledger_latency_ms"] for j in jobs]),
        "inspection_ms": percentiles([j["inspection_ms"] for j in jobs]),
        "overhead_ms": percentiles([j["round_trip_ms"] - j["ledger_latency_ms"] for j in jobs]),
        "verdicts_equal_to_ledger": not mismatched,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps({**report, "per_job": jobs}, indent=2))
    return 1 if mismatched else 0


if __name__ == "__main__":
    raise SystemExit(main())
