"""Frame sources: replayed image files and GenICam cameras behind one interface.

For example::

    source = open_source("replay:station/samples/glass", fps=10)
    source = open_source("genicam", frame_rate=50)                                   # viky.cti, first camera
    source = open_source("genicam:/opt/vendor/producer.cti", device="21345678")
    source = open_source("linescan-replay", line_rate_hz=20_000, block_lines=512)   # synthetic screen
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from inspection_core.imageio import IMAGE_SUFFIXES
from station.errors import SourceError
from station.sources.base import FrameSource
from station.sources.genicam import ColourMode, GenICamSource
from station.sources.linescan import GenICamBlocks, LineScanReplay, LineScanSource, replay_image
from station.sources.replay import ReplaySource

__all__ = ["FrameSource", "ReplaySource", "GenICamSource", "ColourMode", "IMAGE_SUFFIXES", "open_source",
           "LineScanSource", "LineScanReplay", "GenICamBlocks"]

SPEC_HELP = (
    "use 'replay:FOLDER', 'replay:a.png,b.png' (a file list), 'genicam' (the first camera of the default "
    "producer viky.cti), 'genicam:/path/to/producer.cti' or 'linescan-replay[:IMAGE]' (an image, or a synthetic "
    "screen, streamed as line blocks)"
)


def open_source(spec: str, **settings: Any) -> FrameSource:
    """Build the source named by ``spec``; ``settings`` go to its constructor (e.g. ``fps=10``).

    The source is returned unopened: use it as a context manager. Raises :class:`SourceError` for an
    unknown spec or setting, with the forms that work.
    """
    text = str(spec).strip()
    kind, sep, rest = text.partition(":")
    kind = kind.lower()
    if kind == "replay" and sep:
        target = rest.strip()
        if not target:
            raise SourceError(f"'{text}' names no folder; {SPEC_HELP}")
        paths: str | list[str] = target
        if not Path(target).expanduser().exists() and "," in target:
            paths = [part.strip() for part in target.split(",") if part.strip()]
        return _build(ReplaySource, text, paths, settings)
    if kind == "linescan-replay":
        return _linescan(text, rest.strip() or None, dict(settings))
    if kind == "genicam":
        cti = rest.strip() or None
        if cti is not None and "cti" not in settings:
            settings = {**settings, "cti": cti}
        return _build(GenICamSource, text, None, settings)
    hint = ""
    if Path(text).expanduser().exists():
        hint = f" (did you mean 'replay:{text}'?)"
    elif text.lower().endswith(".cti"):
        hint = f" (did you mean 'genicam:{text}'?)"
    raise SourceError(f"unknown source '{text}'{hint}; {SPEC_HELP}")


def _build(cls: type[FrameSource], spec: str, paths: Any, settings: dict[str, Any]) -> FrameSource:
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "paths")]
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        raise SourceError(f"{cls.__name__} ('{spec}') has no setting {', '.join(unknown)}; "
                          f"known settings: {', '.join(accepted)}")
    return cls(paths, **settings) if paths is not None else cls(**settings)


_REPLAY_SETTINGS = ("block_lines", "line_rate_hz", "passes", "gap_lines", "drop_blocks", "delay_blocks", "line_counter")
_PART_SETTINGS = ("part_lines", "part_mode", "max_part_lines", "late_tolerance_ms")


def _linescan(spec: str, path: str | None, settings: dict[str, Any]) -> FrameSource:
    """``linescan-replay[:IMAGE]``: an image (or the synthetic screen ``screen_seed`` of ``screen_size``) as line
    blocks, assembled into parts (fixed-length: the image's lines unless ``part_lines`` says otherwise)."""
    image_settings = {k: settings.pop(k) for k in ("screen_seed", "screen_size") if k in settings}
    unknown = sorted(set(settings) - set(_REPLAY_SETTINGS) - set(_PART_SETTINGS))
    if unknown:
        raise SourceError(f"'{spec}' has no setting {', '.join(unknown)}; known settings: "
                          f"{', '.join(('screen_seed', 'screen_size') + _REPLAY_SETTINGS + _PART_SETTINGS)}")
    image, what = replay_image(path, **image_settings)
    replay = LineScanReplay(image, name=f"linescan-replay:{what}",
                            **{k: v for k, v in settings.items() if k in _REPLAY_SETTINGS})
    parts = {k: v for k, v in settings.items() if k in _PART_SETTINGS}
    if parts.get("part_mode", "fixed") == "fixed":
        parts.setdefault("part_lines", image.shape[0])
    return LineScanSource(replay, line_rate_hz=settings.get("line_rate_hz", 0.0), **parts)
