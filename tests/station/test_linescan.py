"""Line-scan acquisition: the strip assembler (fixed and trigger parts, missing / late / repeated blocks, restarts,
the gap records every run of missing lines leaves for the part ledger), the replay's block schedule, viky.cti frames
as blocks, and the [source] keys of line-scan recipes."""
from __future__ import annotations

import time

import numpy as np
import pytest

from station.errors import RecipeError, SourceError
from inspection_core.records import FrameGap, GapKind, LineBlock, NotInspected, NotInspectedReason
from station.strips import EndReason, PartMode, StripAssembler
from station.recipe import SourceKind, load_recipe, shipped_recipe_path
from station.sources import open_source
from station.sources.linescan import GenICamBlocks, LineScanReplay, LineScanSource
from tests.station.test_genicam_source import camera, needs_viky
from tests.station.test_recipe import write


def image(lines: int = 512, width: int = 96, seed: int = 0) -> np.ndarray:
    """Lines that are easy to tell apart: line i starts with i // 256, i % 256."""
    rng = np.random.default_rng(seed)
    out = rng.integers(1, 255, (lines, width), dtype=np.uint8)
    out[:, 0], out[:, 1] = np.arange(lines) // 256, np.arange(lines) % 256
    return out


def parts_of(replay: LineScanReplay, **settings) -> tuple[list, StripAssembler]:
    assembler = StripAssembler(**settings)
    parts = [p for block in replay for p in assembler.feed(block)]
    return parts + assembler.flush(), assembler


class Recorder:
    """A PartListener that keeps what it was told."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def part_started(self, index, width, expected_lines):
        self.events.append(("started", index, width, expected_lines))

    def lines_arrived(self, index, lines):
        assert not lines.flags.writeable
        self.events.append(("lines", index, lines.shape[0]))

    def part_ended(self, part):
        self.events.append(("ended", part.index, part.lines))

    def part_discarded(self, index):
        self.events.append(("discarded", index))


# ------------------------------------------------------------------------------------------------ fixed mode
@pytest.mark.parametrize("block_lines", [64, 100])
def test_fixed_parts_are_the_image_cut_at_part_lines(block_lines):
    img = image(512)
    recorder = Recorder()
    assembler = StripAssembler(part_lines=256, listener=recorder)
    parts = [p for b in LineScanReplay(img, block_lines=block_lines, passes=2) for p in assembler.feed(b)]
    assert [p.index for p in parts] == [1, 2, 3, 4] and not assembler.flush()
    for k, part in enumerate(parts):
        np.testing.assert_array_equal(part.image, img[(k % 2) * 256:(k % 2 + 1) * 256])
        assert part.complete and part.end is EndReason.LENGTH and part.first_line == 256 * k
        assert part.last_line == 256 * k + 255 and part.gaps == () and part.late == ()
        assert part.line_timestamps_ns.shape == (256,) and (part.line_timestamps_ns > 0).all()
    assert assembler.stats.parts == 4 and assembler.stats.missing_lines == 0
    started = [e for e in recorder.events if e[0] == "started"]
    assert started == [("started", i, 96, 256) for i in (1, 2, 3, 4)]
    first = [e[2] for e in recorder.events if e[0] == "lines" and e[1] == 1]
    assert first == sorted(first) and first[-1] == 256 and len(first) >= 256 // block_lines


@pytest.mark.parametrize("line_counter", [True, False])
def test_a_missing_block_is_zero_rows_listed_in_gaps_never_glued(line_counter):
    img = image(512)
    replay = LineScanReplay(img, block_lines=64, drop_blocks={5}, line_counter=line_counter)  # lines 320..383
    parts, assembler = parts_of(replay, part_lines=256)
    first, second = parts
    assert first.complete and np.array_equal(first.image, img[:256])
    assert second.lines == 256 and not second.complete and second.gaps == ((64, 128),)
    assert not second.image[64:128].any() and (second.line_timestamps_ns[64:128] == 0).all()
    np.testing.assert_array_equal(second.image[:64], img[256:320])
    np.testing.assert_array_equal(second.image[128:], img[384:])
    assert assembler.stats.missing_blocks == 1 and assembler.stats.missing_lines == 64
    frame = second.to_frame("test")
    assert frame.meta["incomplete"] and frame.meta["gaps"] == [[64, 128]] and frame.frame_id == 2
    (gap,) = assembler.take_gaps()  # for the ledger: part 2 has its own (FAIL) row, so nothing is counted lost
    assert (gap.kind, gap.first_id, gap.last_id, gap.count) == (GapKind.LOST_IDS, 2, 1, 0)
    assert "lines 320 .. 383 (64 lines" in gap.detail and "part 2 keeps them as zero rows" in gap.detail
    assert gap.start_ns <= gap.end_ns and assembler.take_gaps() == []


def test_a_part_lost_entirely_is_counted_and_the_next_parts_keep_their_place():
    img = image(512)
    replay = LineScanReplay(img, block_lines=64, passes=2, drop_blocks={4, 5, 6, 7})  # all of part 2
    parts, assembler = parts_of(replay, part_lines=256)
    assert [p.index for p in parts] == [1, 3, 4] and all(p.complete for p in parts)
    assert [p.first_line for p in parts] == [0, 512, 768]
    assert assembler.stats.lost_parts == 1 and assembler.stats.missing_blocks == 4
    (gap,) = assembler.take_gaps()
    assert (gap.first_id, gap.last_id, gap.count) == (2, 2, 1) and "blocks 5 .. 8 lost" in gap.detail
    assert "part 2 lost entirely" in gap.detail


def test_gap_records_cover_the_part_ids_exactly_once():
    """Parts emitted plus the gap records' id ranges are 1 .. N, each once, whatever is lost."""
    img = image(512)
    # parts of 128 lines in blocks of 48: losses inside parts, across a part border, and whole parts
    replay = LineScanReplay(img, block_lines=48, passes=3, drop_blocks={2, 5, 6, 7, 8, 9, 13, 25, 26, 27, 28, 29},
                            line_counter=False)
    assembler = StripAssembler(part_lines=128, source="scan")
    parts = [p for block in replay for p in assembler.feed(block)] + assembler.flush()
    gaps = assembler.take_gaps()
    assert all(g.source == "scan" and g.last_id >= g.first_id - 1 for g in gaps)
    covered = [p.index for p in parts] + [i for g in gaps for i in range(g.first_id, g.last_id + 1)]
    assert sorted(covered) == list(range(1, max(covered) + 1)), covered
    assert sum(g.count for g in gaps) == assembler.stats.lost_parts >= 2
    assert len(gaps) == 4 and all(p.gaps or p.complete for p in parts)
    assert "lines 96 .. 143" in gaps[0].detail and "parts 1 and 2 keep them as zero rows" in gaps[0].detail


def test_an_incomplete_block_and_a_trigger_gap_are_gap_records():
    lines = np.full((10, 8), 7, np.uint8)
    assembler = StripAssembler(part_lines=30)
    for k in range(1, 4):
        assembler.feed(LineBlock(lines, k, k, meta={"incomplete": k == 2}))
    (gap,) = assembler.take_gaps()
    assert (gap.first_id, gap.last_id, gap.count) == (1, 0, 0) and "block 2 delivered incomplete" in gap.detail
    img = image(300)
    replay = LineScanReplay(img, block_lines=50, passes=2, gap_lines=50, drop_blocks={3}, line_counter=False)
    parts, assembler = parts_of(replay, mode="trigger")
    (gap,) = assembler.take_gaps()
    assert (gap.first_id, gap.last_id, gap.count) == (2, 1, 0), "the next part's id, an empty range: nothing counted"
    assert "a part may have passed among them unseen" in gap.detail and [p.index for p in parts] == [1, 2, 3]


def test_the_stream_ending_inside_a_part_yields_it_short_and_incomplete():
    parts, _ = parts_of(LineScanReplay(image(300), block_lines=64), part_lines=256)
    assert [p.lines for p in parts] == [256, 44]
    assert parts[1].end is EndReason.STREAM_END and not parts[1].complete and "44 of" in parts[1].issues[0]


def test_incomplete_duplicate_and_restarted_blocks():
    lines = np.full((10, 8), 7, np.uint8)
    assembler = StripAssembler(part_lines=30)
    assert assembler.feed(LineBlock(lines, 1, 1)) == []
    assert assembler.feed(LineBlock(lines, 1, 2)) == [] and assembler.stats.stale_blocks == 1  # a repeat
    assert assembler.feed(LineBlock(lines, 2, 3, meta={"incomplete": True})) == []
    (part,) = assembler.feed(LineBlock(lines, 3, 4))
    assert part.gaps == ((10, 20),) and not part.image[10:20].any() and assembler.stats.incomplete_blocks == 1
    assembler.feed(LineBlock(lines, 4, 5))
    (cut,) = assembler.feed(LineBlock(lines, 1, 6))  # counter went back: a reconnect
    assert cut.end is EndReason.RESTART and "restarted" in cut.issues[0] and cut.lines == 10
    assert assembler.stats.restarts == 1
    assembler.feed(LineBlock(lines, 2, 7))
    (after,) = assembler.feed(LineBlock(lines, 3, 8))
    assert after.complete and after.first_line == 0 and after.index == 3


def test_block_counter_wrap_is_not_a_restart():
    lines = np.ones((4, 8), np.uint8)
    assembler = StripAssembler(part_lines=12)
    assembler.feed(LineBlock(lines, 65534, 1))
    assembler.feed(LineBlock(lines, 65535, 2))
    (part,) = assembler.feed(LineBlock(lines, 1, 3))  # GigE Vision block ids skip 0 after a wrap
    assert part.complete and assembler.stats.restarts == 0


# ---------------------------------------------------------------------------------------------- trigger mode
@pytest.mark.parametrize("block_lines", [64, 100])
def test_trigger_parts_follow_the_part_present_signal(block_lines):
    img = image(300)
    replay = LineScanReplay(img, block_lines=block_lines, passes=3, gap_lines=50)
    parts, assembler = parts_of(replay, mode="trigger")
    assert [p.index for p in parts] == [1, 2, 3]
    for k, part in enumerate(parts):
        np.testing.assert_array_equal(part.image, img)
        assert part.complete and part.end is EndReason.TRIGGER and part.first_line == 50 + k * 350


def test_trigger_parts_never_go_on_across_missing_lines():
    img = image(300)
    # blocks of 50: block 3 = lines 150..199 (inside pass 1), block 7 = lines 350..399 (the gap before pass 2)
    replay = LineScanReplay(img, block_lines=50, passes=2, gap_lines=50, drop_blocks={3, 7}, line_counter=False)
    parts, assembler = parts_of(replay, mode="trigger")
    head, tail, second = parts
    np.testing.assert_array_equal(head.image, img[:100])
    assert head.end is EndReason.GAP and "50 lines went missing" in head.issues[0] and head.gaps == ()
    np.testing.assert_array_equal(tail.image, img[150:])
    assert tail.first_line == 200 and "started right after 50 missing" in tail.issues[0]
    assert tail.end is EndReason.GAP, "the signal was high when block 7 went missing"
    np.testing.assert_array_equal(second.image, img)
    assert "started right after 50 missing" in second.issues[0]
    assert not any(p.complete for p in parts) and assembler.stats.missing_blocks == 2


def test_a_signal_stuck_high_is_cut_at_max_part_lines_once():
    img = image(300)
    parts, _ = parts_of(LineScanReplay(img, block_lines=64, passes=2, gap_lines=20), mode="trigger",
                        max_part_lines=128)
    assert [(p.lines, p.end) for p in parts] == [(128, EndReason.TRUNCATED)] * 2
    assert all("max_part_lines" in p.issues[0] for p in parts)


def test_trigger_mode_without_a_signal_says_what_to_do():
    assembler = StripAssembler(mode="trigger")
    with pytest.raises(SourceError, match="part-present signal"):
        assembler.feed(LineBlock(np.zeros((4, 4), np.uint8), 1, 1))


def test_what_the_camera_source_reported_lost_is_in_the_gap_record():
    lines = np.full((10, 8), 7, np.uint8)
    assembler = StripAssembler(part_lines=20)
    assembler.feed(LineBlock(lines, 1, 1))
    outage = {"source_gaps": "camera lost, then reconnected", "source_outage": True}
    assembler.feed(LineBlock(lines, 5, 2, meta=outage))  # blocks 2..4 missing: part 2 lost, part 1 cut
    assembler.feed(LineBlock(lines, 6, 3, meta={"source_gaps": "camera block ids 9 .. 9 skipped"}))
    cut, unseen = assembler.take_gaps()
    assert (cut.kind, cut.first_id, cut.last_id, cut.count) == (GapKind.OUTAGE, 2, 2, 1)
    assert "blocks 2 .. 4 lost" in cut.detail and "(the source: camera lost, then reconnected)" in cut.detail
    assert "part 1 keeps them as zero rows" in cut.detail
    assert (unseen.kind, unseen.first_id, unseen.last_id, unseen.count) == (GapKind.LOST_IDS, 3, 2, 0)
    assert "camera block ids 9 .. 9 skipped" in unseen.detail


def test_malformed_blocks_say_what_is_wrong():
    with pytest.raises(ValueError, match="uint8 lines"):
        LineBlock(np.zeros((4, 4), np.float32), 1, 1)
    with pytest.raises(ValueError, match="one value per line"):
        LineBlock(np.zeros((4, 4), np.uint8), 1, 1, line_timestamps_ns=np.arange(3))
    bad_signal = LineBlock(np.zeros((4, 4), np.uint8), 7, 1, meta={"part_present": [True, False]})
    with pytest.raises(SourceError, match=r"line block 7: meta\['part_present'\] must be a bool or one bool per line"):
        StripAssembler(mode="trigger").feed(bad_signal)


# ------------------------------------------------------------------------------------------- late blocks
def test_a_delayed_block_is_listed_late_and_its_data_kept():
    img = image(512)
    replay = LineScanReplay(img, block_lines=64, line_rate_hz=100_000, delay_blocks={3: 0.12})
    parts, assembler = parts_of(replay, part_lines=512, late_tolerance_ms=60)
    (part,) = parts
    assert part.complete and np.array_equal(part.image, img)
    late_rows = [(a, b) for a, b, _ in part.late]
    assert (192, 256) in late_rows and all(ms > 60 for _, _, ms in part.late)
    assert assembler.stats.late_blocks == len(part.late) >= 1


def test_lateness_is_judged_from_the_line_rate_when_blocks_carry_no_line_times():
    period_ns = 50_000  # 20 kHz
    lines = np.zeros((100, 8), np.uint8)
    assembler = StripAssembler(part_lines=400, line_rate_hz=20_000, late_tolerance_ms=2)
    t0, parts = 10**9, []
    for k, extra_ms in enumerate([0, 0, 3, 0]):  # the third block arrives 3 ms late
        parts += assembler.feed(LineBlock(lines, k + 1, t0 + (k + 1) * 100 * period_ns + int(extra_ms * 1e6)))
    (part,) = parts
    assert part.late == ((200, 300, 3.0),) and part.complete and assembler.stats.late_blocks == 1
    # line times are estimated back from each block's delivery at the line period
    assert (np.diff(part.line_timestamps_ns[:200]) == period_ns).all()


# ------------------------------------------------------------------------------------------------- replay
def test_replay_keeps_the_line_rate_schedule():
    img = image(1000, 32)
    replay = LineScanReplay(img, block_lines=100, line_rate_hz=20_000)
    started = time.monotonic_ns()
    blocks = list(replay)
    assert [b.block_id for b in blocks] == list(range(1, 11))
    assert [b.first_line for b in blocks] == list(range(0, 1000, 100))
    stamps = np.concatenate([b.line_timestamps_ns for b in blocks])
    assert (np.diff(stamps) == 50_000).all(), "one line every 1/20 kHz"
    assert all(b.timestamp_ns >= b.line_timestamps_ns[-1] for b in blocks), "no block before its last line is due"
    assert blocks[-1].timestamp_ns - started >= 1000 * 50_000
    np.testing.assert_array_equal(np.concatenate([b.lines for b in blocks]), img)


def test_replay_as_fast_as_possible_and_bad_settings():
    blocks = list(LineScanReplay(image(100), block_lines=64))
    assert [b.n_lines for b in blocks] == [64, 36] and blocks[0].line_timestamps_ns is None
    with pytest.raises(SourceError, match="block_lines"):
        LineScanReplay(image(100), block_lines=0)
    with pytest.raises(SourceError, match="uint8"):
        LineScanReplay(np.zeros((10, 10), np.float32))


def test_a_part_still_arriving_when_the_source_stops_is_not_inspected_stopped():
    source = LineScanSource(LineScanReplay(image(512), block_lines=100), part_lines=256, name="scan")
    with source:
        frames = iter(source)
        first = next(frames)  # block 3 (lines 200 .. 299) ended part 1 and began part 2
        source.stop()
        assert list(frames) == []
    (entry,) = source.events  # no ledger sink: the entries wait in ``events``
    assert first.frame_id == 1 and isinstance(entry, NotInspected)
    assert (entry.frame_id, entry.reason, entry.source) == (2, NotInspectedReason.STOPPED, "scan")
    assert (first.identity.part_id, entry.identity.part_id) == ("1", "2")  # a part is known by its index
    assert "44 of its first 44 lines" in entry.detail


def test_open_source_streams_a_synthetic_screen_as_parts():
    source = open_source("linescan-replay", screen_size=(256, 128), screen_seed=3, block_lines=64, passes=2)
    with source:
        frames = list(source)
    assert [f.frame_id for f in frames] == [1, 2] and frames[0].image.shape == (256, 128)
    assert [f.identity.part_id for f in frames] == ["1", "2"]  # the part id of a line-scan part: its index
    assert frames[0].meta["complete"] and frames[1].meta["first_line"] == 256
    assert source.health().frames == 2 and source.health().lost_frames == 0
    with pytest.raises(SourceError, match="no setting"):
        open_source("linescan-replay", fps=3)


# ------------------------------------------------------------------------------------------ viky.cti blocks
class SlowBlocks:
    """Blocks of another block source, taken slowly (a host that falls behind the camera)."""

    def __init__(self, inner, pause_s: float) -> None:
        self.inner, self.pause_s, self.name = inner, pause_s, inner.name

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __iter__(self):
        for block in self.inner:
            time.sleep(self.pause_s)
            yield block


def take_parts(source: LineScanSource, n: int, deadline_s: float = 15.0) -> list:
    from tests.station.frames_util import take_frames

    frames = take_frames(source, n, deadline_s)
    assert len(frames) == n, f"only {len(frames)} of {n} parts within {deadline_s} s: {source.health()}"
    return frames


@camera
@needs_viky
def test_viky_frames_are_blocks_of_parts():
    from station.sources import GenICamSource

    camera_ = GenICamSource(width=128, height=100, frame_rate=200)  # viky: at least 100 lines a frame
    with LineScanSource(GenICamBlocks(camera_), part_lines=400) as source:
        frames = take_parts(source, 3)
        health = source.health()
    for frame in frames:
        assert frame.image.shape == (400, 128) and frame.meta["complete"] and frame.meta["blocks"] == 4
    assert [f.meta["first_line"] for f in frames] == [0, 400, 800]
    assert health.lost_frames == 0 and health.frames == 3


@camera
@needs_viky
def test_viky_frames_lost_by_a_slow_host_are_missing_blocks_in_the_part():
    from station.sources import GenICamSource

    camera_ = GenICamSource(width=128, height=100, frame_rate=100, num_buffers=2)
    with LineScanSource(SlowBlocks(GenICamBlocks(camera_), 0.03), part_lines=800) as source:
        frames = take_parts(source, 2)
        stats, health = source.stats, source.health()
    gaps = [g for f in frames for g in f.meta["gaps"]]
    assert gaps and all((b - a) % 100 == 0 for a, b in gaps), "whole blocks of 100 lines are missing"
    assert any(f.meta["incomplete"] for f in frames)
    for frame in frames:
        for a, b in frame.meta["gaps"]:
            assert not frame.image[a:b].any()
    assert stats.missing_blocks >= len(gaps) and health.lost_frames == stats.missing_blocks
    records = [e for e in source.events if isinstance(e, FrameGap)]  # what the ledger would get, in part ids
    assert records and all(g.source == source.name and "lost" in g.detail for g in records)
    assert any("the source: camera block ids" in g.detail for g in records), "the camera's own words ride along"
    assert not camera_.events, "the camera's gap records (in block ids) go to the line-scan source, not the ledger"


# ------------------------------------------------------------------------------------------------- recipes
SCAN = """
[product]
name = "screen"

[source]
kind = "linescan-replay"
{source}

[engine]
weights = "w"
"""


def test_shipped_line_scan_recipe_loads():
    recipe = load_recipe(shipped_recipe_path("screen_linescan"))
    s = recipe.source
    assert s.kind is SourceKind.LINESCAN_REPLAY and s.path is None
    assert (s.screen_size, s.block_lines, s.line_rate_hz, s.part_mode, s.part_lines) == \
        ((10240, 5120), 512, 20000.0, PartMode.FIXED, 10240)
    assert recipe.classifier.patch == 256 and recipe.as_dict()["source"]["part_mode"] == "fixed"


def test_line_scan_keys_and_defaults(tmp_path):
    s = load_recipe(write(tmp_path, SCAN.format(source=""))).source
    assert (s.block_lines, s.line_rate_hz, s.part_mode, s.part_lines, s.gap_lines, s.late_tolerance_ms) == \
        (512, 0.0, PartMode.FIXED, None, 0, 100.0)
    s = load_recipe(write(tmp_path, SCAN.format(source='part_mode = "trigger"\ngap_lines = 64\nblock_lines = 256\n'
                                                        'max_part_lines = 20000\nscreen_size = [1024, 512]'))).source
    assert (s.part_mode, s.gap_lines, s.block_lines, s.max_part_lines, s.screen_size) == \
        (PartMode.TRIGGER, 64, 256, 20000, (1024, 512))
    cam = load_recipe(write(tmp_path, SCAN.replace('"linescan-replay"', '"genicam"').format(
        source="line_scan = true\nblock_lines = 64\npart_lines = 1024\nline_rate_hz = 12800"))).source
    assert cam.line_scan and cam.part_lines == 1024 and cam.line_rate_hz == 12800.0


@pytest.mark.parametrize("kind, body, key, words", [
    ("replay", 'path = "x"\nblock_lines = 64', "block_lines", "only for line-scan sources"),
    ("replay", 'path = "x"\nline_scan = true', "line_scan", 'only for kind = "genicam"'),
    ("genicam", "part_lines = 64", "part_lines", "only for line-scan sources"),
    ("genicam", "line_scan = true", "part_lines", "missing"),
    ("genicam", 'line_scan = true\npart_lines = 9\npart_mode = "trigger"', "part_mode", "chunk data"),
    ("genicam", "line_scan = true\npart_lines = 9\nscreen_seed = 1", "screen_seed", "linescan-replay"),
    ("linescan-replay", 'part_mode = "trigger"', "gap_lines", "gap_lines >= 1"),
    ("linescan-replay", "gap_lines = 5", "gap_lines", "trigger"),
    ("linescan-replay", 'part_mode = "trigger"\ngap_lines = 5\npart_lines = 9', "part_lines", "fixed"),
    ("linescan-replay", 'part_mode = "sometimes"', "part_mode", "fixed"),
    ("linescan-replay", "screen_size = [100, 5120]", "screen_size", "128 to 65536"),
    ("linescan-replay", 'path = "a.png"\nscreen_seed = 2', "screen_seed", "synthetic"),
    ("linescan-replay", "line_rate_hz = -1", "line_rate_hz", ">= 0"),
    ("linescan-replay", "block_line = 64", "block_line", "did you mean 'block_lines'"),
])
def test_line_scan_mistakes_name_the_key(tmp_path, kind, body, key, words):
    text = SCAN.replace('"linescan-replay"', f'"{kind}"').format(source=body)
    with pytest.raises(RecipeError, match=rf"\[source\] {key}:.*{words}"):
        load_recipe(write(tmp_path, text))
