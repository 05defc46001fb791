"""Helpers shared by the source tests."""
from __future__ import annotations

import threading

from inspection_core.records import Frame
from station.sources import FrameSource


def take_frames(source: FrameSource, n: int, deadline_s: float = 10.0) -> list[Frame]:
    """Up to ``n`` frames; a timer stops the source so a broken source cannot hang the test."""
    timer = threading.Timer(deadline_s, source.stop)
    timer.start()
    frames: list[Frame] = []
    try:
        for frame in source:
            frames.append(frame)
            if len(frames) >= n:
                break
    finally:
        timer.cancel()
    return frames
