"""GenICamSource against the simulated GenTL producer viky.cti (real harvesters, no mocks).

viky simulates three cameras (VikyTL_DEV_red/green/blue, serials "0"/"1"/"2"), RGBa8 or Mono8, 100..800
pixels, 1..200 fps, and drops frames (gaps in block ids) when no buffer is free.
"""
from __future__ import annotations

import importlib.util
import logging
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from inspection_core.records import CameraState, Frame
from tests.station.frames_util import take_frames

from station.errors import CameraLostError, SourceError
from station.sources import GenICamSource
from station.sources.genicam import frame_gap


def _viky() -> tuple[Path | None, str]:
    """Path of viky.cti, or why camera tests cannot run (found without importing harvesters)."""
    for package in ("harvesters", "genicam"):
        if importlib.util.find_spec(package) is None:
            return None, f"`{package}` is not installed (pip install harvesters genicam)"
    spec = importlib.util.find_spec("genicam")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        cti = Path(location) / "viky.cti"
        if cti.is_file():
            return cti, ""
    return None, "the genicam package has no viky.cti (simulated GenTL producer)"


VIKY, WHY_NOT = _viky()
camera = pytest.mark.camera
needs_viky = pytest.mark.skipif(VIKY is None, reason=f"camera tests need viky.cti: {WHY_NOT}")


def _take(source: GenICamSource, n: int, deadline_s: float = 10.0) -> list[Frame]:
    """``n`` frames; a timer stops the source so a broken camera cannot hang the test."""
    frames = take_frames(source, n, deadline_s)
    assert len(frames) == n, f"only {len(frames)} of {n} frames within {deadline_s} s: {source.health()}"
    return frames


def _wait_for(condition, timeout_s: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


# -- no camera needed -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("previous", "current", "lost"),
    [(7, 8, 0), (7, 10, 2), (8, 8, 0), (65535, 1, 0), (65534, 2, 2), (2**32 - 1, 1, 0), (2**64 - 3, 1, 2),
     (500, 1, 0), (70_000, 1, 0)],
)
def test_frame_gap_handles_wrap_around_and_restarts(previous: int, current: int, lost: int) -> None:
    assert frame_gap(previous, current) == lost


def test_bad_colour_mode_is_a_source_error() -> None:
    with pytest.raises(SourceError, match="colour must be one of"):
        GenICamSource(colour="sepia")


# -- against viky.cti -------------------------------------------------------------------------------
@camera
@needs_viky
def test_frames_have_configured_size_and_mono8_format() -> None:
    handler = signal.getsignal(signal.SIGINT)
    with GenICamSource(device=0, width=320, height=240, frame_rate=50) as source:
        frames = _take(source, 5)
        assert signal.getsignal(signal.SIGINT) is handler, "harvesters must not keep its own Ctrl+C handler"
    for frame in frames:
        assert frame.image.shape == (240, 320) and frame.image.dtype == np.uint8
        assert frame.image.flags.c_contiguous and frame.image.flags.writeable  # our copy, not the read-only driver view
        assert frame.source == "genicam:VikyTL_DEV_red"
        assert frame.meta["pixel_format"] == "Mono8" and frame.meta["incomplete"] is False
    # frame_id is the camera's block id: rising, and any frame the camera dropped (no free buffer while this
    # machine stalled) is a gap that health() counts, never a silent renumbering
    ids = [f.frame_id for f in frames]
    assert all(b > a for a, b in zip(ids, ids[1:])), ids
    assert source.health().lost_frames == ids[-1] - ids[0] - (len(ids) - 1)
    assert all(b.timestamp_ns > a.timestamp_ns for a, b in zip(frames, frames[1:]))
    assert source.health().state is CameraState.STOPPED


@camera
@needs_viky
@pytest.mark.parametrize(("colour", "shape"), [("auto", (100, 120, 3)), ("grey", (100, 120))])
def test_rgba8_is_converted(colour: str, shape: tuple[int, ...]) -> None:
    with GenICamSource(pixel_format="RGBa8", width=120, height=100, frame_rate=100, colour=colour) as source:
        (frame,) = _take(source, 1)
    assert frame.image.shape == shape and frame.meta["pixel_format"] == "RGBa8"


@camera
@needs_viky
@pytest.mark.parametrize("fps", [20, 50])
def test_received_rate_is_the_camera_rate(fps: int) -> None:
    """Measured over ~1.5 s on host timestamps, skipping the first frames of the stream (±15 %)."""
    with GenICamSource(frame_rate=fps, width=200, height=200) as source:
        frames = _take(source, int(fps * 1.5) + 3)[3:]
    rate = (len(frames) - 1) / ((frames[-1].timestamp_ns - frames[0].timestamp_ns) / 1e9)
    assert fps * 0.85 <= rate <= fps * 1.15, rate


@camera
@needs_viky
def test_no_lost_frames_in_a_normal_run() -> None:
    with GenICamSource(frame_rate=50) as source:
        frames = _take(source, 100)
        health = source.health()
    assert health.lost_frames == 0 and health.incomplete_frames == 0 and health.frames == 100
    ids = [f.frame_id for f in frames]
    assert ids == list(range(ids[0], ids[0] + 100))


@camera
@needs_viky
def test_a_slow_consumer_shows_up_as_lost_frames() -> None:
    """viky drops frames when no buffer is free; the gaps in block ids are what health() counts."""
    with GenICamSource(frame_rate=100, num_buffers=2) as source:
        frames = []
        for frame in source:
            frames.append(frame)
            time.sleep(0.03)  # about 3 frame periods
            if len(frames) == 12:
                break
        health = source.health()
    gaps = sum(b.frame_id - a.frame_id - 1 for a, b in zip(frames, frames[1:]))
    assert gaps > 0 and health.lost_frames == gaps
    # each gap is a ledger entry with the ids it skipped
    assert sum(e.count for e in source.events) == gaps and all(e.kind.value == "lost_ids" for e in source.events)
    ids = {f.frame_id for f in frames}
    for gap in source.events:
        assert not ids & set(range(gap.first_id, gap.last_id + 1))
        assert gap.first_id - 1 in ids and gap.last_id + 1 in ids


@camera
@needs_viky
@pytest.mark.parametrize(("device", "expected"), [("2", "VikyTL_DEV_blue"), ("VikyTL_DEV_green", "VikyTL_DEV_green"),
                                                  (1, "VikyTL_DEV_green")])
def test_device_selection_by_serial_id_or_index(device: int | str, expected: str) -> None:
    with GenICamSource(device=device, frame_rate=100) as source:
        (frame,) = _take(source, 1)
    assert source.device_id == expected and frame.source == f"genicam:{expected}"
    assert frame.meta["device"] == expected


@camera
@needs_viky
def test_unknown_device_lists_the_cameras() -> None:
    with pytest.raises(SourceError, match=r"no camera with serial number or id '9'.*VikyTL_DEV_red \(serial 0\)"):
        GenICamSource(device="9").open()
    with pytest.raises(SourceError, match="index 7 is out of range"):
        GenICamSource(device=7).open()


@camera
@needs_viky
def test_invalid_settings_name_the_node_and_allowed_values() -> None:
    with pytest.raises(SourceError, match=r"PixelFormat='BayerRG8'.*allowed: one of RGBa8, Mono8"):
        GenICamSource(pixel_format="BayerRG8").open()
    with pytest.raises(SourceError, match=r"Width=5000.*allowed: 100 \.\. 800"):
        GenICamSource(width=5000).open()


@camera
@needs_viky
def test_a_setting_the_camera_lacks_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="station.sources")
    with GenICamSource(exposure_us=500, frame_rate=100) as source:
        _take(source, 2)
    assert any("no ExposureTime node" in r.getMessage() for r in caplog.records)


@camera
@needs_viky
def test_a_chunk_feature_gives_each_frame_its_part_id() -> None:
    """[source] part_id read inside each frame's buffer (viky's only chunk, ChunkNrBounces, which it leaves at 0), and
    a misspelt feature refused when the camera opens."""
    nodes = [("ChunkModeActive", True), ("ChunkSelector", "NrBounces"), ("ChunkEnable", True)]
    with GenICamSource(frame_rate=100, nodes=nodes, part_id="ChunkNrBounces") as source:
        frames = _take(source, 3)
    assert [f.identity.part_id for f in frames] == ["0", "0", "0"]
    with GenICamSource(frame_rate=100) as source:
        assert _take(source, 1)[0].identity.part_id is None  # none configured: the PLC's, or none
    with pytest.raises(SourceError, match=r"part_id = 'ChunkNrBounce': camera VikyTL_DEV_red has no feature .*did "
                                          r"you mean ChunkNrBounces"):
        GenICamSource(part_id="ChunkNrBounce").open()


@camera
@needs_viky
def test_missing_cti_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"not found.*pip install genicam.*--source genicam:/path/to/producer.cti"):
        GenICamSource(cti=tmp_path / "missing.cti").open()
    (tmp_path / "broken.cti").write_bytes(b"not a shared library")
    source = GenICamSource(cti=tmp_path / "broken.cti")
    with pytest.raises(SourceError, match=r"no camera found by the GenTL producer .*check the camera cable and power"):
        source.open()
    assert source.health().state is CameraState.STOPPED and "no camera found" in (source.health().last_error or "")


@camera
@needs_viky
@pytest.mark.parametrize("kind", ["device", "stream"])
def test_reconnects_after_a_disconnect_without_ending_iteration(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    """``device``: the device handle vanishes (fetch raises); ``stream``: frames stop (fetch times out)."""
    caplog.set_level(logging.INFO, logger="station.sources")
    source = GenICamSource(frame_rate=50, timeout_s=0.3, width=160, height=120)
    frames: list[Frame] = []
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            frames.extend(source)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    with source:
        worker = threading.Thread(target=consume, daemon=True)
        worker.start()
        assert _wait_for(lambda: len(frames) >= 10, 5.0)
        source._simulate_disconnect(kind)
        count_at_disconnect = len(frames)
        assert _wait_for(lambda: source.health().reconnects == 1 and len(frames) >= count_at_disconnect + 10, 8.0), \
            source.health()
        assert worker.is_alive(), "iteration must go on across a reconnect"
        health = source.health()
        source.stop()
        worker.join(2.0)
    assert not errors and not worker.is_alive()
    assert health.state is CameraState.CONNECTED and health.reconnects == 1 and health.last_error
    transitions = [r.getMessage() for r in caplog.records if r.name == "station.sources.base"]
    assert any("connected -> lost" in m for m in transitions)
    assert any("lost -> reconnecting" in m for m in transitions)
    assert any("reconnecting -> connected" in m for m in transitions)
    blocks = [f.meta["block_id"] for f in frames]  # the reopened stream counts its blocks from the start again
    assert sum(b < a for a, b in zip(blocks, blocks[1:])) == 1, blocks
    # ... but frame ids keep counting across the reconnect, the outage's estimated frames skipped
    ids = [f.frame_id for f in frames]
    assert all(b > a for a, b in zip(ids, ids[1:])), ids
    assert frames[-1].meta["sequence"] == len(frames)
    (outage,) = [e for e in source.events if e.kind.value == "outage"]
    after = frames[ids.index(outage.last_id + 1)] if outage.last_id + 1 in ids else None
    assert after is not None and after.meta["block_id"] < frames[count_at_disconnect - 1].meta["block_id"]
    assert outage.first_id == outage.last_id - outage.count + 1 and outage.end_ns > outage.start_ns
    assert outage.count == round((outage.end_ns - outage.start_ns) / 1e9 * 50) - 1  # span x 50 frames/s
    lost_ids = sum(e.count for e in source.events)
    assert ids[-1] - ids[0] + 1 == len(ids) + lost_ids, "ids skip exactly the frames reported lost"


@camera
@needs_viky
def test_without_reconnect_a_lost_camera_raises() -> None:
    with GenICamSource(frame_rate=100, reconnect=False) as source:
        iterator = iter(source)
        next(iterator)
        source._simulate_disconnect("device")
        with pytest.raises(CameraLostError, match="enable reconnect"):
            for _ in iterator:
                pass
        assert source.health().state is CameraState.LOST


@camera
@needs_viky
def test_stop_from_another_thread_ends_iteration_promptly() -> None:
    source = GenICamSource(frame_rate=5, timeout_s=2.0)
    frames: list[Frame] = []
    with source:
        worker = threading.Thread(target=lambda: frames.extend(source), daemon=True)
        worker.start()
        assert _wait_for(lambda: len(frames) >= 1, 5.0)
        stopped_at = time.monotonic()
        source.stop()
        worker.join(2.0)
        assert not worker.is_alive()
        assert time.monotonic() - stopped_at < 1.0
    assert source.health().state is CameraState.STOPPED


@camera
@needs_viky
def test_failed_reconnects_back_off_and_stop_still_ends_iteration() -> None:
    """A reconnect that keeps failing (here: the camera rejects a setting) retries with back-off, reports
    why in health(), and stop() still ends the iteration at once."""
    source = GenICamSource(frame_rate=50, max_backoff_s=0.5)
    frames: list[Frame] = []
    with source:
        worker = threading.Thread(target=lambda: frames.extend(source), daemon=True)
        worker.start()
        assert _wait_for(lambda: len(frames) >= 3, 5.0)
        source.pixel_format = "NoSuchFormat"  # every reconnect attempt now fails in _apply_settings
        source._simulate_disconnect("device")
        assert _wait_for(lambda: "reconnect failed" in (source.health().last_error or ""), 5.0)
        time.sleep(0.8)  # a few attempts: 0.25 s, then 0.5 s (capped)
        health = source.health()
        stopped_at = time.monotonic()
        source.stop()
        worker.join(2.0)
        assert not worker.is_alive() and time.monotonic() - stopped_at < 0.5
    assert health.state in (CameraState.LOST, CameraState.RECONNECTING) and health.reconnects == 0
    assert "PixelFormat='NoSuchFormat'" in (health.last_error or "")


@camera
@needs_viky
def test_second_source_on_the_same_producer_is_refused_clearly() -> None:
    with GenICamSource(device=0) as first:
        with pytest.raises(SourceError, match=r"already open in this process by genicam:VikyTL_DEV_red"):
            GenICamSource(device=1).open()
        assert first.health().state is CameraState.CONNECTED
    with GenICamSource(device=1) as second:  # free again once the first is closed
        _take(second, 1)


# -- camera control: [source.nodes], [source.trigger], deep formats, time stamps (viky.cti as far as it goes) --------
def test_a_node_set_by_a_recipe_key_is_refused_as_a_node() -> None:
    with pytest.raises(SourceError, match=r"PixelFormat is set by \[source\] pixel_format"):
        GenICamSource(nodes={"PixelFormat": "Mono8"})


def test_a_software_trigger_needs_an_open_triggered_source() -> None:
    from station.recipe import TriggerConfig

    with pytest.raises(SourceError, match=r"has no software trigger \(no \[source.trigger\]\)"):
        GenICamSource().fire_trigger()
    with pytest.raises(SourceError, match="is not streaming"):
        GenICamSource(trigger=TriggerConfig(source="Software")).fire_trigger()


@camera
@needs_viky
def test_recipe_nodes_are_written_in_order_before_streaming() -> None:
    nodes = {"BouncingBallSize": 30, "ChunkModeActive": True, "ChunkSelector": "Scan3dData", "ChunkEnable": True}
    with GenICamSource(frame_rate=100, nodes=nodes) as source:
        frames = _take(source, 3)
        assert source.node_value("BouncingBallSize") == 30 and source.node_value("ChunkSelector") == "Scan3dData"
    assert len(frames) == 3


@camera
@needs_viky
def test_nodes_are_never_written_while_streaming() -> None:
    source = GenICamSource(frame_rate=100, nodes={"BouncingBallSize": 30})
    with source:
        _take(source, 1)
        with pytest.raises(SourceError, match=r"is streaming: BouncingBallSize = 12 is not written while streaming; "
                                              r"stop the line"):
            source.set_node("BouncingBallSize", 12)
        assert source.node_value("BouncingBallSize") == 30  # the camera was not touched
        assert source.nodes == [("BouncingBallSize", 30)]
    source.set_node("BouncingBallSize", 12)  # closed: taken for the next open
    with source:
        assert source.node_value("BouncingBallSize") == 12 and len(_take(source, 1)) == 1


@camera
@needs_viky
@pytest.mark.parametrize(("nodes", "message"), [
    ({"BouncingBallSise": 3}, r"\[source.nodes\] BouncingBallSise: camera VikyTL_DEV_red has no feature "
                              r"'BouncingBallSise'; did you mean BouncingBallSize\?"),
    ({"BouncingBallSize": 99}, r"refuses BouncingBallSize = 99 \(out of range\); allowed: 1 .. 40"),
    ({"ChunkSelector": "Timestamp"}, r"refuses ChunkSelector = 'Timestamp' \(not one of its entries\); allowed: one "
                                     r"of NrBounces, Scan3dData"),
    ({"PayloadSize": 5}, r"PayloadSize is read-only on camera VikyTL_DEV_red"),
    ({"AcquisitionStart": True}, r"AcquisitionStart is a command on camera VikyTL_DEV_red, not a setting"),
])
def test_a_bad_node_names_the_node_and_its_allowed_values(nodes: dict, message: str) -> None:
    source = GenICamSource(nodes=nodes)
    with pytest.raises(SourceError, match=message):
        source.open()
    assert source.health().state is CameraState.STOPPED and not source.is_open


@camera
@needs_viky
def test_viky_has_no_trigger_so_a_trigger_table_is_refused_and_off_runs_free() -> None:
    from station.recipe import TriggerConfig, TriggerMode

    with pytest.raises(SourceError, match=r"VikyTL_DEV_red has no TriggerMode feature, so it cannot be triggered"):
        GenICamSource(trigger=TriggerConfig(source="Software")).open()
    with GenICamSource(frame_rate=100, trigger=TriggerConfig(mode=TriggerMode.OFF)) as source:
        assert len(_take(source, 2)) == 2 and not source.triggered
        with pytest.raises(SourceError, match=r'mode = "Off", source = "Software"'):
            source.fire_trigger()


@camera
@needs_viky
@pytest.mark.parametrize("fmt", ["Mono8", "RGBa8"])
def test_frames_carry_their_bit_depth_and_no_camera_time_where_the_camera_gives_none(fmt: str) -> None:
    """viky.cti gives no buffer time stamps (GenTL: not available) and no ChunkTimestamp: the host time only."""
    with GenICamSource(pixel_format=fmt, frame_rate=100) as source:
        frames = _take(source, 3)
    assert {(f.bit_depth, f.camera_timestamp_ns, f.meta["camera_timestamp"]) for f in frames} == {(8, None, None)}
    assert all(f.timestamp_ns > 0 for f in frames)


@camera
@needs_viky
@pytest.mark.parametrize("fmt", ["Mono12", "Mono12p", "Mono16"])
def test_viky_offers_no_deep_formats_and_says_which_it_has(fmt: str) -> None:
    with pytest.raises(SourceError, match=rf"PixelFormat='{fmt}'.*allowed: one of RGBa8, Mono8"):
        GenICamSource(pixel_format=fmt).open()
