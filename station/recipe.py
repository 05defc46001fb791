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
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from station.errors import RecipeError
from station.verdict import DecisionRules, RoiCircle, RoiRect

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


class SourceKind(str, enum.Enum):
    REPLAY = "replay"
    GENICAM = "genicam"


class Backend(str, enum.Enum):
    ONNXRUNTIME = "onnxruntime"
    TORCH = "torch"
    TORCH_CUDA = "torch-cuda"
    TENSORRT = "tensorrt"


class QueuePolicy(str, enum.Enum):
    """What a full queue does: drop its oldest item (and count it) or block the producer (back-pressure)."""

    DROP_OLDEST = "drop_oldest"
    BLOCK = "block"


@dataclass(frozen=True)
class ProductConfig:
    name: str
    description: str = ""


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


@dataclass(frozen=True)
class TilingConfig:
    tile: int = 128
    overlap: int = 32
    batch: int = 32


@dataclass(frozen=True)
class EngineConfig:
    """``weights`` is a path or the name of weights shipped with the engines package (resolved there)."""

    weights: str
    model: str = "bffn"
    backend: Backend = Backend.ONNXRUNTIME
    threads: int = 0  # 0 = all cores


class ClassifierMode(str, enum.Enum):
    """How GR relates patches: the patches of one part form its batch, or each patch meets the stored bank."""

    BATCH = "batch"
    BANK = "bank"


@dataclass(frozen=True)
class ClassifierConfig:
    """The optional classifier stage (:mod:`station.classify`): a multi-label classifier on ``patch``-sided
    squares of each frame, after segmentation. ``weights`` is a folder or a shipped weights name; a class is
    present in a patch when its score is above ``threshold``; ``fail_on_labels`` fails any part with a label."""

    weights: str
    patch: int = 1024
    overlap: int = 0
    threshold: float = 0.5
    mode: ClassifierMode = ClassifierMode.BATCH
    fail_on_labels: bool = True
    threads: int = 0  # 0 = leave torch's thread count as it is


@dataclass(frozen=True)
class LogConfig:
    db: Path = Path("station-data/rejects.db")
    save_reject_images: bool = True


@dataclass(frozen=True)
class QueuesConfig:
    frames: int = 8  # most frames waiting for inference
    frames_policy: QueuePolicy = QueuePolicy.DROP_OLDEST
    results: int = 64


@dataclass(frozen=True)
class Recipe:
    """A whole product recipe; ``path`` is the file it came from."""

    path: Path
    product: ProductConfig
    source: SourceConfig
    tiling: TilingConfig
    engine: EngineConfig
    rules: DecisionRules
    log: LogConfig = field(default_factory=LogConfig)
    queues: QueuesConfig = field(default_factory=QueuesConfig)
    classifier: ClassifierConfig | None = None  # None: no [classifier] table, no classifier stage
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

_PATH_KEYS = {("source", "path"), ("source", "cti")}
_MISSING = object()


class _Table:
    """Reads the keys of one TOML table, remembering which were used so leftovers can be reported."""

    def __init__(self, data: Mapping[str, Any], where: str, name: str, base: Path) -> None:
        self.where, self.name, self.base = where, name, base
        self.data = dict(data)
        self.known: list[str] = []

    def fail(self, key: str, problem: str) -> RecipeError:
        return RecipeError(f"{self.where}: [{self.name}] {key}: {problem}")

    def get(self, key: str, default: Any, check: Callable[[Any], Any], allowed: str) -> Any:
        self.known.append(key)
        value = self.data.get(key, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise self.fail(key, f"missing; add {key} = {allowed}")
            return default
        try:
            return check(value)
        except (TypeError, ValueError):
            raise self.fail(key, f"{value!r} is not allowed; use {allowed}") from None

    def finish(self) -> None:
        for key in self.data:
            if key not in self.known:
                close = difflib.get_close_matches(key, self.known, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise self.fail(key, f"unknown key; {hint}known keys: {', '.join(self.known)}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(low: int, high: int | None = None) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if not _is_int(v) or v < low or (high is not None and v > high):
            raise ValueError
        return v
    return check


def _float(low: float, *, above: bool = False, high: float | None = None) -> Callable[[Any], float]:
    def check(v: Any) -> float:
        if not (_is_int(v) or isinstance(v, float)) or v != v:
            raise ValueError
        if (v <= low if above else v < low) or (high is not None and v > high):
            raise ValueError
        return float(v)
    return check


def _str(v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ValueError
    return v


def _text(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError
    return v


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError
    return v


def _enum(cls: type[enum.Enum]) -> tuple[Callable[[Any], Any], str]:
    allowed = "one of " + ", ".join(repr(m.value) for m in cls)
    return (lambda v: cls(v)), allowed


def _path(base: Path) -> Callable[[Any], Path]:
    def check(v: Any) -> Path:
        p = Path(_str(v)).expanduser()
        return p if p.is_absolute() else (base / p).resolve()
    return check


def _device(v: Any) -> int | str:
    return _int(0)(v) if _is_int(v) else _str(v)


_TABLES = ("product", "source", "tiling", "engine", "rules", "log", "queues", "classifier")
_REQUIRED_TABLES = ("product", "source", "engine")


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
                              f"{', '.join(f'[{t}]' for t in _REQUIRED_TABLES)}")
    base = path.resolve().parent

    def table(name: str) -> _Table:
        return _Table(data.get(name, {}), where, name, base)

    t = table("product")
    product = ProductConfig(name=t.get("name", _MISSING, _str, 'a non-empty string, e.g. "magnetic_tile"'),
                            description=t.get("description", "", _text, "a string"))
    t.finish()

    t = table("source")
    kind_check, kind_allowed = _enum(SourceKind)
    kind = t.get("kind", _MISSING, kind_check, kind_allowed)
    path_default = _MISSING if kind is SourceKind.REPLAY else None
    source = SourceConfig(
        kind=kind,
        path=t.get("path", path_default, _path(base),
                   'the folder of images to replay, e.g. "../samples/magnetic-tile" (relative to the recipe)'),
        pattern=t.get("pattern", "*", _str, 'a glob pattern such as "*.jpg" or "*.png"'),
        loop=t.get("loop", True, _bool, "true or false"),
        fps=t.get("fps", 0.0, _float(0.0), "a number >= 0 (0 = as fast as the line takes frames)"),
        cti=t.get("cti", None, _path(base), "the path of a GenTL producer (.cti file)"),
        device=t.get("device", 0, _device, "a device index >= 0 or a device id / serial number string"),
        pixel_format=t.get("pixel_format", "Mono8", _str, 'a GenICam pixel format name such as "Mono8"'),
        frame_rate=t.get("frame_rate", None, _float(0.0, above=True), "a number of frames per second > 0"),
        exposure_us=t.get("exposure_us", None, _float(0.0, above=True), "an exposure time in microseconds > 0"),
    )
    t.finish()

    t = table("tiling")
    tile = t.get("tile", 128, _int(1), "an integer >= 1, e.g. 128 or 256")
    overlap = t.get("overlap", 32, _int(0, tile - 1), f"an integer from 0 to {tile - 1} (less than tile = {tile})")
    tiling = TilingConfig(tile=tile, overlap=overlap, batch=t.get("batch", 32, _int(1), "an integer >= 1"))
    t.finish()

    t = table("engine")
    backend_check, backend_allowed = _enum(Backend)
    engine = EngineConfig(
        model=t.get("model", "bffn", _str, 'a model name from the engines registry, e.g. "bffn"'),
        weights=t.get("weights", _MISSING, _str,
                      'a weights file path or a shipped weights name, e.g. "bffn-magnetic-tile"'),
        backend=t.get("backend", Backend.ONNXRUNTIME, backend_check, backend_allowed),
        threads=t.get("threads", 0, _int(0), "an integer >= 0 (0 = all cores)"),
    )
    t.finish()

    t = table("rules")
    rules = DecisionRules(
        score_threshold=t.get("score_threshold", 0.5, _float(0.0, above=True, high=1.0), "a number in (0, 1]"),
        min_area_px=t.get("min_area_px", 30, _int(1), "an integer >= 1 (pixels)"),
        roi=_roi(t),
        label=t.get("label", "defect", _str, 'a non-empty string, e.g. "defect"'),
    )
    t.finish()

    t = table("log")
    log = LogConfig(
        db=t.get("db", LogConfig.db, lambda v: Path(_str(v)).expanduser(),
                 'a file path, e.g. "station-data/rejects.db"'),
        save_reject_images=t.get("save_reject_images", True, _bool, "true or false"),
    )
    t.finish()

    t = table("queues")
    policy_check, policy_allowed = _enum(QueuePolicy)
    queues = QueuesConfig(
        frames=t.get("frames", 8, _int(1), "an integer >= 1"),
        frames_policy=t.get("frames_policy", QueuePolicy.DROP_OLDEST, policy_check, policy_allowed),
        results=t.get("results", 64, _int(1), "an integer >= 1"),
    )
    t.finish()

    classifier = None
    if "classifier" in data:
        t = table("classifier")
        mode_check, mode_allowed = _enum(ClassifierMode)
        weights = t.get("weights", _MISSING, _str, 'a classifier weights folder or shipped name, e.g. "runs/gr"')
        patch = t.get("patch", 1024, _int(1), "an integer >= 1 (patch side in pixels), e.g. 1024")
        classifier = ClassifierConfig(
            weights=weights,
            patch=patch,
            overlap=t.get("overlap", 0, _int(0, patch - 1), f"an integer from 0 to {patch - 1} (less than patch)"),
            threshold=t.get("threshold", 0.5, _float(0.0, high=1.0), "a number in [0, 1] (label when score > it)"),
            mode=t.get("mode", ClassifierMode.BATCH, mode_check, mode_allowed),
            fail_on_labels=t.get("fail_on_labels", True, _bool, "true or false"),
            threads=t.get("threads", 0, _int(0), "an integer >= 0 (0 = leave torch's setting)"),
        )
        t.finish()

    return Recipe(path=path, product=product, source=source, tiling=tiling, engine=engine, rules=rules,
                  log=log, queues=queues, classifier=classifier, _raw=copy.deepcopy(dict(data)))


_ROI_ALLOWED = '"none", {x = , y = , w = , h = } (a rectangle) or {cx = , cy = , r = } (a circle)'


def _roi(t: _Table) -> RoiRect | RoiCircle | None:
    """``roi = "none"``, ``{x=, y=, w=, h=}`` or ``{cx=, cy=, r=}``; key errors are named ``roi.<key>``."""
    value = t.get("roi", "none", lambda v: v if v == "none" or isinstance(v, dict) else _fail(), _ROI_ALLOWED)
    if value == "none":
        return None
    keys = set(value)
    if keys == {"x", "y", "w", "h"}:
        for k in ("x", "y"):
            if not _is_int(value[k]):
                raise t.fail(f"roi.{k}", f"{value[k]!r} is not allowed; use an integer (pixels)")
        for k in ("w", "h"):
            if not _is_int(value[k]) or value[k] < 1:
                raise t.fail(f"roi.{k}", f"{value[k]!r} is not allowed; use an integer >= 1 (pixels)")
        return RoiRect(**value)
    if keys == {"cx", "cy", "r"}:
        for k in ("cx", "cy", "r"):
            v = value[k]
            if not (_is_int(v) or isinstance(v, float)) or (k == "r" and not v > 0):
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
