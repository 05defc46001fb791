"""Recipes: the shipped example loads, and every kind of mistake names the file, table and key."""
from __future__ import annotations

from pathlib import Path

import pytest

from inspection_core.verdict import RoiCircle, RoiRect
from station.app import build_source
from station.errors import RecipeError
from station.recipe import (
    MISSING,
    Backend,
    QueuePolicy,
    Refused,
    SourceKind,
    TableReader,
    check_int,
    check_path,
    load_recipe,
    shipped_recipe_path,
)

MINIMAL = """
[product]
name = "part"

[source]
kind = "replay"
path = "images"

[engine]
weights = "w.safetensors"
"""


def write(tmp_path: Path, text: str, name: str = "r.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_example_loads() -> None:
    path = shipped_recipe_path("magnetic_tile")
    recipe = load_recipe(path)
    assert recipe.path == path
    assert recipe.source.kind is SourceKind.REPLAY
    assert recipe.source.path == (path.parent / "../samples/magnetic-tile").resolve()
    assert recipe.source.pattern == "*.jpg"
    assert (recipe.tiling.tile, recipe.tiling.overlap, recipe.tiling.batch) == (128, 32, 32)
    assert (recipe.engine.model, recipe.engine.weights, recipe.engine.backend) == ("bffn", "bffn-magnetic-tile",
                                                                                   Backend.ONNXRUNTIME)
    assert recipe.engine.threads == 0
    assert (recipe.rules.score_threshold, recipe.rules.min_area_px, recipe.rules.roi) == (0.95, 30, None)
    assert recipe.log.db == Path("station-data/rejects.db") and recipe.log.save_reject_images
    assert (recipe.queues.frames, recipe.queues.frames_policy, recipe.queues.results) == (8, QueuePolicy.DROP_OLDEST, 64)
    assert recipe.as_dict()["engine"]["backend"] == "onnxruntime"


def test_minimal_recipe_gets_defaults_and_resolves_paths(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path, MINIMAL))
    assert recipe.source.path == (tmp_path / "images").resolve()
    assert recipe.source.loop and recipe.source.fps == 0.0 and recipe.source.pattern == "*"
    assert recipe.tiling.tile == 128 and recipe.queues.frames_policy is QueuePolicy.DROP_OLDEST
    assert recipe.product.description == ""


def test_genicam_source_needs_no_path(tmp_path: Path) -> None:
    text = MINIMAL.replace('kind = "replay"\npath = "images"',
                           'kind = "genicam"\ndevice = "SN123"\nframe_rate = 30\nexposure_us = 2500.5\ncti = "p.cti"\n'
                           'buffers = 32')
    recipe = load_recipe(write(tmp_path, text))
    assert recipe.source.kind is SourceKind.GENICAM and recipe.source.path is None
    assert recipe.source.device == "SN123" and recipe.source.frame_rate == 30.0
    assert recipe.source.buffers == 32 and load_recipe(write(tmp_path, MINIMAL)).source.buffers == 16
    source = build_source(recipe)
    assert source.num_buffers == 32 and source.device == "SN123" and source.exposure_us == 2500.5
    assert recipe.source.cti == (tmp_path / "p.cti").resolve()


@pytest.mark.parametrize(
    ("roi", "expected"),
    [
        ('"none"', None),
        ("{x = 1, y = 2, w = 30, h = 40}", RoiRect(1, 2, 30, 40)),
        ("{cx = 10, cy = 20.5, r = 5}", RoiCircle(10.0, 20.5, 5.0)),
    ],
)
def test_roi_forms(tmp_path: Path, roi: str, expected: object) -> None:
    recipe = load_recipe(write(tmp_path, MINIMAL + f"\n[rules]\nroi = {roi}\n"))
    assert recipe.rules.roi == expected


def test_overrides_are_checked_and_resolve_against_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = load_recipe(write(tmp_path, MINIMAL + '\n[rules]\nroi = {cx = 1, cy = 1, r = 1}\n'))
    monkeypatch.chdir(tmp_path.parent)
    new = recipe.with_overrides({"engine.backend": "tensorrt"}, source__path="shots", rules__roi=None,
                                tiling__tile=256)
    assert new.engine.backend is Backend.TENSORRT and new.tiling.tile == 256
    assert new.source.path == (tmp_path.parent / "shots").resolve()
    assert new.rules.roi is None
    assert recipe.engine.backend is Backend.ONNXRUNTIME  # the original is untouched
    with pytest.raises(RecipeError, match=r"\[queues\] frames_policy"):
        recipe.with_overrides(queues__frames_policy="drop_newest")
    with pytest.raises(RecipeError, match="override 'bogus.key'"):
        recipe.with_overrides({"bogus.key": 1})
    with pytest.raises(RecipeError, match=r"\[engine\] thread: unknown key; did you mean 'threads'"):
        recipe.with_overrides(engine__thread=2)


BAD = [
    # (replace this, with this, text expected in the message)
    ('name = "part"', 'name = ""', "[product] name"),
    ('name = "part"', 'name = "part"\ncolour = "red"', "[product] colour: unknown key"),
    ('kind = "replay"', 'kind = "usb"', "[source] kind: 'usb' is not allowed; use one of 'replay', 'genicam'"),
    ('kind = "replay"', "", "[source] kind: missing"),
    ('path = "images"', "", "[source] path: missing"),
    ('path = "images"', "path = 3", "[source] path: 3 is not allowed"),
    ('path = "images"', 'path = "images"\nloop = "yes"', "[source] loop: 'yes' is not allowed; use true or false"),
    ('path = "images"', 'path = "images"\nfps = -1', "[source] fps"),
    ('path = "images"', 'path = "images"\ndevice = -1', "[source] device"),
    ('path = "images"', 'path = "images"\nexposure_us = 0', "[source] exposure_us"),
    ('path = "images"', 'path = "images"\nbuffers = 0', "[source] buffers: 0 is not allowed; use an integer >= 1"),
    ('path = "images"', 'path = "images"\npatern = "*.png"', "[source] patern: unknown key; did you mean 'pattern'"),
    ('weights = "w.safetensors"', "", "[engine] weights: missing"),
    ('weights = "w.safetensors"', 'weights = "w"\nbackend = "cuda"', "[engine] backend: 'cuda' is not allowed"),
    ('weights = "w.safetensors"', 'weights = "w"\nthreads = 1.5', "[engine] threads"),
    ('weights = "w.safetensors"', 'weights = "w"\nthreads = true', "[engine] threads"),
    ("[engine]", "[tiling]\ntile = 64\noverlap = 64\n[engine]", "[tiling] overlap: 64 is not allowed; use an integer from 0 to 63"),
    ("[engine]", "[tiling]\ntile = 0\n[engine]", "[tiling] tile"),
    ("[engine]", "[tiling]\nbatch = 0\n[engine]", "[tiling] batch"),
    ("[engine]", "[rules]\nscore_threshold = 1.5\n[engine]", "[rules] score_threshold: 1.5 is not allowed; use a number in (0, 1]"),
    ("[engine]", "[rules]\nscore_threshold = 0\n[engine]", "[rules] score_threshold"),
    ("[engine]", "[rules]\nmin_area_px = 2.5\n[engine]", "[rules] min_area_px"),
    ("[engine]", '[rules]\nroi = "all"\n[engine]', "[rules] roi: 'all' is not allowed"),
    ("[engine]", "[rules]\nroi = {x = 1, y = 2, w = 3}\n[engine]", "[rules] roi.h: missing for a rectangle ROI"),
    ("[engine]", "[rules]\nroi = {x = 1, y = 2, w = 0, h = 4}\n[engine]", "[rules] roi.w: 0 is not allowed"),
    ("[engine]", "[rules]\nroi = {x = 1, y = 2, w = 3, h = 4, r = 5}\n[engine]", "[rules] roi.r: unknown key"),
    ("[engine]", "[rules]\nroi = {cx = 1, cy = 2, r = -5}\n[engine]", "[rules] roi.r: -5 is not allowed; use a number > 0"),
    ("[engine]", "[rules]\nroi = {a = 1}\n[engine]", "[rules] roi.a: unknown ROI shape"),
    ("[engine]", "[log]\nsave_reject_images = 1\n[engine]", "[log] save_reject_images"),
    ("[engine]", "[log]\ndb = 5\n[engine]", "[log] db"),
    ("[engine]", '[queues]\nframes_policy = "drop_newest"\n[engine]',
     "[queues] frames_policy: 'drop_newest' is not allowed; use one of 'drop_oldest', 'block'"),
    ("[engine]", "[queues]\nframes = 0\n[engine]", "[queues] frames"),
    ("[engine]", "[queues]\nresults = -1\n[engine]", "[queues] results"),
    ("[engine]", "[tilling]\ntile = 64\n[engine]", "[tilling]: unknown table; did you mean [tiling]"),
    ("[product]", "log = 'x'\n[product]", "[log]: must be a table"),
    ('[engine]\nweights = "w.safetensors"', "", "[engine]: missing table"),
]


@pytest.mark.parametrize(("old", "new", "fragment"), BAD, ids=[b[2][:40] for b in BAD])
def test_every_error_names_file_table_and_key(tmp_path: Path, old: str, new: str, fragment: str) -> None:
    assert old in MINIMAL
    path = write(tmp_path, MINIMAL.replace(old, new, 1))
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert fragment in message, message


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.toml")
    with pytest.raises(RecipeError, match="cannot read the recipe"):
        load_recipe(tmp_path)
    with pytest.raises(RecipeError, match=r"not valid TOML: .*line 2"):
        load_recipe(write(tmp_path, "[product]\nname = \n"))
    with pytest.raises(RecipeError, match="shipped recipes: .*magnetic_tile"):
        shipped_recipe_path("nope")


def test_fingerprint_follows_the_effective_settings_not_the_file(tmp_path: Path) -> None:
    first = load_recipe(write(tmp_path, MINIMAL))
    assert first.fingerprint() == load_recipe(write(tmp_path, "# a comment\n" + MINIMAL)).fingerprint()
    assert len(first.fingerprint()) == 12 and int(first.fingerprint(), 16) >= 0
    stricter = first.with_overrides({"rules.score_threshold": 0.9})
    assert stricter.fingerprint() != first.fingerprint()
    assert stricter.with_overrides({"rules.score_threshold": None}).fingerprint() == first.fingerprint()


def test_fingerprint_covers_only_what_judges(tmp_path: Path) -> None:
    """Issue 28: where the ledger lives, the replay's pace and folder, queues, threads and the batch size do not
    judge a part, so they leave the fingerprint equal; a rule, the tiling, the weights' contents change it."""
    import shutil

    from engines.weights import resolve_weights

    shipped = resolve_weights("bffn-magnetic-tile").path
    weights = tmp_path / "w"
    shutil.copytree(shipped, weights, ignore=shutil.ignore_patterns("TRAINING.md", "*.png"))
    recipe = load_recipe(write(tmp_path, MINIMAL.replace('"w.safetensors"', f'"{weights}"')))
    same = recipe.with_overrides({"log.db": str(tmp_path / "elsewhere.db"), "source.fps": 25.0, "source.loop": False,
                                  "source.path": str(tmp_path), "queues.frames": 3, "engine.threads": 1,
                                  "tiling.batch": 7, "log.save_reject_images": False})
    assert same.fingerprint() == recipe.fingerprint()
    for changed in ({"rules.score_threshold": 0.9}, {"rules.min_area_px": 31}, {"tiling.overlap": 16},
                    {"rules.roi": {"x": 0, "y": 0, "w": 10, "h": 10}}, {"engine.precision": "fp16"}):
        assert recipe.with_overrides(changed).fingerprint() != recipe.fingerprint(), changed
    before = recipe.fingerprint()
    data = bytearray((weights / "model.safetensors").read_bytes())
    data[-1] ^= 1  # other weights under the same name judge otherwise
    (weights / "model.safetensors").write_bytes(bytes(data))
    assert load_recipe(recipe.path).fingerprint() != before


def test_station_table_defaults_to_the_host_name_and_fail_safe(tmp_path: Path) -> None:
    import socket

    from station.recipe import NotInspectedPolicy

    recipe = load_recipe(write(tmp_path, MINIMAL))
    assert recipe.station.id == socket.gethostname() and recipe.station.min_free_mb == 200.0
    assert recipe.station.not_inspected is NotInspectedPolicy.REJECT
    named = load_recipe(write(tmp_path, MINIMAL + '[station]\nid = "line-3"\nnot_inspected = "exclude"\n'
                                                  "min_free_mb = 0\n", "s.toml"))
    assert (named.station.id, named.station.not_inspected, named.station.min_free_mb) == (
        "line-3", NotInspectedPolicy.EXCLUDE, 0.0)
    # the station id says where a recipe runs, not how it judges: it leaves the fingerprint alone...
    assert load_recipe(write(tmp_path, MINIMAL + '[station]\nid = "line-4"\n', "t.toml")).fingerprint() == \
        recipe.fingerprint()
    assert named.fingerprint() != recipe.fingerprint()  # ...but counting parts not inspected is a judgement
    with pytest.raises(RecipeError, match=r"\[station\] not_inspected: 'maybe' is not allowed; use one of 'reject', "
                                          r"'exclude'"):
        load_recipe(write(tmp_path, MINIMAL + '[station]\nnot_inspected = "maybe"\n', "u.toml"))
    with pytest.raises(RecipeError, match=r"\[frames\] max_width: 10 is not allowed; use an integer >= min_width"):
        load_recipe(write(tmp_path, MINIMAL + "[frames]\nmax_width = 10\n", "v.toml"))


# -- camera control: [source.trigger] and [source.nodes] --------------------------------------------------------------
CAMERA = MINIMAL.replace('kind = "replay"\npath = "images"', 'kind = "genicam"')


def test_camera_trigger_and_nodes_tables(tmp_path: Path) -> None:
    from station.recipe import TriggerConfig, TriggerMode

    recipe = load_recipe(write(tmp_path, CAMERA + """
[source.trigger]
mode = "On"
source = "Line1"
activation = "RisingEdge"
delay_us = 250

[source.nodes]
LineSelector = "Line1"
LineDebouncerTime = 10.5
ChunkModeActive = true
BinningHorizontal = 2
DeviceUserID = "cam-A"
"""))
    assert recipe.source.trigger == TriggerConfig(mode=TriggerMode.ON, source="Line1", activation="RisingEdge",
                                                  delay_us=250.0, selector="FrameStart")
    assert recipe.source.nodes == (("LineSelector", "Line1"), ("LineDebouncerTime", 10.5), ("ChunkModeActive", True),
                                   ("BinningHorizontal", 2), ("DeviceUserID", "cam-A"))  # the file's order
    software = load_recipe(write(tmp_path, CAMERA + "[source.trigger]\n", "s.toml")).source.trigger
    assert software == TriggerConfig() and software.software and software.mode is TriggerMode.ON
    plain = load_recipe(write(tmp_path, CAMERA, "p.toml"))
    assert plain.source.trigger is None and plain.source.nodes == ()
    # camera settings are part of how parts are judged: they change the fingerprint
    assert recipe.fingerprint() != plain.fingerprint()
    assert load_recipe(write(tmp_path, CAMERA + "[source.nodes]\nGain = 3\n", "g.toml")).fingerprint() != \
        load_recipe(write(tmp_path, CAMERA + "[source.nodes]\nGain = 4\n", "h.toml")).fingerprint()


CAMERA_BAD = [
    ("[source.trigger]\nmdoe = \"On\"\n", "[source.trigger] mdoe: unknown key; did you mean 'mode'? known keys: mode, "
                                          "source, activation, delay_us, selector"),
    ("[source.trigger]\nmode = \"on\"\n", "[source.trigger] mode: 'on' is not allowed; use one of 'On', 'Off'"),
    ("[source.trigger]\nmode = true\n", "[source.trigger] mode: True is not allowed; use one of 'On', 'Off'"),
    ("[source.trigger]\nsource = \"Line 1\"\n", "[source.trigger] source: 'Line 1' is not allowed; use \"Software\""),
    ("[source.trigger]\ndelay_us = -5\n", "[source.trigger] delay_us: -5 is not allowed; use a delay in microseconds"),
    ("[source.trigger]\nactivation = 1\n", "[source.trigger] activation: 1 is not allowed; use a TriggerActivation"),
    ("[source.triger]\nmode = \"On\"\n", "[source] triger: unknown key; did you mean 'trigger'?"),
    ("[source.node]\nGain = 1\n", "[source] node: unknown key; did you mean 'nodes'?"),
    ("[source.nodes]\nPixelFormat = \"Mono12\"\n", "[source] nodes.PixelFormat: is set by [source] pixel_format; set "
                                                   "it there, not in [source.nodes]"),
    ("[source.nodes]\nTriggerMode = \"On\"\n", "[source] nodes.TriggerMode: is set by [source.trigger] mode"),
    ("[source.nodes]\nExposuretime = 5\n", "[source] nodes.Exposuretime: looks like ExposureTime, which [source] "
                                           "exposure_us sets"),
    ("[source.nodes]\n\"Gain Raw\" = 5\n", "[source] nodes.Gain Raw: is not a GenICam feature name"),
    ("[source.nodes]\nGain = [1, 2]\n", "[source] nodes.Gain: [1, 2] is not allowed; use a number, true/false, or the "
                                        "name of an entry"),
    ("[source.nodes]\nGain = nan\n", "[source] nodes.Gain: nan is not allowed"),
]


@pytest.mark.parametrize(("extra", "fragment"), CAMERA_BAD, ids=[b[1][:40] for b in CAMERA_BAD])
def test_camera_table_errors_name_the_table_and_key(tmp_path: Path, extra: str, fragment: str) -> None:
    path = write(tmp_path, CAMERA + extra)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert str(info.value).startswith(f"{path}: ") and fragment in str(info.value), str(info.value)


def test_camera_tables_are_for_cameras(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r'\[source\] trigger: \[source.trigger\] is for cameras \(kind = "genicam"\); '
                                          r'kind = "replay" has no GenICam node map; a replay is triggered with '
                                          r"trigger = true"):
        load_recipe(write(tmp_path, MINIMAL + '[source.trigger]\nmode = "On"\n'))
    with pytest.raises(RecipeError, match=r"\[source\] nodes: \[source.nodes\] is for cameras"):
        load_recipe(write(tmp_path, MINIMAL + "[source.nodes]\nGain = 1\n"))
    with pytest.raises(RecipeError, match=r"\[source\] trigger: must be a table: \[source.trigger\] followed by"):
        load_recipe(write(tmp_path, CAMERA.replace('kind = "genicam"', 'kind = "genicam"\ntrigger = true')))


def test_the_shipped_recipe_documents_the_camera_tables(tmp_path: Path) -> None:
    """The shipped (replay) recipe's commented camera block, uncommented in a camera recipe, loads as documented."""
    lines = shipped_recipe_path("magnetic_tile").read_text().splitlines()
    first = lines.index(next(line for line in lines if line.startswith("# [source.trigger]")))
    block = []
    for line in lines[first:]:
        if not line.startswith("# "):
            break
        block.append(line[2:])
    recipe = load_recipe(write(tmp_path, CAMERA + "\n".join(block) + "\n"))
    assert recipe.source.trigger is not None and recipe.source.trigger.source == "Line1"
    assert recipe.source.trigger.activation == "RisingEdge" and recipe.source.trigger.delay_us == 0.0
    assert [name for name, _ in recipe.source.nodes][:3] == ["ChunkModeActive", "ChunkSelector", "ChunkEnable"]


def test_the_table_reader_the_integrations_share_says_what_to_fix_in_one_shape(tmp_path):
    def reader(**data):
        return TableReader(data, "line.toml", "fleet", tmp_path)

    with pytest.raises(RecipeError, match=r"^line.toml: \[fleet\] to: missing; add to = \"postgresql://\.\.\.\"$"):
        reader().get("to", MISSING, str, '"postgresql://..."')
    with pytest.raises(RecipeError, match=r"^line.toml: \[fleet\] batch: 0 is not allowed; use an integer >= 1$"):
        reader(batch=0).get("batch", 500, check_int(1), "an integer >= 1")

    def no_password(v):
        if "@" in v:
            raise Refused("the URL holds a password; use PGPASSWORD")
        return v

    with pytest.raises(RecipeError, match=r"^line.toml: \[fleet\] to: 'u:pw@h' is not allowed; the URL holds a "
                                          "password; use PGPASSWORD$"):
        reader(to="u:pw@h").get("to", MISSING, no_password, "a URL")
    t = reader(batch=7, imags="x")
    assert t.get("batch", 500, check_int(1), "an integer >= 1") == 7
    assert t.get("images", None, check_path(tmp_path), "a folder") is None
    with pytest.raises(RecipeError, match=r"^line.toml: \[fleet\] imags: unknown key; did you mean 'images'\? "
                                          "known keys: batch, images$"):
        t.finish()
    t = reader(images="img")
    assert t.get("images", None, check_path(tmp_path), "a folder") == tmp_path / "img"
    t.finish()


def test_a_replay_can_wait_for_triggers_and_a_camera_table_is_refused_for_it(tmp_path):
    text = shipped_recipe_path("magnetic_tile").read_text(encoding="utf-8")
    samples = shipped_recipe_path("magnetic_tile").parent.parent / "samples" / "magnetic-tile"
    text = text.replace('path = "../samples/magnetic-tile"', f'path = "{samples.as_posix()}"')
    path = tmp_path / "r.toml"
    path.write_text(text.replace("fps = 10.0", "fps = 10.0\ntrigger = true"), encoding="utf-8")
    recipe = load_recipe(path)
    assert recipe.source.triggered and build_source(recipe).triggered
    assert not load_recipe(shipped_recipe_path("magnetic_tile")).source.triggered
    path.write_text(text.replace("fps = 10.0", 'fps = 10.0\ntrigger = "yes"'), encoding="utf-8")
    with pytest.raises(RecipeError, match=r"\[source\] trigger: 'yes' is not allowed; use true or false"):
        load_recipe(path)
    path.write_text(text + '\n[source.trigger]\nmode = "On"\n', encoding="utf-8")
    with pytest.raises(RecipeError, match=r"is for cameras"):
        load_recipe(path)
