"""Throughput of engines measured side by side: the engines take turns batch by batch in one run, so a noisy,
shared machine slows them all alike and their ratio holds."""
from __future__ import annotations

import time

import numpy as np


def interleaved_throughput(engines: dict, batch: int = 32, seconds: float = 10.0, warmup: int = 2,
                           seed: int = 0) -> dict[str, dict[str, float]]:
    """Tiles per second and per-batch latency (p50, p99 in ms) of each engine in ``engines`` (name → object with
    ``infer(batch)``, ``spec`` and ``tile``), on the same random normalised batch, taking turns for about
    ``seconds`` in all."""
    if not engines:
        raise ValueError("no engine to measure")
    rng = np.random.default_rng(seed)
    inputs = {}
    for name, engine in engines.items():
        shape = (batch, engine.spec.channels, engine.tile, engine.tile)
        inputs[name] = rng.standard_normal(shape, dtype=np.float32)
        for _ in range(warmup):
            engine.infer(inputs[name])
    times: dict[str, list[float]] = {name: [] for name in engines}
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or min(len(t) for t in times.values()) < 3:
        for name, engine in engines.items():
            t0 = time.perf_counter()
            engine.infer(inputs[name])
            times[name].append(time.perf_counter() - t0)
    report = {}
    for name, t in times.items():
        arr = np.asarray(t)
        report[name] = {"tiles_per_s": round(batch * len(arr) / arr.sum(), 1), "batches": len(arr),
                        "p50_ms": round(float(np.percentile(arr, 50)) * 1e3, 2),
                        "p99_ms": round(float(np.percentile(arr, 99)) * 1e3, 2)}
    return report
