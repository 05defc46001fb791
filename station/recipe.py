# Over 500 lines on purpose: the recipe schema: every table, key, check and message in one place.
"""Product recipes: one TOML file per product, read into frozen dataclasses and checked key by key.

>>> recipe = load_recipe(shipped_recipe_path("magnetic_tile"))
>>> recipe.product.name, recipe.tiling.tile, recipe.source.kind.value
('magnetic_tile', 128, 'replay')

Every problem raises :class:`~station.errors.RecipeError` naming the file, the table, the key and what is
allowed; unknown tables and keys are errors too, so a typo never falls back to a default silently.
Relative ``[source] path`` and ``cti`` are resolved against the recipe file's folder; ``[log] db`` stays
relative to the working directory the station runs in (data belongs to the run, not to the installed recipe).
"""
from __future__ import annotations

import copy
import difflib
import enum
import functools
import json
import re
import socket
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Union

from engines.backends.registry import all_precisions, recipe_backend_names
from engines.weights import WeightsError, resolve_weights
from inspection.judging import learned_where, resolve_rule
from inspection_core.defaults import DEFAULT_MIN_AREA_PX, DEFAULT_OVERLAP
from inspection_core.hashing import file_sha256, text_sha256
from inspection_core.verdict import DecisionRules, RoiCircle, RoiRect
from station.errors import RecipeError
from station.strips import PartMode

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


class SourceKind(str, enum.Enum):
    REPLAY = "replay"
    GENICAM = "genicam"
    LINESCAN_REPLAY = "linescan-replay"  # a large image streamed as line blocks (docs/LINESCAN.md)


class _DeclaredBackend(str, enum.Enum):
    """A backend a recipe names: a name or alias of the engines' backend registry (:mod:`engines.backends.registry`).
    One declared after this module was imported (a plug-in, a test) is a member too."""

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if not isinstance(value, str) or value not in recipe_backend_names():
            return None
        member = str.__new__(cls, value)
        member._name_, member._value_ = value.upper().replace("-", "_"), value
        return member


#: ``Backend.ONNXRUNTIME``, ``Backend.TORCH``, ``Backend.TORCH_CUDA`` ("torch-cuda": torch on the GPU),
#: ``Backend.TENSORRT``: one member per name and alias in the registry.
Backend = _DeclaredBackend("Backend", [(n.upper().replace("-", "_"), n) for n in recipe_backend_names()],
                           module=__name__, qualname="Backend")


class QueuePolicy(str, enum.Enum):
    """What a full queue does: drop its oldest item (and count it) or block the producer (back-pressure)."""

    DROP_OLDEST = "drop_oldest"
    BLOCK = "block"


@dataclass(frozen=True)
class ProductConfig:
    name: str
    description: str = ""


class TriggerMode(str, enum.Enum):
    """GenICam ``TriggerMode``: ``On`` waits for a trigger per frame, ``Off`` runs free at the frame rate."""

    ON = "On"
    OFF = "Off"


@dataclass(frozen=True)
class TriggerConfig:
    """The ``[source.trigger]`` table of a camera: GenICam's trigger features, written before streaming starts and
    checked against the camera's node map then (docs/INTEGRATION.md, camera control). ``source = "Software"``
    lets OPC UA's StartSingleJob fire ``TriggerSoftware``; ``delay_us`` is ``TriggerDelay``; ``selector`` is the
    trigger it configures (``TriggerSelector``, where the camera has one)."""

    mode: TriggerMode = TriggerMode.ON
    source: str = "Software"
    activation: str | None = None  # e.g. "RisingEdge" (hardware lines); None leaves the camera's setting
    delay_us: float | None = None
    selector: str = "FrameStart"

    @property
    def software(self) -> bool:
        """True when the line fires the trigger itself (:meth:`station.sources.base.FrameSource.fire_trigger`)."""
        return self.mode is TriggerMode.ON and self.source == "Software"


#: Camera features that [source] keys (or [source.trigger]) set; [source.nodes] refuses them, so each setting has
#: one place. Feature name -> the key that sets it.
CAMERA_NODES_SET_BY_KEYS = {
    "PixelFormat": "[source] pixel_format", "AcquisitionFrameRate": "[source] frame_rate",
    "ExposureTime": "[source] exposure_us", "ExposureTimeAbs": "[source] exposure_us", "TriggerMode": "[source.trigger] mode",
    "TriggerSource": "[source.trigger] source", "TriggerActivation": "[source.trigger] activation",
    "TriggerDelay": "[source.trigger] delay_us", "TriggerDelayAbs": "[source.trigger] delay_us",
    "TriggerSelector": "[source.trigger] selector", "TriggerSoftware": "[source.trigger] source = \"Software\"",
}
# a GenICam feature name (GenApi node names are C identifiers)
_FEATURE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CameraNodeValue = Union[bool, int, float, str]


@dataclass(frozen=True)
class SourceConfig:
    """Where frames come from. ``fps = 0`` replays as fast as the line takes frames; ``cti = None`` means the
    GenTL producer found by the GenICam source (viky.cti when none is installed)."""

    kind: SourceKind
    path: Path | None = None
    pattern: str = "*"
    loop: bool = True
    fps: float = 0.0
    cti: Path | None = None
    device: int | str = 0
    pixel_format: str = "Mono8"
    frame_rate: float | None = None
    exposure_us: float | None = None
    buffers: int = 16  # genicam: driver buffers; frames arriving while all are full are lost (health counts them)
    triggered: bool = False  # replay (`trigger = true`): the next file only when the line fires a trigger
    # line-scan (kind = "linescan-replay", or "genicam" with line_scan = true; docs/LINESCAN.md)
    line_scan: bool = False  # genicam: a line-scan camera whose frames are blocks of block_lines lines
    block_lines: int = 512  # lines per block (genicam: the camera's Height)
    line_rate_hz: float = 0.0  # replay: its pace (0 = as fast as possible); camera: its rate, to judge late blocks
    part_mode: PartMode = PartMode.FIXED  # "fixed" (part_lines lines a part) or "trigger" (part-present signal)
    part_lines: int | None = None  # fixed: lines a part (linescan-replay: default the image's lines)
    max_part_lines: int = 65536  # trigger: a longer part is cut and marked incomplete
    gap_lines: int = 0  # linescan-replay in trigger mode: lines without a part before each pass
    late_tolerance_ms: float = 100.0  # a block delivered later than this after its last line is reported late
    screen_seed: int = 0  # linescan-replay without path: the synthetic screen's seed
    screen_size: tuple[int, int] = (10240, 5120)  # ... and its (lines, width)
    # genicam camera control (docs/INTEGRATION.md): the [source.trigger] and [source.nodes] sub-tables
    trigger: TriggerConfig | None = None  # None: no [source.trigger], the camera's trigger is left as it is
    nodes: tuple[tuple[str, CameraNodeValue], ...] = ()  # [source.nodes] in file order (selectors before what they select)
    # genicam: the feature each frame's part id is read from (a chunk value, a line input); None: no part id
    part_id: str | None = None


@dataclass(frozen=True)
class TilingConfig:
    tile: int = 128
    overlap: int = DEFAULT_OVERLAP
    batch: int = 32


@dataclass(frozen=True)
class EngineConfig:
    """``weights`` is a weights folder, the name of weights shipped with the engines package, or an engine folder
    built by ``engines build`` (whose manifest must then agree with ``backend`` and ``precision``)."""

    weights: str
    model: str = "bffn"
    backend: Backend = Backend.ONNXRUNTIME
    threads: int = 0  # 0 = all cores
    precision: str = "fp32"


class ClassifierMode(str, enum.Enum):
    """How GR relates patches: the patches of one part form its batch, or each patch meets the stored bank."""

    BATCH = "batch"
    BANK = "bank"


@dataclass(frozen=True)
class ClassifierConfig:
    """The optional classifier stage (:mod:`station.classify`): a multi-label classifier on ``patch``-sided
    squares of each frame, after segmentation or alone (a recipe without ``[engine]``). ``weights`` is a weights
    folder, a shipped name or an engine folder, run on ``backend`` like the segmentation engine; a class is
    present in a patch when its score is above ``threshold``; ``fail_on_labels`` fails any part with a label."""

    weights: str
    patch: int = 1024
    overlap: int = 0
    threshold: float | None = None  # None: the label thresholds `engines accept --classifier` learned, else the default
    mode: ClassifierMode = ClassifierMode.BATCH
    fail_on_labels: bool = True
    threads: int = 0  # 0 = all cores
    backend: Backend = Backend.ONNXRUNTIME
    precision: str = "fp32"


#: ``[shadow] share`` by default: the share of inspected parts the candidate also judges. On 2 cores at full speed
#: the line kept 94.8 % of its throughput with it (docs/BENCHMARKS.md, "A shadow engine beside the line"), and it
#: gives 360 shadowed parts an hour at a part a second.
DEFAULT_SHADOW_SHARE = 0.1


@dataclass(frozen=True)
class ShadowConfig:
    """The ``[shadow]`` table (issue 29): a candidate engine judged beside the production engine on a share of the
    inspected parts, on a low-priority worker that never delays a part nor changes its verdict (:mod:`station.shadow`).

    ``weights``: the candidate's weights folder (as ``[engine] weights``); it judges with the rule it carries
    (config.json ``judging``, written by ``engines accept``), else with the recipe's, after the recipe's tiling and
    calibration. ``share``: the parts it judges, chosen per part by a hash of the part's identity
    (:func:`station.rejectlog.pass_sampled`), so a replay or a restart shadows the same parts. ``backend``: the
    candidate's (``None``: the ``[engine]``'s). ``threads``: its engine's CPU threads (1: it takes at most one core).
    ``queue``: parts waiting for it; a part chosen while it is full is skipped and counted. ``nice``: added to its
    worker thread's niceness (19: the CPU goes to the line first)."""

    weights: str
    share: float = DEFAULT_SHADOW_SHARE
    backend: Backend | None = None
    threads: int = 1
    queue: int = 2
    nice: int = 19


@dataclass(frozen=True)
class LogConfig:
    """The ``[log]`` table: where the ledger lives and which part images it keeps for review.

    ``save_reject_images``: the image and overlay of every FAIL; ``save_pass_share``: the share of PASS parts whose
    images are kept too (0 to 1; chosen per part by a hash of its identity, :func:`station.rejectlog.pass_sampled`),
    so QA can look for escapes; ``images_max_mb``: the images folder is kept under this many MB (10^6 bytes) by
    deleting the oldest images first, never those of reviewed rows (0: no bound)."""

    db: Path = Path("station-data/rejects.db")
    save_reject_images: bool = True
    save_pass_share: float = 0.0
    images_max_mb: float = 0.0


class NotInspectedPolicy(str, enum.Enum):
    """How a part the line did not inspect counts: as a reject (fail-safe: it goes to the reject bin and lowers the
    yield) or left out of the yield (it still has its NOT_INSPECTED row)."""

    REJECT = "reject"
    EXCLUDE = "exclude"


def default_station_id() -> str:
    """The station id rows carry when the recipe names none: this machine's host name."""
    return socket.gethostname() or "station"


@dataclass(frozen=True)
class StationConfig:
    """The ``[station]`` table: who writes the ledger and when the line refuses to run.

    ``id`` goes into every ledger row (default: the host name); below ``min_free_mb`` of free space where the
    ledger lives the station refuses to start, and stops cleanly when it gets there while running;
    ``not_inspected`` says how a part not inspected counts (:class:`NotInspectedPolicy`)."""

    id: str = field(default_factory=default_station_id)
    min_free_mb: float = 200.0
    not_inspected: NotInspectedPolicy = NotInspectedPolicy.REJECT


class ImplausiblePolicy(str, enum.Enum):
    """What becomes of a frame the station cannot judge (all black, saturated, deep data read at the wrong bit
    depth): NOT_INSPECTED with reason ``implausible`` (fail-safe, the default), a FAIL without inference, or
    inspected with a warning in its row (``warn``: it may PASS)."""

    NOT_INSPECTED = "not_inspected"
    FAIL = "fail"
    WARN = "warn"


#: Seconds of inspection a frame may cost by default ([frames] max_inspect_s): the line stalls for no more.
DEFAULT_MAX_INSPECT_S = 30.0


@dataclass(frozen=True)
class FramesConfig:
    """The ``[frames]`` table: image guards applied before any tiling. A frame outside ``min_*`` .. ``max_*``
    (pixels) is not inspected (its ledger row says why). ``bit_depth`` is the number of significant bits of
    16-bit images (replayed files; a camera's pixel format says it for itself): they are scaled to 8 bits by
    it, never truncated. ``implausible`` says what becomes of frames the station cannot judge
    (:class:`ImplausiblePolicy`). ``max_inspect_s``: a frame whose tiles would take longer than this (tiles x
    ``tile_ms``, else the time per tile measured on this line) is not inspected (``too_slow``); 0: no limit."""

    min_width: int = 32
    min_height: int = 32
    max_width: int = 16384
    max_height: int = 65536
    bit_depth: int = 16
    implausible: ImplausiblePolicy = ImplausiblePolicy.NOT_INSPECTED
    max_inspect_s: float = DEFAULT_MAX_INSPECT_S
    tile_ms: float | None = None  # None: measured while the line runs


@dataclass(frozen=True)
class QueuesConfig:
    frames: int = 8  # most frames waiting for inference
    frames_policy: QueuePolicy = QueuePolicy.DROP_OLDEST
    results: int = 64


class Units(str, enum.Enum):
    """How defects are measured: mm when the profile holds a scale (``auto``), always mm (the profile must hold a
    scale), or pixels only."""

    AUTO = "auto"
    MM = "mm"
    PX = "px"


@dataclass(frozen=True)
class CalibrationConfig:
    """The ``[calibration]`` table: the camera's calibration profile (:mod:`calibration.profile`) and what of it
    the line applies. ``profile`` is a camera id (its latest version) or ``"cam-A@v3"``; ``root`` the profile
    store (``None``: ``$STATION_PROFILES``, else ``calibration-profiles`` in the working directory).
    ``flatfield``, ``roi``, ``thresholds``: ``True`` needs the part in the profile, ``False`` ignores it, ``None``
    (key absent) uses it when present. ``required = false`` runs uncalibrated, with a warning, when the profile
    is missing."""

    profile: str
    root: Path | None = None
    required: bool = True
    flatfield: bool | None = None
    roi: bool | None = None
    thresholds: bool | None = None
    units: Units = Units.AUTO


@dataclass(frozen=True)
class Recipe:
    """A whole product recipe; ``path`` is the file it came from."""

    path: Path
    product: ProductConfig
    source: SourceConfig
    tiling: TilingConfig
    engine: EngineConfig | None  # None: no [engine] table, the classifier stage alone judges parts
    rules: DecisionRules
    log: LogConfig = field(default_factory=LogConfig)
    queues: QueuesConfig = field(default_factory=QueuesConfig)
    classifier: ClassifierConfig | None = None  # None: no [classifier] table, no classifier stage
    calibration: CalibrationConfig | None = None  # None: no [calibration] table, the line runs uncalibrated
    station: StationConfig = field(default_factory=StationConfig)
    frames: FramesConfig = field(default_factory=FramesConfig)
    shadow: ShadowConfig | None = None  # None: no [shadow] table, no candidate runs beside the engine
    # [opcua], [mqtt], [metrics], [fleet] as given (deep copies); checked by station.integrations.configure
    integrations: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # where the rule (threshold, minimum area, overlap) came from: the recipe, the weights' config.json, the defaults
    rule_from: str = field(default="the recipe", compare=False)
    _raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def with_overrides(self, overrides: Mapping[str, Any] | None = None, /, **kwargs: Any) -> Recipe:
        """A new recipe with some keys replaced, checked like the file itself.

        Keys are ``"table.key"`` in the mapping or ``table__key`` as keyword arguments; ``None`` removes the
        key (back to its default). Relative paths given here are resolved against the working directory,
        since they come from the command line::

            recipe.with_overrides({"engine.backend": "tensorrt"}, source__path="shots/", rules__roi=None)
        """
        raw = copy.deepcopy(dict(self._raw))
        items = dict(overrides or {})
        items.update({k.replace("__", ".", 1): v for k, v in kwargs.items()})
        where = f"{self.path} (with overrides)"
        for dotted, value in items.items():
            table, _, key = dotted.partition(".")
            if table not in _TABLES or not key:
                raise RecipeError(f"{where}: override {dotted!r} must be 'table.key' with table one of "
                                  f"{', '.join(_TABLES)}")
            section = raw.setdefault(table, {})
            if value is None:
                section.pop(key, None)
                continue
            if (table, key) in _PATH_KEYS and isinstance(value, (str, Path)):
                value = str(Path(value).expanduser().resolve())
            section[key] = value
        return _build(raw, self.path, where)

    def fingerprint(self) -> str:
        """12 hex digits of the SHA-256 of what judges a part (issue 28): the engine and the hash of its weights,
        the tile size and overlap, the rules, the calibration profile, the classifier (and the hash of its weights),
        the frame guards, how a part not inspected counts, and the camera settings that shape the image or the part
        (pixel format, exposure, trigger, nodes, line-scan part geometry). Where the ledger lives, the replay's
        folder and pace, queues, threads, the batch size, the station id and the plant links do not judge and
        leave it alone: two rows with the same fingerprint were judged alike."""
        data = self.as_dict()
        source = data["source"]
        judged = {
            "engine": None if self.engine is None else {
                **{k: v for k, v in data["engine"].items() if k != "threads"},
                "weights_sha256": _weights_sha256(self.engine.weights)},
            "tiling": {k: data["tiling"][k] for k in ("tile", "overlap")},
            "rules": data["rules"],
            "calibration": data["calibration"],
            "classifier": None if self.classifier is None else {
                **{k: v for k, v in data["classifier"].items() if k != "threads"},
                "weights_sha256": _weights_sha256(self.classifier.weights)},
            "frames": data["frames"],
            "not_inspected": data["station"]["not_inspected"],
            "camera": {k: source.get(k) for k in _JUDGING_SOURCE_KEYS},
        }
        return text_sha256(json.dumps(judged, sort_keys=True, default=str))[:12]

    def as_dict(self) -> dict[str, Any]:
        """Plain data (enums as values, paths as strings), e.g. for ``--json`` output."""
        def plain(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items() if k != "_raw"}
            if isinstance(value, enum.Enum):
                return value.value
            if isinstance(value, Path):
                return str(value)
            return value

        data = plain(asdict(self))
        roi = self.rules.roi
        data["rules"]["roi"] = None if roi is None else {"kind": type(roi).__name__, **asdict(roi)}
        return data


#: The [source] keys that shape the image or what a part is: they judge (the others say where frames come from).
_JUDGING_SOURCE_KEYS = ("pixel_format", "exposure_us", "trigger", "nodes", "line_scan", "block_lines", "part_mode",
                        "part_lines", "max_part_lines")


def _weights_sha256(weights: str) -> str | None:
    """The SHA-256 of the weights file a recipe names (``None`` when it cannot be read: loading the engine says
    why), cached by path, size and modification time."""
    try:
        file = resolve_weights(weights).weights_file
        stat = file.stat()
    except (WeightsError, OSError, ValueError):
        return None
    return _file_sha256_cached(str(file.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _file_sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(Path(path))


def shipped_recipe_path(name: str) -> Path:
    """The path of a recipe shipped with the station, e.g. ``shipped_recipe_path("magnetic_tile")``."""
    path = RECIPES_DIR / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))) or "none"
        raise RecipeError(f"no shipped recipe named {name!r}; shipped recipes: {known}")
    return path


def load_recipe(path: str | Path) -> Recipe:
    """Read and check a recipe file; raises :class:`RecipeError` saying what to fix."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found; pass the path of a .toml recipe "
                          f"(shipped examples are in {RECIPES_DIR})") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: cannot read the recipe ({exc}); pass a readable UTF-8 .toml file") from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: not valid TOML: {exc}; fix the syntax at that line") from None
    return _build(data, path, str(path))


# ---------------------------------------------------------------------------------------------- checking

_PATH_KEYS = {("source", "path"), ("source", "cti"), ("calibration", "root")}
#: ``TableReader.get``'s default for a key the table must have
MISSING = object()


class Refused(ValueError):
    """Raised by a check given to :meth:`TableReader.get` to say why a value is refused and what to do instead:
    the message reads ``<value> is not allowed; <reason>`` (a plain ``ValueError`` reads ``...; use <allowed>``)."""


class TableReader:
    """Reads the keys of one TOML table, remembering which were used so leftovers can be reported.

    Every problem is a :class:`RecipeError` of one shape, ``<where>: [<name>] <key>: <problem>; use <allowed>``;
    the recipe's tables and the integrations' tables (:mod:`station.integrations`) are all read with it::

        t = TableReader({"batch": 0}, "line.toml", "fleet", Path("."))
        batch = t.get("batch", 500, check_int(1), "an integer >= 1")  # RecipeError: ... batch: 0 is not allowed; ...
        t.finish()  # a key no get asked for is an unknown key, with a did-you-mean hint
    """

    def __init__(self, data: Mapping[str, Any], where: str, name: str, base: Path) -> None:
        self.where, self.name, self.base = where, name, base  # base: the folder relative paths start from
        self.data = dict(data)
        self.known: list[str] = []

    def fail(self, key: str, problem: str) -> RecipeError:
        """The error to raise for ``key`` (``problem`` says what is wrong and what to do)."""
        return RecipeError(f"{self.where}: [{self.name}] {key}: {problem}")

    def get(self, key: str, default: Any, check: Callable[[Any], Any], allowed: str) -> Any:
        """``check(value)`` of the key, or ``default`` when absent (:data:`MISSING`: the key is required). A check
        refuses a value by raising ``ValueError``/``TypeError`` (or :class:`Refused` with its own reason)."""
        self.known.append(key)
        value = self.data.get(key, MISSING)
        if value is MISSING:
            if default is MISSING:
                raise self.fail(key, f"missing; add {key} = {allowed}")
            return default
        try:
            return check(value)
        except Refused as exc:
            raise self.fail(key, f"{value!r} is not allowed; {exc}") from None
        except (TypeError, ValueError):
            raise self.fail(key, f"{value!r} is not allowed; use {allowed}") from None

    def finish(self) -> None:
        """Refuse the keys no :meth:`get` asked for (misspelt or unknown)."""
        for key in self.data:
            if key not in self.known:
                close = difflib.get_close_matches(key, self.known, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise self.fail(key, f"unknown key; {hint}known keys: {', '.join(self.known)}")


# The checks for TableReader.get: each returns the value (converted) or raises ValueError.

def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_int(low: int, high: int | None = None) -> Callable[[Any], int]:
    """An integer (not a bool) from ``low`` to ``high`` (no upper bound: None)."""
    def check(v: Any) -> int:
        if not is_int(v) or v < low or (high is not None and v > high):
            raise ValueError
        return v
    return check


def check_float(low: float, *, above: bool = False, high: float | None = None) -> Callable[[Any], float]:
    """A number (int or float, not NaN) >= ``low`` (> with ``above``) and <= ``high``, as a float."""
    def check(v: Any) -> float:
        if not (is_int(v) or isinstance(v, float)) or v != v:
            raise ValueError
        if (v <= low if above else v < low) or (high is not None and v > high):
            raise ValueError
        return float(v)
    return check


def check_str(v: Any) -> str:
    """A string that is not blank (``check_text``: any string)."""
    if not isinstance(v, str) or not v.strip():
        raise ValueError
    return v


def check_text(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError
    return v


def check_bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError
    return v


def check_choice(*allowed: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if v not in allowed:
            raise ValueError
        return v
    return check


def _enum(cls: type[enum.Enum]) -> tuple[Callable[[Any], Any], str]:
    allowed = "one of " + ", ".join(repr(m.value) for m in cls)
    return (lambda v: cls(v)), allowed


def check_path(base: Path) -> Callable[[Any], Path]:
    """A non-blank path, ``~`` expanded, relative ones resolved against ``base`` (the recipe's folder)."""
    def check(v: Any) -> Path:
        p = Path(check_str(v)).expanduser()
        return p if p.is_absolute() else (base / p).resolve()
    return check


def _device(v: Any) -> int | str:
    return check_int(0)(v) if is_int(v) else check_str(v)


#: The line's integrations (docs/INTEGRATION.md): kept as tables here, each checked by its own module when the line
#: is built (:func:`station.integrations.configure`), so the recipe does not import them.
INTEGRATION_TABLES = ("opcua", "mqtt", "metrics", "fleet")
_TABLES = ("product", "source", "tiling", "engine", "rules", "log", "queues", "classifier", "calibration", "station",
           "frames", "shadow") + INTEGRATION_TABLES
_REQUIRED_TABLES = ("product", "source")


def _build(data: Mapping[str, Any], path: Path, where: str) -> Recipe:
    for name, value in data.items():
        if name not in _TABLES:
            close = difflib.get_close_matches(name, _TABLES, n=1)
            hint = f"did you mean [{close[0]}]? " if close else ""
            raise RecipeError(f"{where}: [{name}]: unknown table; {hint}known tables: "
                              f"{', '.join(f'[{t}]' for t in _TABLES)}")
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: [{name}]: must be a table ([{name}] followed by key = value lines), "
                              f"got {name} = {value!r}")
    for name in _REQUIRED_TABLES:
        if name not in data:
            raise RecipeError(f"{where}: [{name}]: missing table; every recipe needs "
                              f"{', '.join(f'[{t}]' for t in _REQUIRED_TABLES)}, and [engine] or [classifier]")
    if "engine" not in data and "classifier" not in data:
        raise RecipeError(f"{where}: [engine]: missing table; a recipe needs an [engine] (segmentation), a "
                          "[classifier] (multi-label patches), or both")
    base = path.resolve().parent

    def table(name: str) -> TableReader:
        return TableReader(data.get(name, {}), where, name, base)

    t = table("product")
    product = ProductConfig(name=t.get("name", MISSING, check_str, 'a non-empty string, e.g. "magnetic_tile"'),
                            description=t.get("description", "", check_text, "a string"))
    t.finish()

    t = table("source")
    kind_check, kind_allowed = _enum(SourceKind)
    kind = t.get("kind", MISSING, kind_check, kind_allowed)
    path_default = MISSING if kind is SourceKind.REPLAY else None
    source = SourceConfig(
        kind=kind,
        path=t.get("path", path_default, check_path(base),
                   'the folder of images to replay, e.g. "../samples/magnetic-tile" (relative to the recipe)'),
        pattern=t.get("pattern", "*", check_str, 'a glob pattern such as "*.jpg" or "*.png"'),
        loop=t.get("loop", True, check_bool, "true or false"),
        fps=t.get("fps", 0.0, check_float(0.0), "a number >= 0 (0 = as fast as the line takes frames)"),
        cti=t.get("cti", None, check_path(base), "the path of a GenTL producer (.cti file)"),
        device=t.get("device", 0, _device, "a device index >= 0 or a device id / serial number string"),
        pixel_format=t.get("pixel_format", "Mono8", check_str, 'a GenICam pixel format name such as "Mono8"'),
        frame_rate=t.get("frame_rate", None, check_float(0.0, above=True), "a number of frames per second > 0"),
        exposure_us=t.get("exposure_us", None, check_float(0.0, above=True), "an exposure time in microseconds > 0"),
        buffers=t.get("buffers", 16, check_int(1), "an integer >= 1 (driver buffers, e.g. 16)"),
        triggered=(t.get("trigger", False, check_bool, "true or false (replay: hand over the next file only when the "
                         "line fires a trigger, e.g. OPC UA StartSingleJob)")
                   if kind is SourceKind.REPLAY and not isinstance(t.data.get("trigger"), dict) else False),
        **_line_scan_keys(t, kind),
        **_camera_control(t, kind),
        **_part_id_key(t, kind),
    )
    t.finish()

    engine = None
    # the backends and precisions the registry declares now (engines.backends.registry)
    backend_check, backend_allowed = Backend, "one of " + ", ".join(map(repr, recipe_backend_names()))
    precisions = [f'"{p}"' for p in all_precisions()]
    precision_check, precision_allowed = check_choice(*all_precisions()), " or ".join(
        filter(None, (", ".join(precisions[:-1]), precisions[-1])))
    if "engine" in data:
        engine = _engine(table("engine"), backend_check, backend_allowed, precision_check, precision_allowed)
    # what the recipe leaves out of the rule comes from the rule `engines accept` wrote beside the weights
    learned, rule_from = _learned_rule(engine, data)  # the recipe's own keys are read (and checked) below

    t = table("tiling")
    defaults = TilingConfig()
    tile = t.get("tile", defaults.tile, check_int(1), "an integer >= 1, e.g. 128 or 256")
    overlap = t.get("overlap", learned.get("overlap"), check_int(0, tile - 1),
                    f"an integer from 0 to {tile - 1} (less than tile = {tile})")
    tiling = TilingConfig(tile=tile, overlap=overlap, batch=t.get("batch", defaults.batch, check_int(1),
                                                                  "an integer >= 1"))
    t.finish()

    t = table("rules")
    rules = DecisionRules(
        score_threshold=t.get("score_threshold", learned.get("threshold"),
                              check_float(0.0, above=True, high=1.0), "a number in (0, 1]"),
        min_area_px=t.get("min_area_px", learned.get("min_area_px"), check_int(1),
                          "an integer >= 1 (pixels)"),
        roi=_roi(t),
        label=t.get("label", "defect", check_str, 'a non-empty string, e.g. "defect"'),
        min_area_mm2=t.get("min_area_mm2", None, check_float(0.0, above=True),
                           "a number of mm² > 0 (needs a scale in the [calibration] profile)"),
    )
    if "min_area_mm2" in t.data and "min_area_px" in t.data:
        raise t.fail("min_area_mm2", "set either min_area_px (pixels) or min_area_mm2 (mm², with a scale "
                                     "calibration), not both")
    t.finish()

    t = table("log")
    log = LogConfig(
        db=t.get("db", LogConfig.db, lambda v: Path(check_str(v)).expanduser(),
                 'a file path, e.g. "station-data/rejects.db"'),
        save_reject_images=t.get("save_reject_images", True, check_bool, "true or false"),
        save_pass_share=t.get("save_pass_share", 0.0, check_float(0.0, high=1.0),
                              "a share of passes from 0 to 1, e.g. 0.02 (2 %); 0 = none"),
        images_max_mb=t.get("images_max_mb", 0.0, check_float(0.0),
                            "a number of megabytes >= 0, e.g. 2000 (0 = no bound)"),
    )
    t.finish()

    t = table("queues")
    policy_check, policy_allowed = _enum(QueuePolicy)
    queues = QueuesConfig(
        frames=t.get("frames", 8, check_int(1), "an integer >= 1"),
        frames_policy=t.get("frames_policy", QueuePolicy.DROP_OLDEST, policy_check, policy_allowed),
        results=t.get("results", 64, check_int(1), "an integer >= 1"),
    )
    t.finish()

    classifier = None
    if "classifier" in data:
        t = table("classifier")
        mode_check, mode_allowed = _enum(ClassifierMode)
        weights = t.get("weights", MISSING, check_str, 'a classifier weights folder or shipped name, e.g. "runs/gr"')
        patch = t.get("patch", 1024, check_int(0), "an integer >= 1 (patch side in pixels), e.g. 1024, or 0 (the "
                      "whole frame is one image, as GR trained on whole magnetic-tile images)")
        classifier = ClassifierConfig(
            weights=weights,
            patch=patch,
            overlap=t.get("overlap", 0, check_int(0, max(patch - 1, 0)),
                          f"an integer from 0 to {patch - 1} (less than patch)" if patch else "0 with patch = 0"),
            threshold=t.get("threshold", None, check_float(0.0, high=1.0),
                            "a number in [0, 1] (label when score > it); leave it out for the thresholds `engines "
                            "accept --classifier` learned into the weights"),
            mode=t.get("mode", ClassifierMode.BATCH, mode_check, mode_allowed),
            fail_on_labels=t.get("fail_on_labels", True, check_bool, "true or false"),
            threads=t.get("threads", 0, check_int(0), "an integer >= 0 (0 = all cores)"),
            backend=t.get("backend", Backend.ONNXRUNTIME, backend_check, backend_allowed),
            precision=t.get("precision", "fp32", precision_check, precision_allowed),
        )
        t.finish()

    calibration = None
    if "calibration" in data:
        t = table("calibration")
        units_check, units_allowed = _enum(Units)
        calibration = CalibrationConfig(
            profile=t.get("profile", MISSING, check_str, 'a camera id or "camera@vN", e.g. "cam-A" (its latest version)'),
            root=t.get("root", None, lambda v: Path(check_str(v)).expanduser(),
                       'the profile store folder, e.g. "calibration-profiles" (relative to the working directory)'),
            required=t.get("required", True, check_bool, "true or false"),
            flatfield=t.get("flatfield", None, check_bool, "true or false (absent: when the profile has one)"),
            roi=t.get("roi", None, check_bool, "true or false (absent: when the profile has one)"),
            thresholds=t.get("thresholds", None, check_bool, "true or false (absent: when the profile has them)"),
            units=t.get("units", Units.AUTO, units_check, units_allowed),
        )
        t.finish()
        if calibration.units is Units.PX and rules.min_area_mm2 is not None:
            raise RecipeError(f'{where}: [rules] min_area_mm2 needs mm, but [calibration] units = "px"; use '
                              'min_area_px, or units = "mm" / "auto"')
    elif rules.min_area_mm2 is not None:
        raise RecipeError(f"{where}: [rules] min_area_mm2 needs a scale: add a [calibration] table naming a profile "
                          "with one (`calibration scale ...`), or use min_area_px")

    t = table("station")
    policy_check, policy_allowed = _enum(NotInspectedPolicy)
    station = StationConfig(
        id=t.get("id", None, check_str, 'a non-empty string naming this station, e.g. "line-3-cam-A" (default: the host '
                                   "name)") or default_station_id(),
        min_free_mb=t.get("min_free_mb", 200.0, check_float(0.0), "a number of megabytes >= 0 (0 = no check), e.g. 200"),
        not_inspected=t.get("not_inspected", NotInspectedPolicy.REJECT, policy_check, policy_allowed),
    )
    t.finish()

    t = table("frames")
    min_width = t.get("min_width", 32, check_int(1), "an integer >= 1 (pixels)")
    min_height = t.get("min_height", 32, check_int(1), "an integer >= 1 (pixels)")
    frames = FramesConfig(
        min_width=min_width, min_height=min_height,
        max_width=t.get("max_width", 16384, check_int(min_width), f"an integer >= min_width ({min_width})"),
        max_height=t.get("max_height", 65536, check_int(min_height), f"an integer >= min_height ({min_height})"),
        bit_depth=t.get("bit_depth", 16, check_int(8, 16), "an integer from 8 to 16 (significant bits of 16-bit images, "
                                                     "e.g. 12)"),
        implausible=t.get("implausible", ImplausiblePolicy.NOT_INSPECTED, *_enum(ImplausiblePolicy)),
        max_inspect_s=t.get("max_inspect_s", DEFAULT_MAX_INSPECT_S, check_float(0.0),
                            "a number of seconds >= 0 (0 = no limit), e.g. 30"),
        tile_ms=t.get("tile_ms", None, check_float(0.0, above=True),
                      "a number of milliseconds per tile > 0 (leave it out to measure it on the line)"),
    )
    t.finish()

    shadow = _shadow(table("shadow"), engine, classifier, backend_check, backend_allowed) if "shadow" in data else None

    return Recipe(path=path, product=product, source=source, tiling=tiling, engine=engine, rules=rules,
                  log=log, queues=queues, classifier=classifier, calibration=calibration, station=station,
                  frames=frames, shadow=shadow, integrations={n: copy.deepcopy(dict(data[n])) for n in INTEGRATION_TABLES if n in data},
                  rule_from=rule_from, _raw=copy.deepcopy(dict(data)))


#: Where the recipe gives each piece of the decision rule: (table, recipe key, the learned rule's key).
_RULE_KEYS = (("rules", "score_threshold", "threshold"), ("rules", "min_area_px", "min_area_px"),
              ("tiling", "overlap", "overlap"))


def _learned_rule(engine: EngineConfig | None, data: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """``(pieces, where each piece came from)``: the pieces of the decision rule that the recipe leaves out, by the
    one precedence of :func:`inspection.judging.resolve_rule`: a recipe key wins over the rule `engines accept` wrote
    into the weights' config.json, which wins over the defaults (``min_area_mm2`` replaces the area: the learned one
    is not taken). The recipe's own keys are read and checked by the caller. Weights that cannot be read give no
    learned rule here: loading the engine reports them."""
    tables = {table: data.get(table) if isinstance(data.get(table), Mapping) else {} for table, _, _ in _RULE_KEYS}
    in_recipe = {name: tables[table].get(key) for table, key, name in _RULE_KEYS}
    given = dict(in_recipe)
    if "min_area_mm2" in tables["rules"] and given["min_area_px"] is None:
        given["min_area_px"] = DEFAULT_MIN_AREA_PX
    rule: dict[str, Any] = {}
    if engine is not None and any(value is None for value in given.values()):
        try:
            rule = resolve_weights(engine.weights).judging_rule() or {}
        except (WeightsError, OSError, ValueError):
            rule = {}
    chosen, where = resolve_rule(rule, given, given_by="the recipe",
                                 where=learned_where("the weights' config.json", rule))
    return {name: value for name, value in chosen.items() if in_recipe[name] is None}, where


_LINE_SCAN_KEYS = ("block_lines", "line_rate_hz", "part_mode", "part_lines", "max_part_lines", "gap_lines",
                   "late_tolerance_ms", "screen_seed", "screen_size")


def _line_scan_keys(t: TableReader, kind: SourceKind) -> dict[str, Any]:
    """The line-scan keys of [source]; they are refused for sources that are not line-scan."""
    line_scan = t.get("line_scan", False, check_bool, "true or false (genicam: the camera is a line-scan camera)")
    if line_scan and kind is not SourceKind.GENICAM:
        raise t.fail("line_scan", f'only for kind = "genicam"; kind = "{kind.value}" '
                     + ("is line-scan already" if kind is SourceKind.LINESCAN_REPLAY else "is not a camera"))
    scanning = line_scan or kind is SourceKind.LINESCAN_REPLAY
    if not scanning:
        for key in _LINE_SCAN_KEYS:
            if key in t.data:
                raise t.fail(key, 'only for line-scan sources; use kind = "linescan-replay", or kind = "genicam" '
                                  "with line_scan = true")
        t.known += list(_LINE_SCAN_KEYS)
        return {}

    def size(v: Any) -> tuple[int, int]:
        if not (isinstance(v, list) and len(v) == 2 and all(is_int(x) and 128 <= x <= 65536 for x in v)):
            raise ValueError
        return int(v[0]), int(v[1])

    out = dict(
        line_scan=line_scan,
        block_lines=t.get("block_lines", 512, check_int(1), "an integer >= 1 (lines per block)"),
        line_rate_hz=t.get("line_rate_hz", 0.0, check_float(0.0),
                           "a number of lines per second >= 0 (0 = replay as fast as possible / rate unknown)"),
        part_mode=t.get("part_mode", PartMode.FIXED, lambda v: PartMode(v),
                        '"fixed" (part_lines lines a part) or "trigger" (part-present signal)'),
        part_lines=t.get("part_lines", None, check_int(1), "an integer >= 1 (lines a part)"),
        max_part_lines=t.get("max_part_lines", 65536, check_int(1), "an integer >= 1 (longest part in trigger mode)"),
        gap_lines=t.get("gap_lines", 0, check_int(0), "an integer >= 0 (replay: lines without a part before each pass)"),
        late_tolerance_ms=t.get("late_tolerance_ms", 100.0, check_float(0.0, above=True), "a number of ms > 0"),
        screen_seed=t.get("screen_seed", 0, check_int(0), "an integer >= 0"),
        screen_size=t.get("screen_size", (10240, 5120), size,
                          "[lines, width], each an integer from 128 to 65536, e.g. [10240, 5120]"),
    )
    if kind is SourceKind.GENICAM:
        for key in ("gap_lines", "screen_seed", "screen_size"):
            if key in t.data:
                raise t.fail(key, 'only for kind = "linescan-replay" (a camera brings its own lines)')
        if out["part_mode"] is PartMode.TRIGGER:
            raise t.fail("part_mode", '"trigger" needs a part-present signal in the blocks, which the GenICam source '
                                      'does not read (chunk data) in this version; use "fixed" with part_lines')
        if out["part_lines"] is None:
            raise t.fail("part_lines", "missing; a line-scan camera needs part_lines = <lines a part> "
                                       '(part_mode = "fixed")')
    else:
        if "path" in t.data and ("screen_seed" in t.data or "screen_size" in t.data):
            raise t.fail("screen_size" if "screen_size" in t.data else "screen_seed",
                         "only for the synthetic screen; remove it, or remove path to stream a synthetic screen")
        if out["part_mode"] is PartMode.TRIGGER and out["gap_lines"] < 1:
            raise t.fail("gap_lines", 'part_mode = "trigger" replays need gap_lines >= 1 (lines without a part '
                                      "between passes, where the part-present signal is low)")
        if out["part_mode"] is PartMode.FIXED and out["gap_lines"]:
            raise t.fail("gap_lines", 'only with part_mode = "trigger"')
    if out["part_mode"] is PartMode.TRIGGER and "part_lines" in t.data:
        raise t.fail("part_lines", 'only with part_mode = "fixed"; trigger parts end with the signal '
                                   "(max_part_lines caps them)")
    return out


def _camera_control(t: TableReader, kind: SourceKind) -> dict[str, Any]:
    """The camera-control sub-tables of [source]: ``[source.trigger]`` and ``[source.nodes]`` (cameras only; their
    values are checked against the camera's node map when the source opens)."""
    out: dict[str, Any] = {}
    trigger, nodes = t.data.get("trigger", MISSING), t.data.get("nodes", MISSING)
    for key, value in (("trigger", trigger), ("nodes", nodes)):
        if value is MISSING or (key == "trigger" and not isinstance(value, dict) and kind is not SourceKind.GENICAM):
            continue  # a replay's `trigger = true` is read with the replay keys
        if kind is not SourceKind.GENICAM:
            raise t.fail(key, f'[source.{key}] is for cameras (kind = "genicam"); kind = "{kind.value}" has no '
                              "GenICam node map" + ("; a replay is triggered with trigger = true" if key == "trigger"
                                                    else ""))
        if not isinstance(value, dict):
            example = 'mode = "On", source = "Software"' if key == "trigger" else 'Gain = 6.0, BlackLevel = 2'
            raise t.fail(key, f"must be a table: [source.{key}] followed by lines such as {example}")
        t.known.append(key)
    if kind is SourceKind.GENICAM:  # named in the hints for a misspelt sub-table
        t.known += [key for key in ("trigger", "nodes") if key not in t.known]
    if isinstance(trigger, dict) and kind is SourceKind.GENICAM:
        s = TableReader(trigger, t.where, "source.trigger", t.base)
        mode_check, mode_allowed = _enum(TriggerMode)
        out["trigger"] = TriggerConfig(
            mode=s.get("mode", TriggerMode.ON, mode_check, mode_allowed),
            source=s.get("source", "Software", _feature_value,
                         '"Software" (fired by the line, e.g. OPC UA StartSingleJob) or a camera input such as '
                         '"Line1" (checked against the camera\'s TriggerSource entries when it opens)'),
            activation=s.get("activation", None, _feature_value,
                             'a TriggerActivation entry such as "RisingEdge", "FallingEdge", "AnyEdge", "LevelHigh"'),
            delay_us=s.get("delay_us", None, check_float(0.0), "a delay in microseconds >= 0 (TriggerDelay)"),
            selector=s.get("selector", "FrameStart", _feature_value,
                           'a TriggerSelector entry, e.g. "FrameStart" (one trigger, one frame)'),
        )
        s.finish()
    if isinstance(nodes, dict) and kind is SourceKind.GENICAM:
        out["nodes"] = tuple((name, _camera_node(t, name, value)) for name, value in nodes.items())
    return out


def _part_id_key(t: TableReader, kind: SourceKind) -> dict[str, Any]:
    """``[source] part_id``: the camera feature each frame's part id is read from (a replay's part id is its file's
    name, a line-scan part's its index)."""
    if "part_id" not in t.data:
        if kind is SourceKind.GENICAM:
            t.known.append("part_id")  # named in the hints for a misspelt key
        return {}
    if kind is not SourceKind.GENICAM or t.data.get("line_scan") is True:
        what = ("a line-scan part's id is its index" if kind is SourceKind.LINESCAN_REPLAY or
                t.data.get("line_scan") is True else "a replayed part's id is its file's name")
        raise t.fail("part_id", f'is for area cameras (kind = "genicam"); {what}; remove the key')
    return {"part_id": t.get("part_id", None, _feature_value,
                             'a GenICam feature name, e.g. "ChunkLineStatusAll" or "ChunkCounterValue" (a chunk the '
                             "camera sends with each frame; enable it in [source.nodes])")}


def _feature_value(v: Any) -> str:
    """An enumeration entry name (``"Line1"``, ``"RisingEdge"``): a GenICam name, checked on the camera later."""
    if not isinstance(v, str) or not _FEATURE_NAME.fullmatch(v):
        raise ValueError
    return v


def _camera_node(t: TableReader, name: str, value: Any) -> CameraNodeValue:
    """One ``[source.nodes]`` line: a GenICam feature name and a plain value (the camera checks the rest)."""
    where = f"nodes.{name}"
    if not _FEATURE_NAME.fullmatch(name):
        raise t.fail(where, "is not a GenICam feature name; use the camera's feature name as its node map spells "
                            "it, e.g. Gain or BlackLevelSelector")
    if name in CAMERA_NODES_SET_BY_KEYS:
        raise t.fail(where, f"is set by {CAMERA_NODES_SET_BY_KEYS[name]}; set it there, not in [source.nodes]")
    close = difflib.get_close_matches(name, list(CAMERA_NODES_SET_BY_KEYS), n=1, cutoff=0.85)
    if close:
        raise t.fail(where, f"looks like {close[0]}, which {CAMERA_NODES_SET_BY_KEYS[close[0]]} sets; set it there "
                            "(feature names are case-sensitive)")
    if not isinstance(value, (bool, int, float, str)) or (isinstance(value, float) and value != value):
        raise t.fail(where, f"{value!r} is not allowed; use a number, true/false, or the name of an entry "
                            f'(e.g. {name} = "Continuous")')
    return value


def _engine(t: TableReader, backend_check, backend_allowed: str, precision_check, precision_allowed: str) -> EngineConfig:
    engine = EngineConfig(
        model=t.get("model", "bffn", check_str, 'a model name from the engines registry, e.g. "bffn"'),
        weights=t.get("weights", MISSING, check_str,
                      'a weights folder, a shipped weights name or an engine folder, e.g. "bffn-magnetic-tile"'),
        backend=t.get("backend", Backend.ONNXRUNTIME, backend_check, backend_allowed),
        threads=t.get("threads", 0, check_int(0), "an integer >= 0 (0 = all cores)"),
        precision=t.get("precision", "fp32", precision_check, precision_allowed),
    )
    t.finish()
    return engine


def _candidate_weights(v: Any) -> str:
    """A weights folder that is there (a shadow is set up by an engineer: a wrong path is said at once)."""
    try:
        resolve_weights(check_str(v))
    except (WeightsError, OSError, json.JSONDecodeError) as exc:
        raise Refused(str(exc)) from None
    return v


def _shadow(t: TableReader, engine: EngineConfig | None, classifier: ClassifierConfig | None, backend_check,
            backend_allowed: str) -> ShadowConfig:
    if engine is None:
        raise t.fail("weights", "a shadow judges beside the [engine]; this recipe has none (the classifier alone "
                                "judges): add an [engine] or remove [shadow]")
    if classifier is not None:
        raise t.fail("weights", "a shadow compares segmentation engines; a recipe with a [classifier] stage cannot "
                                "have one in this version: shadow the candidate on a recipe without [classifier]")
    shadow = ShadowConfig(
        weights=t.get("weights", MISSING, _candidate_weights,
                      'the candidate\'s weights folder (as [engine] weights), e.g. "runs/bffn-line/best"'),
        share=t.get("share", DEFAULT_SHADOW_SHARE, check_float(0.0, above=True, high=1.0),
                    f"a share of the inspected parts above 0 and up to 1, e.g. {DEFAULT_SHADOW_SHARE:g}"),
        backend=t.get("backend", engine.backend, backend_check, backend_allowed + " (default: the [engine]'s)"),
        threads=t.get("threads", 1, check_int(0), "an integer >= 0 (the candidate's CPU threads; 0 = all cores)"),
        queue=t.get("queue", 2, check_int(1), "an integer >= 1 (parts waiting for the candidate)"),
        nice=t.get("nice", 19, check_int(0, 19), "an integer from 0 to 19 (added to the shadow worker's niceness)"),
    )
    t.finish()
    return shadow


_ROI_ALLOWED = '"none", {x = , y = , w = , h = } (a rectangle) or {cx = , cy = , r = } (a circle)'


def _roi(t: TableReader) -> RoiRect | RoiCircle | None:
    """``roi = "none"``, ``{x=, y=, w=, h=}`` or ``{cx=, cy=, r=}``; key errors are named ``roi.<key>``."""
    value = t.get("roi", "none", lambda v: v if v == "none" or isinstance(v, dict) else _fail(), _ROI_ALLOWED)
    if value == "none":
        return None
    keys = set(value)
    if keys == {"x", "y", "w", "h"}:
        for k in ("x", "y"):
            if not is_int(value[k]):
                raise t.fail(f"roi.{k}", f"{value[k]!r} is not allowed; use an integer (pixels)")
        for k in ("w", "h"):
            if not is_int(value[k]) or value[k] < 1:
                raise t.fail(f"roi.{k}", f"{value[k]!r} is not allowed; use an integer >= 1 (pixels)")
        return RoiRect(**value)
    if keys == {"cx", "cy", "r"}:
        for k in ("cx", "cy", "r"):
            v = value[k]
            if not (is_int(v) or isinstance(v, float)) or (k == "r" and not v > 0):
                need = "a number > 0" if k == "r" else "a number (pixels)"
                raise t.fail(f"roi.{k}", f"{v!r} is not allowed; use {need}")
        return RoiCircle(cx=float(value["cx"]), cy=float(value["cy"]), r=float(value["r"]))
    shape = "rectangle" if keys & {"x", "y", "w", "h"} else "circle" if keys & {"cx", "cy", "r"} else None
    wanted = {"rectangle": {"x", "y", "w", "h"}, "circle": {"cx", "cy", "r"}}.get(shape or "", set())
    if shape and keys - wanted:
        key = sorted(keys - wanted)[0]
        raise t.fail(f"roi.{key}", f"unknown key for a {shape} ROI; use {_ROI_ALLOWED}")
    if shape:
        key = sorted(wanted - keys)[0]
        raise t.fail(f"roi.{key}", f"missing for a {shape} ROI; use {_ROI_ALLOWED}")
    key = sorted(keys)[0] if keys else ""
    raise t.fail(f"roi.{key}" if key else "roi", f"unknown ROI shape; use {_ROI_ALLOWED}")


def _fail() -> Any:
    raise ValueError
