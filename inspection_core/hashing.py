"""SHA-256 of files and texts: one routine for weights, engine folders, calibration profiles and recipes.

>>> text_sha256("hello")[:12]
'2cf24dba5fb0'
"""
from __future__ import annotations

import hashlib
import os

#: Bytes read at a time, so large weights and engine plans are hashed without loading them whole.
CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The hex SHA-256 of a file's bytes, read in chunks of :data:`CHUNK`."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def text_sha256(text: str) -> str:
    """The hex SHA-256 of a text's UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
