"""ReplaySource and open_source against real image files written with OpenCV (no camera needed)."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspection_core.records import CameraState, Frame
from tests.station.frames_util import take_frames

from station.errors import SourceError
from station.sources import GenICamSource, ReplaySource, open_source


def _write(path: Path, value: int, shape: tuple[int, ...] = (24, 32)) -> Path:
    image = np.full(shape, value, np.uint8)
    assert cv2.imwrite(str(path), image), path
    return path


@pytest.fixture()
def image_dir(tmp_path: Path) -> Path:
    """Five good images (mixed formats, unpadded numbers), a corrupt jpg, an empty png, a mask and a text file."""
    folder = tmp_path / "run"
    folder.mkdir()
    _write(folder / "img2.png", 20)
    _write(folder / "img10.png", 100)
    _write(folder / "img1.jpg", 10)
    _write(folder / "img3.bmp", 30)
    _write(folder / "img4.tif", 40)
    (folder / "img5.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 3)
    (folder / "img6.png").write_bytes(b"")
    _write(folder / "img7_mask.png", 255)
    (folder / "notes.txt").write_text("not an image")
    return folder


_take = take_frames


def test_frames_in_natural_order_and_corrupt_files_skipped(image_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="station.sources")
    with ReplaySource(image_dir) as source:
        frames = list(source)
        health = source.health()
    names = [f.file for f in frames]
    assert names == ["img1.jpg", "img2.png", "img3.bmp", "img4.tif", "img7_mask.png", "img10.png"]
    # an unreadable file is a part too: it takes its frame id and is reported to the ledger as NOT_INSPECTED
    assert [f.frame_id for f in frames] == [1, 2, 3, 4, 7, 8]
    assert [(e.frame_id, e.file, e.reason.value) for e in source.events] == [
        (5, "img5.jpg", "unreadable"), (6, "img6.png", "unreadable")]
    assert "not a decodable image" in source.events[0].detail and source.events[1].detail == "empty file"
    assert [int(f.image[0, 0]) for f in frames if f.file != "img1.jpg"] == [20, 30, 40, 255, 100]
    for frame in frames:
        assert frame.image.dtype == np.uint8 and frame.image.shape == (24, 32)
        assert frame.source == f"replay:{image_dir}"
        assert frame.meta["path"] == str(image_dir / frame.meta["file"])
    stamps = [f.timestamp_ns for f in frames]
    assert stamps == sorted(stamps) and abs(stamps[0] - time.monotonic_ns()) < 10e9
    assert health.skipped_files == 2 and health.frames == 6
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert str(image_dir / "img5.jpg") in warned and str(image_dir / "img6.png") in warned
    assert "not a decodable image" in warned and "empty file" in warned
    assert "notes.txt" not in warned


def test_pattern_leaves_out_masks(image_dir: Path) -> None:
    with ReplaySource(image_dir, pattern="img[0-9].*") as source:
        names = [f.file for f in source]
    assert "img7_mask.png" not in names and "img10.png" not in names and names[0] == "img1.jpg"


def test_colour_frames_are_rgb(tmp_path: Path) -> None:
    bgr_red = np.zeros((8, 8, 3), np.uint8)
    bgr_red[..., 2] = 255
    cv2.imwrite(str(tmp_path / "red.png"), bgr_red)
    with ReplaySource(tmp_path, grey=False) as source:
        (frame,) = list(source)
    assert frame.image.shape == (8, 8, 3) and frame.image.dtype == np.uint8
    assert tuple(frame.image[0, 0]) == (255, 0, 0)


def test_grey_converts_colour_files(tmp_path: Path) -> None:
    _write(tmp_path / "colour.png", 90, shape=(6, 9, 3))
    with ReplaySource(tmp_path) as source:
        (frame,) = list(source)
    assert frame.image.shape == (6, 9) and int(frame.image[0, 0]) == 90


def test_file_list_keeps_given_order_and_odd_paths_work(tmp_path: Path) -> None:
    odd = tmp_path / "Prüfung #1 (ü)"
    odd.mkdir()
    files = [_write(odd / "b ß.png", 2), _write(odd / "a ü.png", 1)]
    with ReplaySource(files) as source:
        assert [int(f.image[0, 0]) for f in source] == [2, 1]


def test_loop_repeats_and_counts_skips_once(image_dir: Path) -> None:
    with ReplaySource(image_dir, loop=True, pattern="img[1-5].*") as source:
        frames = _take(source, 10)
        health = source.health()
    assert [f.frame_id for f in frames] == [1, 2, 3, 4, 6, 7, 8, 9, 11, 12]
    assert [f.file for f in frames[:8]] == ["img1.jpg", "img2.png", "img3.bmp", "img4.tif"] * 2
    assert health.skipped_files == 1  # img5.jpg: warned and counted once, not read again...
    assert [(e.frame_id, e.file) for e in source.events] == [(5, "img5.jpg"), (10, "img5.jpg")]  # ...a row a pass


def test_16_bit_files_are_scaled_by_their_bit_depth_not_truncated(tmp_path: Path) -> None:
    eight = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
    assert cv2.imwrite(str(tmp_path / "a12.png"), eight.astype(np.uint16) * 16)  # 12-bit data in a 16-bit PNG
    with ReplaySource(tmp_path, bit_depth=12) as source:
        (frame,) = list(source)
    assert frame.image.dtype == np.uint8 and np.array_equal(frame.image, eight)
    with ReplaySource(tmp_path) as source:  # read as full 16-bit data it is dark, but scaled, not wrapped
        (dark,) = list(source)
    assert np.array_equal(dark.image, (eight.astype(np.uint16) * 16 >> 8).astype(np.uint8))


def test_pacing_keeps_the_frame_rate(image_dir: Path) -> None:
    """20 fps over ~1 s; generous tolerance for a loaded 2-core machine."""
    with ReplaySource(image_dir, loop=True, fps=20) as source:
        start = time.monotonic()
        frames = _take(source, 21)
        elapsed = time.monotonic() - start
    rate = (len(frames) - 1) / ((frames[-1].timestamp_ns - frames[0].timestamp_ns) / 1e9)
    assert 20 * 0.75 <= rate <= 20 * 1.25, rate
    assert 1.0 * 0.75 <= elapsed <= 1.0 * 1.25 + 0.2, elapsed


def test_pacing_does_not_burst_after_a_stall(image_dir: Path) -> None:
    with ReplaySource(image_dir, loop=True, fps=50) as source:
        it = iter(source)
        next(it)
        time.sleep(0.3)  # the consumer stalls for 15 frame periods
        next(it)  # due long ago: comes at once
        start = time.monotonic()
        next(it)
        next(it)
        assert time.monotonic() - start >= 0.02, "frames after a stall must be paced, not burst"


def test_stop_from_another_thread_ends_iteration(image_dir: Path) -> None:
    source = ReplaySource(image_dir, loop=True, fps=2)
    frames: list[Frame] = []
    with source:
        worker = threading.Thread(target=lambda: frames.extend(source), daemon=True)
        worker.start()
        time.sleep(0.2)
        stopped_at = time.monotonic()
        source.stop()
        worker.join(2.0)
        assert not worker.is_alive()
        assert time.monotonic() - stopped_at < 0.5
    assert source.health().state is CameraState.STOPPED
    assert len(frames) >= 1


def test_missing_folder_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist") as info:
        ReplaySource(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value) and "replay:" in str(info.value)


def test_folder_without_images_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(SourceError, match="no image files"):
        ReplaySource(tmp_path)
    _write(tmp_path / "a.png", 1)
    with pytest.raises(SourceError, match=r"matching '\*\.jpg'"):
        ReplaySource(tmp_path, pattern="*.jpg")


def test_missing_file_in_list(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        ReplaySource([_write(tmp_path / "a.png", 1), tmp_path / "gone.png"])


def test_only_corrupt_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with ReplaySource(tmp_path, loop=True) as source:
        with pytest.raises(SourceError, match="none of the 1 files"):
            list(source)
        assert source.health().skipped_files == 1


def test_health_states(image_dir: Path) -> None:
    source = ReplaySource(image_dir)
    with source:
        assert source.health().state is CameraState.CONNECTED
    assert source.health().state is CameraState.STOPPED


def test_open_source_replay_specs(image_dir: Path) -> None:
    source = open_source(f"replay:{image_dir}", fps=10, loop=True)
    assert isinstance(source, ReplaySource) and source.fps == 10 and source.loop
    listed = open_source(f"replay:{image_dir / 'img2.png'},{image_dir / 'img1.jpg'}")
    assert [p.name for p in listed.files] == ["img2.png", "img1.jpg"]  # type: ignore[attr-defined]


def test_open_source_genicam_specs(tmp_path: Path) -> None:
    default = open_source("genicam", frame_rate=50)
    assert isinstance(default, GenICamSource) and default.cti is None and default.frame_rate == 50
    custom = open_source(f"genicam:{tmp_path / 'vendor.cti'}", device="1234")
    assert isinstance(custom, GenICamSource) and custom.cti == tmp_path / "vendor.cti"


def test_open_source_explains_bad_specs(image_dir: Path) -> None:
    with pytest.raises(SourceError, match="genicam:/path/to/producer.cti"):
        open_source("usb3:cam0")
    with pytest.raises(SourceError, match="did you mean 'replay:"):
        open_source(str(image_dir))
    with pytest.raises(SourceError, match="has no setting fsp.*known settings: .*fps"):
        open_source(f"replay:{image_dir}", fsp=10)
    with pytest.raises(SourceError, match="does not exist"):
        open_source("replay:/no/such/folder")
