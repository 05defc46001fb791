"""The inference backends, each declared once: its name, devices, precisions, how to check that it runs here and
how to open one of its engine folders. Like the model registry (:mod:`engines.models`), it is plain data and
imports no backend library: the ``engines``, ``station`` and ``calibration`` commands take their ``--backend``
choices from it, recipes are checked against it, and :func:`engines.folders.open_folder`, :mod:`engines.build`,
:mod:`engines.manifest` and the station find a backend's code through it. Adding a backend (OpenVINO, say) is one
:class:`BackendSpec` in :data:`BACKENDS` beside the code that opens and checks its engines::

    >>> spec = backend_spec("tensorrt")
    >>> spec.devices, spec.default_device, spec.precisions
    (('cuda',), 'cuda', ('fp32', 'fp16', 'int8'))
    >>> backend_names(), backend_names(device="cpu")
    (('onnxruntime', 'torch', 'tensorrt'), ('onnxruntime', 'torch'))
    >>> recipe_backend_names(), resolve_backend("torch-cuda"), resolve_backend("tensorrt")
    (('onnxruntime', 'torch', 'torch-cuda', 'tensorrt'), ('torch', 'cuda'), ('tensorrt', 'cuda'))
    >>> backend_spec("torch").refusal("int8", "cpu")
    'the torch backend has no int8 path; build int8 with --backend onnxruntime or tensorrt'
    >>> backend_spec("tensorrt").unavailable("cpu")  # on "cuda": None where TensorRT runs, else what to install
    'TensorRT engines run on an NVIDIA GPU: use --device cuda (the default for tensorrt)'
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from engines.errors import BackendUnavailable

DEVICES = ("cpu", "cuda")


def _code(ref: str | Callable) -> Callable:
    """A declaration's ``"module:function"`` (imported on first use: it may import the backend's library), or the
    callable itself."""
    if callable(ref):
        return ref
    module, _, name = ref.partition(":")
    return getattr(import_module(module), name)


def device_kind(device: str) -> str:
    """``"cuda:1"`` → ``"cuda"``; ``"cpu"`` → ``"cpu"``."""
    return device.partition(":")[0]


@dataclass(frozen=True)
class BackendSpec:
    """One declared backend.

    ``devices``: where its engines run, the default first. ``precisions``: what it builds and runs;
    ``cpu_precisions``: the narrower set on the CPU where there is one, ``cpu_note`` says why. ``opener``: the
    function ``(folder, manifest, threads, device) -> Engine`` that opens one of its engine folders; ``check``: the
    function ``(device) -> None`` that raises :class:`~engines.errors.BackendUnavailable`, saying what to install
    or use instead, where it cannot run (both ``"module:function"``, imported on first use, or callables).
    ``library``: the module whose version an engine folder is tied to (default: ``name``); ``torch_cuda``: False
    where a folder built on CUDA need not match torch's CUDA version (a TensorRT plan is tied to TensorRT and the
    GPU instead). ``exports_onnx``: its build starts from the ONNX export. ``builder``: the function ``(job) ->
    None`` that makes its engine file in the folder being built (:class:`engines.build.EngineBuild`; None: the
    weights themselves are the engine). ``aliases``: other names a recipe and ``station run --backend`` take, each
    for one device (``"torch-cuda"``: torch on the GPU)."""

    name: str
    title: str  # how messages name it ("TensorRT")
    summary: str
    devices: tuple[str, ...]
    precisions: tuple[str, ...]
    opener: str | Callable[..., Any]
    check: str | Callable[[str], Any]
    library: str = ""
    torch_cuda: bool = True
    exports_onnx: bool = False
    cpu_precisions: tuple[str, ...] | None = None
    cpu_note: str = ""
    aliases: Mapping[str, str] = field(default_factory=dict)
    builder: str | Callable[..., Any] | None = None

    @property
    def default_device(self) -> str:
        return self.devices[0]

    @property
    def library_module(self) -> str:
        return self.library or self.name

    def runs_on(self, device: str) -> bool:
        return device_kind(device) in self.devices

    def refusal(self, precision: str, device: str) -> str | None:
        """Why it cannot build or run ``precision`` on ``device`` (the build's message), or None when it can."""
        if not self.runs_on(device):
            if "cuda" in self.devices:
                return (f"{self.title} engines run on an NVIDIA GPU: use --device cuda (the default for "
                        f"{self.name})")
            return f"{self.title} engines run on the CPU: use --device cpu"
        if precision not in self.precisions:
            others = [n for n, s in BACKENDS.items() if n != self.name and precision in s.precisions]
            instead = (f"build {precision} with --backend {' or '.join(others)}" if others
                       else f"use {' or '.join(self.precisions)}")
            return f"the {self.name} backend has no {precision} path; {instead}"
        if device_kind(device) == "cpu" and self.cpu_precisions is not None and precision not in self.cpu_precisions:
            return self.cpu_note or (f"{self.name} {precision} needs --device cuda; on the CPU use "
                                     f"{' or '.join(self.cpu_precisions)}")
        return None

    def unavailable(self, device: str | None = None) -> str | None:
        """Why it cannot run on ``device`` (default: its default device) on this machine, or None when it can."""
        device = device or self.default_device
        if not self.runs_on(device):
            return self.refusal(self.precisions[0], device)
        try:
            _code(self.check)(device)
        except BackendUnavailable as exc:
            return str(exc)
        return None

    def available(self, device: str | None = None) -> bool:
        return self.unavailable(device) is None

    def require(self, device: str | None = None) -> None:
        """:class:`~engines.errors.BackendUnavailable` (what to install, what to use instead) unless it runs on
        ``device`` here."""
        device = device or self.default_device
        if not self.runs_on(device):
            raise BackendUnavailable(self.refusal(self.precisions[0], device))
        _code(self.check)(device)

    def build_engine(self, job: Any) -> None:
        """Make its engine file in a folder being built (:class:`engines.build.EngineBuild`): ``engines build``
        calls it after the ONNX export (when ``exports_onnx``)."""
        _code(self.builder)(job)

    def open_folder(self, folder: Path, manifest: dict, threads: int, device: str):
        """Open the engine of a built folder (:func:`engines.folders.open_folder` checks nothing else first)."""
        return _code(self.opener)(folder, manifest, threads, device)


#: Every backend the station can build and run, by name (the order is the commands' order).
BACKENDS: dict[str, BackendSpec] = {}


def register(spec: BackendSpec) -> BackendSpec:
    """Add a backend to the registry (its name and aliases must be new; remove it with ``BACKENDS.pop(name)``)."""
    taken = {name for n, s in BACKENDS.items() for name in (n, *s.aliases)}
    for name in (spec.name, *spec.aliases):
        if name in taken:
            raise ValueError(f"backend {name!r} is registered already")
    if not spec.devices or not set(spec.devices) <= set(DEVICES) or not spec.precisions:
        raise ValueError(f"backend {spec.name!r}: devices must be some of {', '.join(DEVICES)}, and precisions "
                         "need at least one entry")
    if any(device not in spec.devices for device in spec.aliases.values()):
        raise ValueError(f"backend {spec.name!r}: each alias must name one of its devices {spec.devices}")
    BACKENDS[spec.name] = spec
    return spec


for _spec in (
    BackendSpec("onnxruntime", title="ONNX Runtime",
                summary="the embedded default: CPU everywhere, CUDA where its provider is installed",
                devices=("cpu", "cuda"), precisions=("fp32", "fp16", "int8"), cpu_precisions=("fp32", "int8"),
                cpu_note="onnxruntime fp16 needs the CUDA provider (--device cuda): on the CPU ONNX Runtime casts "
                         "fp16 graphs back to fp32 node by node, so nothing would be gained or measured; use fp32 "
                         "or int8 on the CPU",
                exports_onnx=True, opener="engines.folders:open_onnxruntime_folder",
                check="engines.backends.onnxruntime_backend:providers_for",
                builder="engines.build:build_onnxruntime_engine"),
    BackendSpec("torch", title="torch",
                summary="the fp32 reference on the CPU; fp16 and CUDA graphs on the GPU",
                devices=("cpu", "cuda"), precisions=("fp32", "fp16"), aliases={"torch-cuda": "cuda"},
                opener="engines.folders:open_torch_folder", check="engines.backends.torch_backend:check_available"),
    BackendSpec("tensorrt", title="TensorRT",
                summary="TensorRT 10 plans, each built for one GPU model and TensorRT version",
                devices=("cuda",), precisions=("fp32", "fp16", "int8"), torch_cuda=False, exports_onnx=True,
                opener="engines.folders:open_tensorrt_folder",
                check="engines.backends.tensorrt_backend:check_available",
                builder="engines.build:build_tensorrt_engine"),
):
    register(_spec)


def backend_names(device: str | None = None) -> tuple[str, ...]:
    """The declared backends' names; with ``device``, those that run there (``engines eval`` runs on the CPU)."""
    return tuple(n for n, s in BACKENDS.items() if device is None or s.runs_on(device))


def recipe_backend_names() -> tuple[str, ...]:
    """What a recipe's ``backend`` and ``station run --backend`` take: each backend's name, then its aliases."""
    return tuple(name for n, s in BACKENDS.items() for name in (n, *s.aliases))


def backend_spec(name: str) -> BackendSpec:
    """The declaration of ``name``; :class:`~engines.errors.BackendUnavailable` naming the declared ones otherwise."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise BackendUnavailable(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}") from None


def resolve_backend(name: str) -> tuple[str, str]:
    """A recipe's backend name or alias → ``(backend, device)``: a name runs on its default device
    (``"tensorrt"`` → ``("tensorrt", "cuda")``), an alias on its own (``"torch-cuda"`` → ``("torch", "cuda")``)."""
    for n, spec in BACKENDS.items():
        if name == n:
            return n, spec.default_device
        if name in spec.aliases:
            return n, spec.aliases[name]
    raise BackendUnavailable(f"unknown backend {name!r}; choose one of {', '.join(recipe_backend_names())}")


def default_device(name: str) -> str:
    """Where ``name``'s engines run unless told otherwise (``"cpu"`` for a name that is not declared)."""
    spec = BACKENDS.get(name)
    return spec.default_device if spec is not None else "cpu"


def all_precisions() -> tuple[str, ...]:
    """Every precision some backend builds, in declaration order (``fp32``, ``fp16``, ``int8``)."""
    return tuple(dict.fromkeys(p for s in BACKENDS.values() for p in s.precisions))


def available_backends(skip: Iterable[str] = ()) -> list[str]:
    """The backends that can run on this machine, as ``backend:device`` (``["onnxruntime:cpu", "torch:cpu"]``);
    ``skip``: backends not to ask (a backend's own "use this instead" advice skips itself)."""
    skip = set(skip)
    return [f"{n}:{d}" for n, s in BACKENDS.items() if n not in skip for d in s.devices if s.available(d)]


def library_version(module: str) -> str | None:
    """The installed version of a backend's library (``"1.18.0"``), or None where it cannot be imported. Never
    raises (a wheel whose shared libraries do not load raises OSError or RuntimeError on import)."""
    try:
        library = import_module(module)
    except Exception:
        return None
    return str(getattr(library, "__version__", "unknown"))
