"""Throughput of engines measured side by side: the engines take turns batch by batch in one run, so a noisy,
shared machine slows them all alike and their ratio holds."""
from __future__ import annotations

import time
from pathlib import Path

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
        report[name] = {"tiles_per_s": round(float(batch * len(arr) / arr.sum()), 1), "batches": len(arr),
                        "p50_ms": round(float(np.percentile(arr, 50)) * 1e3, 2),
                        "p99_ms": round(float(np.percentile(arr, 99)) * 1e3, 2)}
    return report


def _status_mb(field: str) -> float | None:
    """A memory figure of this process from ``/proc/self/status`` (Linux), in MiB; None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the process's peak resident size (VmHWM) so the next peak belongs to what runs next (Linux >= 4)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def load_measured(open_one, batch: int, warmup: int = 2, seed: int = 0):
    """Open an engine with ``open_one()`` and run ``warmup`` batches, measuring the memory that took: on the
    CPU the growth of the process's peak resident size over its size before loading (MiB), on CUDA the peak
    device memory allocated through torch. Returns ``(engine, memory)``."""
    import gc

    gc.collect()
    reset = _reset_peak_rss()
    before = _status_mb("VmRSS")
    cuda = False
    try:
        import torch

        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            cuda_before = torch.cuda.memory_allocated()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    engine = open_one()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, engine.spec.channels, engine.tile, engine.tile), dtype=np.float32)
    for _ in range(warmup):
        engine.infer(x)
    peak = _status_mb("VmHWM")
    if peak is not None and before is not None:  # the kernel updates VmHWM lazily: it can trail the RSS read above
        peak = max(peak, before)
    memory: dict[str, float | None] = {"rss_before_mb": before, "peak_rss_mb": peak}
    memory["peak_rss_growth_mb"] = (round(memory["peak_rss_mb"] - before, 1)
                                    if reset and before is not None and memory["peak_rss_mb"] is not None else None)
    if cuda and str(getattr(engine, "device", "cpu")).startswith("cuda"):
        torch.cuda.synchronize()
        memory["cuda_peak_mb"] = round((torch.cuda.max_memory_allocated() - cuda_before) / 2**20, 1)
    return engine, memory


def bench_engines(openers: dict, batch: int = 32, seconds: float = 10.0) -> dict[str, dict]:
    """Open each engine (name → zero-argument opener) with its memory measured, then measure all of them in
    turns (:func:`interleaved_throughput`). Returns name → figures, with ``ratio_to_first``."""
    engines, memory = {}, {}
    try:
        for name, opener in openers.items():
            engines[name], memory[name] = load_measured(opener, batch)
        speed = interleaved_throughput(engines, batch=batch, seconds=seconds)
        # a guarded int8 engine's speed depends on what it sees: say how much of this (random) input went to fp32
        shares = {name: e.guard_share() for name, e in engines.items()}
        guarded = {name: share for name, share in shares.items() if share is not None}
    finally:
        for engine in engines.values():
            engine.close()
    first = next(iter(speed.values()))["tiles_per_s"]
    report = {}
    for name in openers:
        report[name] = {**speed[name], "memory": memory[name],
                        "ratio_to_first": round(speed[name]["tiles_per_s"] / first, 3) if first else None}
        if name in guarded:
            report[name]["int8_guard_rescored"] = round(guarded[name], 4)
            report[name]["note"] = ("int8 guard: its speed depends on the images (random tiles here); measure it on "
                                    "real ones with `engines verify --against FP32`, which times both in turns")
    return report
