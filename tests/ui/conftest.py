"""Shared fixtures of the panel tests: headless Qt, synthetic inspection results, a settable stats source."""
from __future__ import annotations

import os
import threading
import time
from dataclasses import replace
from typing import Callable

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before anything imports Qt

import numpy as np
import pytest

from inspection_core.records import (CameraState, Defect, Frame, InspectionResult, LineStats, PartIdentity,
                                     SourceHealth, Verdict)

HEIGHT, WIDTH = 300, 400
BLOB = (slice(120, 160), slice(200, 250))  # rows, columns of the synthetic defect


def synthetic_image(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A grey gradient (like cover glass under uneven light) with a dark blob where the defect is."""
    image = np.tile(np.linspace(90, 170, width, dtype=np.float32), (height, 1)).astype(np.uint8)
    image[BLOB] = 40
    return image


def synthetic_mask(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    mask = np.zeros((height, width), np.float32)
    mask[BLOB] = 0.9
    mask[100:110, 20:30] = 0.3  # below threshold: must stay unpainted
    return mask


BLOB_DEFECT = Defect(label="scratch", bbox=(200, 120, 50, 40), area_px=2000, centroid=(224.5, 139.5),
                     mean_score=0.9, max_score=0.9)


def make_result(frame_id: int = 1, verdict: Verdict = Verdict.FAIL, file: str | None = "glass_0001.png",
                image: np.ndarray | None = None, identity: PartIdentity = PartIdentity()) -> InspectionResult:
    """A real InspectionResult; FAIL ones carry the blob mask and one defect, PASS ones an empty mask."""
    image = synthetic_image() if image is None else image
    failed = verdict is Verdict.FAIL
    frame = Frame(image=image, frame_id=frame_id, timestamp_ns=time.monotonic_ns(), source="replay:samples",
                  meta={"file": file} if file else {}, identity=identity)
    mask = synthetic_mask(*image.shape[:2]) if failed else np.zeros(image.shape[:2], np.float32)
    return InspectionResult(frame=frame, mask=mask, defects=(BLOB_DEFECT,) if failed else (), verdict=verdict,
                            engine_id="bffn-s/onnxruntime-cpu", timings={"total": 11.5}, latency_ms=14.2,
                            decided=mask >= 0.5 if failed else None)


class StatsSource:
    """What a pipeline's ``stats()`` would return; tests change it from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats = LineStats(
            inspected=1234, passed=1200, failed=34, dropped=7, errors=0, throughput_fps=18.6,
            latency_ms_p50=12.3, latency_ms_p99=31.7, engine_id="bffn-s/onnxruntime-cpu",
            source=SourceHealth(state=CameraState.CONNECTED, frames=1241, lost_frames=2, incomplete_frames=5,
                                reconnects=1, last_error=None))
        self.calls = 0

    def __call__(self) -> LineStats:
        with self._lock:
            self.calls += 1
            return self._stats

    def update(self, **changes: object) -> None:
        with self._lock:
            self._stats = replace(self._stats, **changes)

    def update_source(self, **changes: object) -> None:
        with self._lock:
            self._stats = replace(self._stats, source=replace(self._stats.source, **changes))


@pytest.fixture
def stats() -> StatsSource:
    return StatsSource()


def publish_in_thread(fn: Callable[[], None]) -> threading.Thread:
    """Run ``fn`` on a background thread, as the pipeline would; the caller joins it."""
    thread = threading.Thread(target=fn, name="fake-pipeline", daemon=True)
    thread.start()
    return thread
