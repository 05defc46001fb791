"""Frame sources: replayed image files and GenICam cameras behind one interface.

>>> source = open_source("replay:station/samples/glass", fps=10)   # doctest: +SKIP
>>> source = open_source("genicam", frame_rate=50)                  # viky.cti, first camera  # doctest: +SKIP
>>> source = open_source("genicam:/opt/vendor/producer.cti", device="21345678")  # doctest: +SKIP
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from station.errors import SourceError
from station.sources.base import FrameSource
from station.sources.genicam import ColourMode, GenICamSource
from station.sources.replay import IMAGE_SUFFIXES, ReplaySource

__all__ = ["FrameSource", "ReplaySource", "GenICamSource", "ColourMode", "IMAGE_SUFFIXES", "open_source"]

SPEC_HELP = (
    "use 'replay:FOLDER', 'replay:a.png,b.png' (a file list), 'genicam' (the first camera of the default "
    "producer viky.cti) or 'genicam:/path/to/producer.cti'"
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
