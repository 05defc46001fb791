"""The two installs, and what to tell a user of the lean one who asks for the other.

The base install (``pip install .``) is what the line needs: sources, the inspector, ONNX Runtime, the ledger, the
panel and the plant links. The ``[train]`` extra adds torch, torchvision, segmentation_models_pytorch and the ONNX
exporter's libraries (onnx, onnxscript) for the engineers who train, export, build and compare (setup.cfg). The line never imports them: shipped weights carry their
ONNX export (:mod:`engines.weights_onnx`), which ONNX Runtime opens directly.

A command that needs the training stack on a base install says so in one line, with the install line
(:class:`MissingExtra`, raised by :func:`require_train`; a ``ModuleNotFoundError`` for one of the
:data:`TRAIN_MODULES` that reaches a command is reported the same way by
:func:`inspection_core.errors.report_error`)::

    >>> print(train_install_hint())
    pip install 'inspection-station[train]' (in a checkout: pip install -e '.[train]')
    >>> training_module("torch.nn"), training_module("numpy")
    ('torch', None)
"""
from __future__ import annotations

import importlib.util
import sys

from inspection_core.errors import InspectionCoreError

#: The distribution's name (setup.cfg) and its training extra.
DISTRIBUTION, TRAIN_EXTRA = "inspection-station", "train"
#: The top-level modules only the ``[train]`` extra installs.
TRAIN_MODULES = ("torch", "torchvision", "segmentation_models_pytorch", "timm", "onnx", "onnxscript")


class MissingExtra(InspectionCoreError):
    """This install leaves out what the command needs (the training stack); the message gives the install line."""


def train_install_hint() -> str:
    """The command that adds the training extra, for a user's message."""
    return f"pip install '{DISTRIBUTION}[{TRAIN_EXTRA}]' (in a checkout: pip install -e '.[{TRAIN_EXTRA}]')"


def has_module(name: str) -> bool:
    """True when ``name`` can be imported here, without importing it (a module blocked with ``sys.modules[name] =
    None``, or by a meta-path finder that raises, counts as absent)."""
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def has_torch() -> bool:
    """True when torch is installed (the ``[train]`` extra, or a full install)."""
    return has_module("torch")


def training_module(name: str | None) -> str | None:
    """The training-stack root module that ``name`` (a missing module's name) belongs to, or None."""
    root = (name or "").split(".")[0]
    return root if root in TRAIN_MODULES else None


def missing_train_message(what: str, module: str = "torch") -> str:
    """``what`` (a command, or what it was asked to do) needs ``module``, which this install leaves out: one line,
    with the install line."""
    return (f"{what} needs {module}, which the base install leaves out (the line runs without it); install the "
            f"training extra: {train_install_hint()}")


def require_train(what: str) -> None:
    """:class:`MissingExtra` unless torch is installed (``what``: the command or task that needs it)."""
    if not has_torch():
        raise MissingExtra(missing_train_message(what))
