"""INT8 calibration images for ``engines build --precision int8 --calibration NAME``: a folder of images, or an
INT8 set that another package knows by name (a calibration profile's, registered by :mod:`calibration.int8`)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from engines.data.segmentation import spread
from engines.errors import EngineError
from engines.inputs import data_images, read_images


#: Where ``--calibration NAME`` finds INT8 image sets besides plain image folders: functions that take the name and
#: return the set's image files and the calibration cache kept with it (``None`` when the set has none), raising
#: :class:`EngineError` when the name is not a set they can read. The calibration package registers its profiles'
#: sets (``calibration int8 add``) when :mod:`calibration.int8` is imported, as the ``engines`` command does: the
#: engines package itself does not depend on calibration.
INT8_SETS: list[Callable[[str], tuple[list[Path], Path | None]]] = []


def register_int8_sets(finder: Callable[[str], tuple[list[Path], Path | None]]) -> None:
    """Let ``--calibration`` name INT8 sets that ``finder`` reads (see :data:`INT8_SETS`)."""
    if finder not in INT8_SETS:
        INT8_SETS.append(finder)


def int8_set(calibration: str) -> tuple[list[Path], Path | None]:
    """The image files and kept calibration cache of the INT8 set ``calibration`` names (see :data:`INT8_SETS`)."""
    if not INT8_SETS:
        raise EngineError(f"--calibration {calibration}: not a folder of images, and no INT8 sets of calibration "
                          "profiles are known here (import calibration.int8, as the `engines` command does)")
    return INT8_SETS[-1](calibration)


def calibration_images(calibration: str, count: int) -> list[np.ndarray]:
    """The int8 calibration images: a calibration profile's managed int8 set (``calibration int8``) or a folder."""
    path = Path(calibration)
    if path.is_dir() and not (path / "profile.json").exists() and not (path / "int8").exists():
        return data_images(path, count)
    files, _ = int8_set(calibration)
    if not files:
        raise EngineError(f"calibration {calibration} holds no int8 images; add real images with "
                          "`calibration int8 add`")
    return read_images([files[i] for i in spread(len(files), count)])
