"""One exception hierarchy for the bottom layer; every message says what to do next.

Packages above re-use these classes under their own names where their users expect them (``station.errors``
imports :class:`TilingError`), so ``except TilingError`` works whichever module it is imported from.

User errors and bugs do not look alike. Each package declares one user-error root with :func:`user_error_root`
(:class:`InspectionCoreError` here, ``EnginesError``, ``CalibrationError``, ``StationError`` above); what a
package raises on purpose for bad input (a file, a flag, a recipe, a data set, weights) derives from it. The
commands report an exception as a user error (one line, exit status 2) only when it derives from a declared root
(:func:`report_error`); anything else, a built-in ``ValueError`` included, is a bug and shows its traceback (exit
status 1). A user error may also derive from a built-in class (``class SettingError(InspectionCoreError,
ValueError)``) so callers that catch the built-in keep working, but the built-in alone never makes a user error.
"""
from __future__ import annotations

import sys
import traceback
from pathlib import Path

#: A command's exit status for a user error (bad input: one line) and for a bug (its traceback).
EXIT_USAGE, EXIT_BUG = 2, 1

_ROOTS: list[type[Exception]] = []


def user_error_root(cls: type[Exception]) -> type[Exception]:
    """Declare ``cls`` a package's user-error root (a class decorator): the commands report it and its subclasses
    in one line (:func:`report_error`). A built-in class is refused with ``TypeError``: a built-in exception is a
    bug until proven otherwise."""
    if cls.__module__ == "builtins" or not issubclass(cls, Exception):
        raise TypeError(f"a user-error root is a package's own Exception class, not {cls.__module__}.{cls.__name__}")
    if cls not in _ROOTS:
        _ROOTS.append(cls)
    return cls


def user_errors() -> tuple[type[Exception], ...]:
    """The declared user-error roots of the packages imported so far (a package's errors can only be raised once
    its errors module is imported, which declares its root)."""
    return tuple(_ROOTS)


@user_error_root
class InspectionCoreError(Exception):
    """Base of every error the bottom layer raises on purpose."""


class SettingError(InspectionCoreError, ValueError):
    """A setting handed in from outside is out of range: a recipe's or a flag's decision rule or ROI, a weights
    folder's input spec. Also a ``ValueError``, so a check that refuses values with ``except ValueError`` (a
    recipe key's) still catches it; commands report it by its root, :class:`InspectionCoreError`."""


class TilingError(InspectionCoreError):
    """A tile plan or a batch of tiles does not fit the image it was made for."""


class ImageReadError(InspectionCoreError):
    """An image file is missing, unreadable, empty or not a decodable image.

    ``path`` is the file, ``reason`` says what is wrong with it in a few words (``"empty file"``), and
    ``os_error`` is the operating system's error when the file could not be read at all (missing, a folder, no
    permission), ``None`` when its bytes were read but are not an image.
    """

    def __init__(self, path: str | Path, reason: str, os_error: OSError | None = None) -> None:
        self.path = Path(path)
        self.reason = reason
        self.os_error = os_error
        super().__init__(f"cannot read image {self.path}: {reason}")


def report_error(prog: str, exc: BaseException) -> int:
    """The exit status of a command whose handler raised ``exc``, after telling the user.

    A user error (derived from a root declared with :func:`user_error_root`) prints ``<prog>: error: <message>``
    and gives :data:`EXIT_USAGE` (2). So does a module of the training stack that this install leaves out (a
    ``ModuleNotFoundError`` for torch on a base install: :mod:`inspection_core.extras`), with the install line.
    Anything else is a bug: its traceback, a line saying so, and :data:`EXIT_BUG` (1).
    """
    if isinstance(exc, user_errors()):
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(exc, ModuleNotFoundError):
        from inspection_core.extras import has_module, missing_train_message, training_module

        module = training_module(exc.name)
        if module is not None and not has_module(module):
            print(f"{prog}: error: {missing_train_message(f'this {prog} command', module)}", file=sys.stderr)
            return EXIT_USAGE
    traceback.print_exception(exc, file=sys.stderr)
    print(f"{prog}: internal error: the {type(exc).__name__} above is a bug, not a problem with the input; please "
          "report it with the traceback", file=sys.stderr)
    return EXIT_BUG
