"""Camera control from the recipe: [source.trigger], [source.nodes], deep and packed mono formats, the camera's time
stamp (docs/INTEGRATION.md, camera control).

viky.cti has no trigger features, no time stamps and only Mono8/RGBa8 (see tests/station/test_genicam_source.py for
what is tested on it). What it cannot show is tested here on real GenApi and harvesters code: the node-map functions
on a GenApi node map loaded from an SFNC-style device description (the form every camera ships; GenApi itself
checks types, ranges and access), and the packed formats through harvesters' own decoders.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from station.app import build_source
from station.errors import SourceError
from station.recipe import TriggerConfig, TriggerMode, load_recipe
from station.sources.genicam import _DEEP_MONO, deep_mono_to_8bit
from station.sources.genicam_nodes import (CameraClock, PartIdReader, apply_trigger, fire_software_trigger, ticks_to_ns,
                                           write_feature)

genapi = pytest.importorskip("genicam.genapi", reason="the genicam package is needed for GenApi node maps")
pfnc = pytest.importorskip("harvesters.util.pfnc", reason="harvesters decodes the packed pixel formats")

# A camera's device description as SFNC names its trigger and chunk features; values live in the nodes themselves.
DEVICE_XML = """<?xml version="1.0" encoding="utf-8"?>
<RegisterDescription ModelName="SFNCTriggerCamera" VendorName="station-tests" ToolTip="SFNC trigger and chunk features"
 StandardNameSpace="None" SchemaMajorVersion="1" SchemaMinorVersion="1" SchemaSubMinorVersion="0" MajorVersion="1"
 MinorVersion="0" SubMinorVersion="0" ProductGuid="3F2504E0-4F89-11D3-9A0C-0305E82C3301"
 VersionGuid="3F2504E0-4F89-11D3-9A0C-0305E82C3302" xmlns="http://www.genicam.org/GenApi/Version_1_1">
  <Category Name="Root">
    <pFeature>TriggerSelector</pFeature><pFeature>TriggerMode</pFeature><pFeature>TriggerSource</pFeature>
    <pFeature>TriggerActivation</pFeature><pFeature>TriggerDelay</pFeature><pFeature>TriggerSoftware</pFeature>
    <pFeature>Gain</pFeature><pFeature>PayloadSize</pFeature><pFeature>ChunkModeActive</pFeature>
    <pFeature>ChunkEnable</pFeature><pFeature>ChunkTimestamp</pFeature><pFeature>GevTimestampTickFrequency</pFeature>
    <pFeature>DeviceUserID</pFeature>
  </Category>
  <Enumeration Name="TriggerSelector"><EnumEntry Name="AcquisitionStart"><Value>0</Value></EnumEntry>
    <EnumEntry Name="FrameStart"><Value>1</Value></EnumEntry><Value>0</Value></Enumeration>
  <Enumeration Name="TriggerMode"><EnumEntry Name="Off"><Value>0</Value></EnumEntry>
    <EnumEntry Name="On"><Value>1</Value></EnumEntry><Value>0</Value></Enumeration>
  <Enumeration Name="TriggerSource"><EnumEntry Name="Software"><Value>0</Value></EnumEntry>
    <EnumEntry Name="Line1"><Value>1</Value></EnumEntry><EnumEntry Name="Line2"><Value>2</Value></EnumEntry>
    <Value>1</Value></Enumeration>
  <Enumeration Name="TriggerActivation"><EnumEntry Name="RisingEdge"><Value>0</Value></EnumEntry>
    <EnumEntry Name="FallingEdge"><Value>1</Value></EnumEntry><Value>1</Value></Enumeration>
  <Float Name="TriggerDelay"><Value>0</Value><Min>0</Min><Max>1000000</Max><Unit>us</Unit></Float>
  <Command Name="TriggerSoftware"><pValue>TriggerSoftwareCount</pValue><CommandValue>1</CommandValue></Command>
  <Integer Name="TriggerSoftwareCount"><Value>0</Value></Integer>
  <Integer Name="Gain"><Value>0</Value><Min>0</Min><Max>48</Max><Inc>2</Inc></Integer>
  <Integer Name="PayloadSize"><ImposedAccessMode>RO</ImposedAccessMode><Value>640000</Value></Integer>
  <Boolean Name="ChunkModeActive"><Value>0</Value><OnValue>1</OnValue><OffValue>0</OffValue></Boolean>
  <Boolean Name="ChunkEnable"><pIsAvailable>ChunkModeActive</pIsAvailable><Value>0</Value><OnValue>1</OnValue>
    <OffValue>0</OffValue></Boolean>
  <Integer Name="ChunkTimestamp"><ImposedAccessMode>RO</ImposedAccessMode><Value>250000000</Value></Integer>
  <Integer Name="GevTimestampTickFrequency"><ImposedAccessMode>RO</ImposedAccessMode><Value>125000000</Value></Integer>
  <String Name="DeviceUserID"><Value>cam</Value></String>
</RegisterDescription>
"""
NO_TRIGGER_XML = DEVICE_XML.replace("TriggerMode", "ExposureMode")  # a camera that cannot be triggered


def node_map(xml: str = DEVICE_XML):  # type: ignore[no-untyped-def]
    nm = genapi.NodeMap()
    nm.load_xml_from_string(xml)
    return nm


# -- [source.trigger] ------------------------------------------------------------------------------------------------
def test_a_hardware_trigger_is_set_up_selector_first_and_mode_last() -> None:
    nm = node_map()
    apply_trigger(nm, TriggerConfig(source="Line2", activation="RisingEdge", delay_us=150.0), device="cam-A")
    assert (nm.TriggerSelector.value, nm.TriggerSource.value, nm.TriggerActivation.value) == (
        "FrameStart", "Line2", "RisingEdge")
    assert nm.TriggerDelay.value == 150.0 and nm.TriggerMode.value == "On"


def test_a_software_trigger_executes_trigger_software() -> None:
    nm = node_map()
    apply_trigger(nm, TriggerConfig(mode=TriggerMode.ON, source="Software"), device="cam-A")
    assert (nm.TriggerSource.value, nm.TriggerMode.value, nm.TriggerSoftwareCount.value) == ("Software", "On", 0)
    fire_software_trigger(nm, device="cam-A")
    assert nm.TriggerSoftwareCount.value == 1  # the command wrote its CommandValue: the camera got it


def test_trigger_off_leaves_the_source_alone_and_frees_the_camera() -> None:
    nm = node_map()
    nm.TriggerMode.value = "On"
    apply_trigger(nm, TriggerConfig(mode=TriggerMode.OFF, source="Line2"), device="cam-A")
    assert nm.TriggerMode.value == "Off" and nm.TriggerSource.value == "Line1"


@pytest.mark.parametrize(("trigger", "message"), [
    (TriggerConfig(source="Line9"), r"\[source.trigger\] source: camera cam-A refuses TriggerSource = 'Line9' \(not "
                                    r"one of its entries\); allowed: one of Software, Line1, Line2"),
    (TriggerConfig(source="Line1", activation="LevelHigh"),
     r"\[source.trigger\] activation: .*TriggerActivation = 'LevelHigh'.*allowed: one of RisingEdge, FallingEdge"),
    (TriggerConfig(source="Line1", delay_us=2e6), r"\[source.trigger\] delay_us: .*TriggerDelay = 2000000.0 \(out of "
                                                  r"range\); allowed: 0.0 .. 1000000.0"),
    (TriggerConfig(selector="LineStart"), r"\[source.trigger\] selector: .*allowed: one of AcquisitionStart, "
                                          r"FrameStart"),
])
def test_trigger_values_are_checked_against_the_node_map(trigger: TriggerConfig, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        apply_trigger(node_map(), trigger, device="cam-A")


def test_a_camera_without_trigger_features_is_refused_unless_the_trigger_is_off() -> None:
    nm = node_map(NO_TRIGGER_XML)
    with pytest.raises(SourceError, match=r"has no TriggerMode feature, so it cannot be triggered.*remove "
                                          r"\[source.trigger\]"):
        apply_trigger(nm, TriggerConfig(), device="cam-A")
    apply_trigger(nm, TriggerConfig(mode=TriggerMode.OFF), device="cam-A")  # free-running is what it does anyway


# -- [source.nodes] --------------------------------------------------------------------------------------------------
def test_features_are_written_in_order_so_a_selector_or_switch_comes_first() -> None:
    nm = node_map()
    with pytest.raises(SourceError, match=r"ChunkEnable is not available .* write that one first, above it"):
        write_feature(nm, "ChunkEnable", True, device="cam-A", origin="[source.nodes] ChunkEnable")
    for name, value in (("ChunkModeActive", True), ("ChunkEnable", True), ("Gain", 12), ("DeviceUserID", "line-3")):
        write_feature(nm, name, value, device="cam-A", origin=f"[source.nodes] {name}")
    assert (nm.ChunkEnable.value, nm.Gain.value, nm.DeviceUserID.value) == (True, 12, "line-3")


@pytest.mark.parametrize(("name", "value", "message"), [
    ("Gian", 2, r"has no feature 'Gian'; did you mean Gain\?"),
    ("Gain", 13, r"refuses Gain = 13 \(not on a step of 2 from 0\); allowed: 0 .. 48 in steps of 2"),
    ("Gain", 50, r"refuses Gain = 50 \(out of range\); allowed: 0 .. 48"),
    ("Gain", "high", r"refuses Gain = 'high' \(it takes an integer\)"),
    ("ChunkModeActive", 1, r"refuses ChunkModeActive = 1 \(it takes true or false\); allowed: true or false"),
    ("PayloadSize", 5, r"PayloadSize is read-only on camera cam-A"),
    ("TriggerSoftware", True, r"TriggerSoftware is a command on camera cam-A, not a setting"),
    ("Root", 1, r"Root is a category"),
])
def test_a_bad_feature_line_names_the_node_and_what_the_camera_allows(name: str, value: object, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        write_feature(node_map(), name, value, device="cam-A", origin=f"[source.nodes] {name}")


# -- the camera's time stamp -----------------------------------------------------------------------------------------
def test_ticks_become_nanoseconds_exactly() -> None:
    assert ticks_to_ns(250_000_000, 125_000_000) == 2_000_000_000
    assert ticks_to_ns(2**63 - 1, 1_000_000_000) == 2**63 - 1
    assert ticks_to_ns(3, 3.0) == 1_000_000_000
    with pytest.raises(ValueError, match="> 0 Hz"):
        ticks_to_ns(1, 0)


def test_the_chunk_timestamp_is_read_in_ticks_of_the_tick_frequency() -> None:
    nm = node_map()
    assert CameraClock().read(None, nm) == (2_000_000_000, "chunk")  # 250e6 ticks at 125 MHz
    ns_camera = node_map(DEVICE_XML.replace("GevTimestampTickFrequency", "OtherFrequency"))
    assert CameraClock().read(None, ns_camera) == (250_000_000, "chunk")  # SFNC: in ns without a tick frequency


def test_the_part_id_is_read_from_the_configured_chunk_or_line_feature() -> None:
    """[source] part_id: a chunk value (here SFNC's ChunkLineStatusAll, latched with the exposure) becomes the frame's
    part id as text; a feature the camera lacks, or one without a value, is refused when the camera opens."""
    xml = DEVICE_XML.replace("<pFeature>DeviceUserID</pFeature>",
                             "<pFeature>DeviceUserID</pFeature><pFeature>ChunkLineStatusAll</pFeature>").replace(
        "  <String Name=\"DeviceUserID\">", "  <Integer Name=\"ChunkLineStatusAll\"><ImposedAccessMode>RO"
        "</ImposedAccessMode><Value>5</Value></Integer>\n  <String Name=\"DeviceUserID\">")
    nm = node_map(xml)
    reader = PartIdReader("ChunkLineStatusAll")
    reader.check(nm, "cam-A")
    assert reader.read(nm) == "5"
    assert PartIdReader("DeviceUserID").read(nm) == "cam"  # a string feature, e.g. a code reader's result
    with pytest.raises(SourceError, match=r"part_id = 'ChunkLineStatus': camera cam-A has no feature .*did you mean "
                                          r"ChunkLineStatusAll"):
        PartIdReader("ChunkLineStatus").check(nm, "cam-A")
    with pytest.raises(SourceError, match=r"TriggerSoftware on camera cam-A is not a feature with a value"):
        PartIdReader("TriggerSoftware").check(nm, "cam-A")
    assert PartIdReader("ChunkLineStatusAll").read(node_map()) is None  # gone: the frame has no part id (logged)


def test_a_camera_without_time_stamps_gives_none_and_is_not_asked_again() -> None:
    clock = CameraClock()
    bare = node_map(DEVICE_XML.replace("ChunkTimestamp", "ChunkOther"))
    assert clock.read(None, bare) == (None, None)  # no chunk, and no buffer to ask
    assert clock._dead == {"chunk", "buffer_ns", "buffer"}
    assert clock.read(None, node_map()) == (None, None)  # this connection gave none: not tried again


# -- deep and packed mono formats ------------------------------------------------------------------------------------
def _pack_pfnc(values: np.ndarray, bits: int) -> np.ndarray:
    """PFNC ``MonoNp``: pixels as one little-endian bit stream, ``bits`` bits each, least significant bit first."""
    stream = ((values.ravel()[:, None].astype(np.uint32) >> np.arange(bits)) & 1).astype(np.uint8).ravel()
    return np.packbits(stream, bitorder="little")


def _pack_gige_12(values: np.ndarray) -> np.ndarray:
    """GigE Vision ``Mono12Packed``: two pixels in three bytes (high bits whole, the low nibbles shared)."""
    p0, p1 = values.ravel()[0::2].astype(np.uint16), values.ravel()[1::2].astype(np.uint16)
    return np.stack([p0 >> 4, (p0 & 0xF) | ((p1 & 0xF) << 4), p1 >> 4], axis=1).astype(np.uint8).ravel()


@pytest.mark.parametrize(("fmt", "bits"), [("Mono10p", 10), ("Mono12p", 12), ("Mono12Packed", 12), ("Mono10", 10),
                                           ("Mono12", 12), ("Mono16", 16)])
def test_deep_and_packed_mono_are_scaled_by_their_own_bit_depth(fmt: str, bits: int) -> None:
    """Bytes as the camera sends them, decoded by harvesters (as for a fetched buffer), then scaled by the format's
    depth: the 8-bit image comes back exactly, where scaling a 12-bit pixel by 16 bits would darken it 16-fold."""
    height, width = 6, 8
    eight = np.random.default_rng(bits).integers(0, 256, (height, width), dtype=np.uint8)
    deep = eight.astype(np.uint16) << (bits - 8)
    wire = (_pack_gige_12(deep) if fmt == "Mono12Packed" else _pack_pfnc(deep, bits) if fmt.endswith("p")
            else deep.astype("<u2").view(np.uint8).ravel())
    decoded = pfnc.Dictionary.get_proxy(symbolic=fmt).expand(wire)  # what harvesters hands the source
    assert np.array_equal(decoded.ravel()[:height * width], deep.ravel())
    image, short = deep_mono_to_8bit(np.array(decoded, copy=True), width, height, fmt)
    assert _DEEP_MONO[fmt] == bits and not short and image.dtype == np.uint8
    assert np.array_equal(image, eight)
    if bits < 16:
        assert not np.array_equal(image, (deep >> 8).astype(np.uint8))  # not scaled as if 16 bits were significant


# -- the recipe reaches the camera -----------------------------------------------------------------------------------
def test_the_recipe_tables_reach_the_genicam_source(tmp_path: Path) -> None:
    recipe_file = tmp_path / "camera.toml"
    recipe_file.write_text("""
[product]
name = "part"

[source]
kind = "genicam"
part_id = "ChunkNrBounces"

[source.trigger]
mode = "On"
source = "Line1"
activation = "RisingEdge"
delay_us = 20

[source.nodes]
ChunkModeActive = true
ChunkSelector = "NrBounces"
ChunkEnable = true

[engine]
weights = "w"
""")
    source = build_source(load_recipe(recipe_file))
    assert source.trigger == TriggerConfig(mode=TriggerMode.ON, source="Line1", activation="RisingEdge", delay_us=20.0)
    assert source.nodes == [("ChunkModeActive", True), ("ChunkSelector", "NrBounces"), ("ChunkEnable", True)]
    assert source.part_id is not None and source.part_id.feature == "ChunkNrBounces"
    fingerprint = load_recipe(recipe_file).fingerprint()  # where a part id comes from does not judge it
    recipe_file.write_text(recipe_file.read_text().replace('part_id = "ChunkNrBounces"\n', ""))
    assert build_source(load_recipe(recipe_file)).part_id is None and load_recipe(recipe_file).fingerprint() == \
        fingerprint
    replay = tmp_path / "replay.toml"
    replay.write_text('[product]\nname = "part"\n[source]\nkind = "replay"\npath = "."\npart_id = "X"\n'
                      '[engine]\nweights = "w"\n')
    with pytest.raises(Exception, match=r"\[source\] part_id: is for area cameras .*a replayed part's id is its "
                                        r"file's name"):
        load_recipe(replay)
    assert source.triggered and not source.trigger.software
    with pytest.raises(SourceError, match="has no software trigger.*source = \"Line1\""):
        source.fire_trigger()
