# Over 500 lines on purpose: the command's parser and handlers, one short handler per subcommand.
"""The `calibration` command: measure a camera and store the results as a versioned profile the recipe names.

Examples::

    calibration flatfield --camera cam-A --dark caps/dark/ --bright caps/bright/ --check caps/grey.png
    calibration flatfield --camera line-1 --line-scan --dark dark/ --bright bright/
    calibration scale --camera cam-A --image target.png --pattern 9x6 --pitch-mm 2.0
    calibration roi --camera cam-A --image reference.png --kind lens --margin 2
    calibration roi --camera cam-A --set cx=322.5,cy=240,r=151          # edit by hand
    calibration thresholds --camera cam-A --weights bffn-magnetic-tile --data station/samples/magnetic-tile \\
                           --escape-rate 0.1 --min-area 10,30
    calibration int8 add --camera cam-A shots/*.png
    calibration list
    calibration show cam-A@v3
    calibration synth flatfield --out /tmp/caps           # synthetic captures to try the commands on
    calibration benchmark                                 # the flat-field and scale goals on synthetic captures

Profiles live in --root, else $STATION_PROFILES, else ./calibration-profiles: ROOT/CAMERA/v001/profile.json and
the arrays and figures it names. Every step writes a new version (dated, never overwritten) that carries the
earlier sections forward; a recipe names the profile in [calibration] profile = "cam-A" (latest) or "cam-A@v3".

Exit codes: 0 done, 1 a goal or target not met (benchmark, thresholds without --keep-best), 2 bad input.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from calibration import synthetic
from calibration.benchmark import run_benchmark
from calibration.errors import CalibrationError
from calibration.flatfield import build_flatfield, residual_report, save_profile_plot
from calibration.images import list_images, read_image, read_images
from calibration.int8 import add_images, calibration_cache_path, int8_images
from inspection_core.defaults import DEFAULT_OVERLAP
from inspection_core.errors import report_error
from calibration.line import load_line_calibration
from calibration.profile import CameraGeometry, ProfileStore, iter_profiles, pixel_format_of
from calibration.roi import check_inside, draw_roi, find_roi, parse_roi, roi_to_dict, with_margin
from calibration.scale import draw_points, measure_scale, parse_pattern
from calibration.thresholds import (
    calibrate_classifier,
    calibrate_segmentation,
    save_operating_curve,
    summary_lines,
    sweep_by_area,
)
from engines.backends.registry import backend_names
from engines.data.synthetic_lens import LensSpec, make_lens
from engines.weights import resolve_weights

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _store(args):
    return ProfileStore(args.root)


def _emit(args, data: dict, lines: list[str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str))
    else:
        print("\n".join(lines))


def _geometry(args, image, line_scan: bool | None = None):
    """The camera geometry of a step's images, its line-scan flag inherited from an existing profile."""
    base = _store(args).latest(args.camera)
    scan = bool(args.line_scan) if getattr(args, "line_scan", False) else (base.geometry.line_scan if base else False)
    if line_scan is not None:
        scan = line_scan
    fmt = getattr(args, "pixel_format", None) or (base.geometry.pixel_format if base and base.geometry.pixel_format
                                                  and _same_layout(base.geometry.pixel_format, image) else None)
    return CameraGeometry(int(image.shape[1]), int(image.shape[0]), fmt or pixel_format_of(image), scan)


def _same_layout(fmt: str, image) -> bool:
    """A profile made with --pixel-format (e.g. BayerRG8, RGBa8) keeps that name for later steps whose images
    have the layout such a camera's frames have in the station."""
    grey = pixel_format_of(image) == "Mono8"
    return grey == (fmt.startswith("Mono") or fmt.startswith("Bayer"))


def _profile_line(profile) -> str:
    return f"wrote {profile.name} in {profile.path}"


# ------------------------------------------------------------------------------------------------- flatfield
def _flatfield(args) -> int:
    dark_files, bright_files = list_images(args.dark, "dark captures"), list_images(args.bright, "bright captures")
    darks, brights = read_images(dark_files, "dark capture"), read_images(bright_files, "bright capture")
    geometry = _geometry(args, brights[0])
    flatfield, info = build_flatfield(darks, brights, line_scan=geometry.line_scan, min_signal=args.min_signal)
    if args.check:
        check = read_image(Path(args.check), "check capture")
        checker, checked_on = flatfield, str(args.check)
    elif len(brights) >= 2:  # judge on a bright capture the correction did not see
        check = brights[-1]
        checker, _ = build_flatfield(darks, brights[:-1], line_scan=geometry.line_scan, min_signal=args.min_signal)
        checked_on = "the last bright capture, left out of a correction built from the others"
    else:
        check, checker, checked_on = brights[0], flatfield, "the bright capture itself (optimistic: pass --check)"
    checker.check(check)
    report = residual_report(checker, check)
    store = _store(args)
    with store.new_version(args.camera, geometry, step="flatfield", note=args.note or "") as draft:
        draft.save_array("flatfield_offset.npy", flatfield.offset)
        draft.save_array("flatfield_gain.npy", flatfield.gain)
        draft.save_array("flatfield_dead.npy", flatfield.dead)
        save_profile_plot(check, checker.apply(check), draft.path("flatfield.png"),
                          title=f"{args.camera}: column profile of "
                                f"{Path(checked_on).name if args.check else 'a flat capture'}")
        draft.sections["flatfield"] = {
            "line_scan": geometry.line_scan, "offset": "flatfield_offset.npy", "gain": "flatfield_gain.npy",
            "dead": "flatfield_dead.npy", "plot": "flatfield.png",
            "files": ["flatfield_offset.npy", "flatfield_gain.npy", "flatfield_dead.npy", "flatfield.png"],
            "dark": [str(p.resolve()) for p in dark_files], "bright": [str(p.resolve()) for p in bright_files],
            **info, "residual": {**report, "measured_on": checked_on},
        }
    profile = draft.profile
    b, a = report["before"], report["after"]
    lines = [_profile_line(profile),
             f"flat-field ({'per column, line-scan' if geometry.line_scan else 'per pixel'}) from "
             f"{info['dark_frames']} dark and {info['bright_frames']} bright captures; {info['dead_pixels']} dead "
             f"pixel(s) replaced by their neighbours",
             f"column non-uniformity (std/mean of the column profile) on {checked_on}:",
             f"  before {b['column_pct']:.3f} %, after {a['column_pct']:.3f} %: {report['column_improvement']:.1f}x "
             f"lower (rows: {b['row_pct']:.3f} % -> {a['row_pct']:.3f} %; pixels incl. noise: {b['pixel_pct']:.3f} % "
             f"-> {a['pixel_pct']:.3f} %)",
             f"profile plot: {profile.path / 'flatfield.png'}"]
    _emit(args, {"profile": profile.name, "path": str(profile.path), **profile.sections["flatfield"]}, lines)
    return EXIT_OK


# ----------------------------------------------------------------------------------------------------- scale
def _scale(args) -> int:
    image = read_image(Path(args.image), "target image")
    result = measure_scale(image, parse_pattern(args.pattern), args.pitch_mm, args.target)
    geometry = _geometry(args, image)
    with _store(args).new_version(args.camera, geometry, step="scale", note=args.note or "") as draft:
        draft.save_png("scale.png", draw_points(image, result))
        draft.sections["scale"] = {**result.to_dict(), "image": str(Path(args.image).resolve()),
                                   "overlay": "scale.png", "files": ["scale.png"]}
    profile = draft.profile
    r = result
    lines = [_profile_line(profile),
             f"scale: {r.mm_per_px:.6f} mm/px ({1 / r.mm_per_px:.3f} px/mm); x {r.mm_per_px_x:.6f}, "
             f"y {r.mm_per_px_y:.6f} mm/px",
             f"  {r.points} of {r.pattern[0] * r.pattern[1]} points used, grid fit rms {r.residual_px:.3f} px, target "
             f"turned {r.rotation_deg:.2f} deg; overlay: {profile.path / 'scale.png'}"]
    _emit(args, {"profile": profile.name, "path": str(profile.path), **profile.sections["scale"]}, lines)
    return EXIT_OK


# ------------------------------------------------------------------------------------------------------- roi
def _roi(args) -> int:
    if not args.set and not args.image:
        raise CalibrationError("pass --image REFERENCE (with --kind lens|screen) to find the region, or --set to "
                               "give it by hand")
    image = read_image(Path(args.image), "reference image") if args.image else None
    facts: dict = {}
    if args.set:
        found, source = parse_roi(args.set), "manual"
    else:
        if not args.kind:
            raise CalibrationError("--kind is needed to find a region: lens (glass circle inside the ink ring) or "
                                   "screen (active-area rectangle)")
        found, facts = find_roi(image, args.kind)
        source = "auto"
    roi = with_margin(found, args.margin)
    store = _store(args)
    base = store.latest(args.camera)
    geometry = _geometry(args, image) if image is not None else None
    if geometry is None and base is None:
        raise CalibrationError(f"camera {args.camera!r} has no profile yet: pass --image (a reference image from "
                               "the camera) so its frame size is known")
    width, height = (geometry or base.geometry).width, (geometry or base.geometry).height
    check_inside(roi, width, height)
    with store.new_version(args.camera, geometry, step="roi", note=args.note or "") as draft:
        files = []
        if image is not None:
            files.append(draft.save_png("roi.png", draw_roi(image, roi, found)))
        draft.sections["roi"] = {"roi": roi_to_dict(roi), "found": roi_to_dict(found), "margin_px": args.margin,
                                 "kind": args.kind or ("lens" if roi_to_dict(roi)["shape"] == "circle" else "screen"),
                                 "source": source,
                                 "reference": str(Path(args.image).resolve()) if args.image else None,
                                 **facts, "overlay": "roi.png" if files else None, "files": files}
    profile = draft.profile
    d = roi_to_dict(roi)
    text = ", ".join(f"{k}={v}" for k, v in d.items() if k != "shape")
    lines = [_profile_line(profile), f"region of interest ({source}, margin {args.margin:g} px): {d['shape']} {text}"]
    if files:
        lines.append(f"overlay to check: {profile.path / 'roi.png'}")
    _emit(args, {"profile": profile.name, "path": str(profile.path), **profile.sections["roi"]}, lines)
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ thresholds
def _thresholds(args) -> int:
    store = _store(args)
    base = store.latest(args.camera)
    geometry = None
    if base is None:
        if not (args.width and args.height):
            raise CalibrationError(f"camera {args.camera!r} has no profile in {store.root}; calibrate it first "
                                   "(flatfield, scale or roi), or pass --width, --height (and --pixel-format) to "
                                   "start one")
        geometry = CameraGeometry(args.width, args.height, args.pixel_format or "Mono8", bool(args.line_scan))
    try:
        min_areas = [int(v) for v in str(args.min_area).split(",") if v.strip()]
    except ValueError:
        raise CalibrationError(f"--min-area {args.min_area!r}: give whole pixels, e.g. 30 or 10,20,30") from None
    bundle = resolve_weights(args.weights)
    classifier = bool(bundle.info.get("classes"))
    if classifier:
        section, sweeps = calibrate_classifier(args.weights, args.data, args.escape_rate, mode=args.mode,
                                               batch=args.batch, threads=args.threads)
        chosen = section["classes"]
        name = "classifier_thresholds"
    else:
        cal = load_line_calibration(base.name, store.root, thresholds=False) if base is not None else None
        section, sweep = calibrate_segmentation(args.weights, args.data, args.escape_rate, min_areas=min_areas,
                                                overlap=args.overlap, batch=args.batch, backend=args.backend,
                                                threads=args.threads, calibration=cal)
        sweeps = sweep_by_area(sweep)
        chosen = {f"min area {section['min_area_px']} px": {**section, "threshold": section["score_threshold"]}}
        name = "thresholds"
    lines = summary_lines(section)
    if not section["target_met"] and not args.keep_best:
        print("\n".join(lines), file=sys.stderr)
        print(f"calibration: the target escape rate {args.escape_rate:g} cannot be met on {args.data} (see above); "
              "nothing stored. Improve the network, add validation data, or pass --keep-best to store the best "
              "point anyway", file=sys.stderr)
        return EXIT_FAILED
    with store.new_version(args.camera, geometry, step="thresholds", note=args.note or "") as draft:
        curve = f"{name}_curve.png"
        save_operating_curve(sweeps, chosen, section["target_escape_rate"], draft.path(curve),
                             title=f"{section['model']} on {args.data}: target escape rate {args.escape_rate:g}")
        draft.save_json(f"{name}_sweep.json", sweeps)
        draft.sections[name] = {**section, "curve": curve, "sweep": f"{name}_sweep.json",
                                "files": [curve, f"{name}_sweep.json"]}
    profile = draft.profile
    _emit(args, {"profile": profile.name, "path": str(profile.path), **profile.sections[name]},
          [_profile_line(profile), *lines, f"curve: {profile.path / curve}"])
    return EXIT_OK


# ------------------------------------------------------------------------------------------------------ int8
def _int8_add(args) -> int:
    profile, added = add_images(_store(args), args.camera, args.images, any_size=args.any_size)
    files = int8_images(profile)
    _emit(args, {"profile": profile.name, "added": added, "images": [str(f) for f in files],
                 "cache": str(calibration_cache_path(profile))},
          [_profile_line(profile), f"INT8 calibration set: {len(files)} image(s) ({added} added, duplicates skipped)",
           f"use it with: engines build --precision int8 --calibration {profile.name}"])
    return EXIT_OK


def _int8_list(args) -> int:
    profile = _store(args).load(args.profile)
    files = int8_images(profile)
    cache = calibration_cache_path(profile)
    _emit(args, {"profile": profile.name, "images": [str(f) for f in files], "cache": str(cache),
                 "cache_exists": cache.is_file()},
          [f"{profile.name}: {len(files)} INT8 calibration image(s)", *[f"  {f}" for f in files],
           f"TensorRT calibration cache: {cache} ({'present' if cache.is_file() else 'not built yet'})"])
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ list / show
def _list(args) -> int:
    store = _store(args)
    rows = [{"profile": p.name, "created": p.created, "camera": p.geometry.describe(),
             "sections": sorted(p.sections), "step": p.history[-1]["step"] if p.history else ""}
            for p in iter_profiles(store, args.camera)]
    lines = [f"{r['profile']:<24} {r['created']:<26} {r['step']:<11} {r['camera']:<28} {', '.join(r['sections'])}"
             for r in rows] or [f"no calibration profiles in {store.root}"]
    _emit(args, {"root": str(store.root), "profiles": rows}, lines)
    return EXIT_OK


def _show(args) -> int:
    profile = _store(args).load(args.profile)
    problems = profile.verify()
    data = {**profile.to_dict(), "path": str(profile.path), "problems": problems}
    lines = [f"{profile.name}  created {profile.created}  camera {profile.geometry.describe()}",
             f"  folder {profile.path}"]
    for name, section in profile.sections.items():
        short = {k: v for k, v in section.items() if k not in ("files", "dark", "bright", "dead_pixel_list")
                 and not isinstance(v, (dict, list))}
        lines.append(f"  [{name}] " + ", ".join(f"{k}={v}" for k, v in short.items()))
        if name == "roi":
            lines.append(f"      roi={section['roi']}")
        if name == "flatfield":
            res = section["residual"]
            lines.append(f"      column non-uniformity {res['before']['column_pct']} % -> "
                         f"{res['after']['column_pct']} %")
        if name == "classifier_thresholds":
            lines.extend(f"      {c}: threshold {v['threshold']}" for c, v in section["classes"].items())
    lines.append("  files: all match their SHA-256" if not problems else "  PROBLEMS:\n    " + "\n    ".join(problems))
    _emit(args, data, lines)
    return EXIT_OK if not problems else EXIT_FAILED


# ------------------------------------------------------------------------------------------ synth / benchmark
def _synth(args) -> int:
    import cv2

    out = Path(args.out)
    if args.what == "flatfield":
        _, darks, brights, check = synthetic.flat_field_captures(args.seed, line_scan=args.line_scan)
        for sub, frames in (("dark", darks), ("bright", brights)):
            (out / sub).mkdir(parents=True, exist_ok=True)
            for i, frame in enumerate(frames):
                cv2.imwrite(str(out / sub / f"{sub}_{i:02d}.png"), frame)
        cv2.imwrite(str(out / "check.png"), check)
        print(f"wrote {len(darks)} dark and {len(brights)} bright captures and check.png under {out}")
        return EXIT_OK
    out.parent.mkdir(parents=True, exist_ok=True)

    width, height = parse_pattern(args.size)
    if args.what == "checkerboard":
        image = synthetic.render_checkerboard(mm_per_px=args.mm_per_px, pitch_mm=args.pitch_mm, seed=args.seed,
                                              angle_deg=args.angle, shape=(height, width))
        note = f"10x7 squares of {args.pitch_mm:g} mm (pattern 9x6) at {args.mm_per_px:g} mm/px"
    elif args.what == "lens":
        sample = make_lens(args.seed, LensSpec(size=(height, width)))
        image = sample.image
        note = f"glass centre {sample.glass_center}, radius {sample.glass_radius}"
    else:
        image, rect = synthetic.screen_in_bezel(args.seed)
        note = f"active area x, y, w, h = {rect}"
    cv2.imwrite(str(out), image)
    print(f"wrote {out}: {note}")
    return EXIT_OK


def _benchmark(args) -> int:
    report = run_benchmark(seed=args.seed)
    _emit(args, report, report["lines"])
    return EXIT_OK if report["all_met"] else EXIT_FAILED


# ------------------------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="calibration", formatter_class=fmt,
        description="Measure a camera (flat-field, scale, region of interest), choose decision thresholds and keep "
                    "INT8 calibration images, as versioned profiles the station's recipe names.",
        epilog=__doc__.split("Examples::", 1)[1])
    parser.add_argument("--root", help="profile store folder (default: $STATION_PROFILES, else ./calibration-profiles)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def step(name: str, help_text: str, description: str, examples: str, camera: bool = True):
        p = sub.add_parser(name, help=help_text, description=description + "\n\nExamples:\n" + examples,
                           formatter_class=fmt)
        if camera:
            p.add_argument("--camera", required=True, help="camera id: the profile's name (e.g. cam-A or a serial)")
            p.add_argument("--note", help="a note kept in the version's history (who, why)")
        p.add_argument("--root", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        return p

    p = step("flatfield", "dark and bright captures -> per-pixel (line-scan: per-column) offset and gain",
             "Average the dark (lens capped) and bright (uniform white target, working exposure) captures into an "
             "offset and a gain, per pixel (per column with --line-scan), so that corrected = (raw - dark) * "
             "mean(bright - dark) / (bright - dark). Reports the column non-uniformity of a flat capture before and "
             "after (on --check, else on a bright capture left out) and saves the profile plot in the profile.",
             "  calibration flatfield --camera cam-A --dark caps/dark/ --bright caps/bright/ --check caps/grey.png\n"
             "  calibration flatfield --camera line-1 --line-scan --dark dark/*.png --bright bright/*.png")
    p.add_argument("--dark", nargs="+", required=True, help="dark capture files or folders (several are averaged)")
    p.add_argument("--bright", nargs="+", required=True, help="bright capture files or folders")
    p.add_argument("--check", help="a capture of a uniform target at another level to measure the residual on")
    p.add_argument("--line-scan", action="store_true", help="a line-scan camera: one offset and gain per column")
    p.add_argument("--min-signal", type=float, help="smallest bright - dark (grey levels) of a working pixel "
                                                    "(default: a tenth of the median)")
    p.add_argument("--pixel-format", help="the camera's GenICam pixel format when the files do not show it "
                                          "(e.g. BayerRG8, RGBa8; default: Mono8 for grey files, RGB8 for colour)")
    p.set_defaults(func=_flatfield)

    p = step("scale", "millimetres per pixel from a checkerboard or dot grid of known pitch",
             "Find the target's inner corners (checkerboard) or dots with OpenCV, fit a grid to them and store mm "
             "per pixel along x and y. The verdict rules then speak mm and mm² (min_area_mm2) and defects are "
             "reported in them.",
             "  calibration scale --camera cam-A --image target.png --pattern 9x6 --pitch-mm 2.0\n"
             "  calibration scale --camera cam-A --image dots.png --target dots --pattern 9x6 --pitch-mm 1.0")
    p.add_argument("--image", required=True, help="one image of the target, whole and in focus")
    p.add_argument("--pattern", required=True, help="COLSxROWS inner corners (10x7 squares: 9x6) or dots")
    p.add_argument("--pitch-mm", type=float, required=True, help="side of one square (or dot spacing) in mm")
    p.add_argument("--target", default="checkerboard", choices=["checkerboard", "dots"])
    p.add_argument("--line-scan", action="store_true", help="a line-scan camera (x and y scales differ)")
    p.add_argument("--pixel-format", help="the camera's GenICam pixel format (default: from the image)")
    p.set_defaults(func=_scale)

    p = step("roi", "find the region of interest on a reference image, or set it by hand",
             "lens: the clear glass circle inside the black ink ring of a camera-module cover glass; screen: the "
             "active-area rectangle. The region is shrunk by --margin px (negative grows it) and drawn on the "
             "reference as roi.png in the profile. Defects outside it are ignored by the station.",
             "  calibration roi --camera cam-A --image reference.png --kind lens --margin 2\n"
             "  calibration roi --camera scr-1 --image screen.png --kind screen\n"
             "  calibration roi --camera cam-A --set cx=322.5,cy=240,r=151")
    p.add_argument("--image", help="reference image from the camera")
    p.add_argument("--kind", choices=["lens", "screen"], help="what to find on the reference image")
    p.add_argument("--set", help="the region by hand: cx=..,cy=..,r=.. or x=..,y=..,w=..,h=.. (pixels)")
    p.add_argument("--margin", type=float, default=0.0, help="pixels to shrink the region by (default 0)")
    p.add_argument("--line-scan", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--pixel-format", help="the camera's GenICam pixel format (default: from the image)")
    p.set_defaults(func=_roi)

    p = step("thresholds", "choose decision thresholds on labelled validation data for a target escape rate",
             "Judge every validation image as the station does (the profile's flat-field and ROI applied to images "
             "of the camera's size) at many thresholds, and keep the operating point whose escape rate (defective "
             "parts passed / defective parts) is at most --escape-rate with the fewest false rejects. Segmentation "
             "weights: the defect score threshold and minimum area; classifier weights: one threshold per class. "
             "Stores the point, its precision/recall and the curve (PNG). --data takes any `engines eval` layout, "
             "or a folder of images with truth.csv (file,defective).",
             "  calibration thresholds --camera cam-A --weights bffn-magnetic-tile --data val/ --escape-rate 0.05\n"
             "  calibration thresholds --camera cam-A --weights runs/gr --data patches/ --escape-rate 0.1")
    p.add_argument("--weights", required=True, help="weights folder or shipped name (segmentation or classifier)")
    p.add_argument("--data", required=True, help="labelled validation folder")
    p.add_argument("--escape-rate", type=float, required=True, help="target share of defective parts let through")
    p.add_argument("--min-area", default="30", help="minimum defect area(s) in px to try, e.g. 30 or 10,20,30")
    p.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP,
                   help=f"tile overlap, as in the recipe (default {DEFAULT_OVERLAP})")
    p.add_argument("--batch", type=int, default=32, help="tiles (or images) per engine call")
    p.add_argument("--backend", default="onnxruntime", choices=backend_names(device="cpu"))
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    p.add_argument("--mode", default="batch", choices=["batch", "bank"], help="classifier: how GR relates images")
    p.add_argument("--keep-best", action="store_true", help="store the best point even when it misses the target")
    p.add_argument("--width", type=int, help="frame width, to start a profile for a camera that has none")
    p.add_argument("--height", type=int, help="frame height, to start a profile")
    p.add_argument("--pixel-format", help="pixel format, to start a profile (default Mono8)")
    p.add_argument("--line-scan", action="store_true", help="with --width: a line-scan camera")
    p.set_defaults(func=_thresholds)

    p = sub.add_parser("int8", help="manage the INT8 calibration images of a profile (engines build --precision int8)",
                       description="A managed set of real camera images kept in the profile (int8/ with a manifest "
                                   "of SHA-256 and sources) and, once built, TensorRT's calibration cache beside it.",
                       formatter_class=fmt)
    int8_sub = p.add_subparsers(dest="int8_command", required=True, metavar="ACTION")
    q = int8_sub.add_parser("add", help="copy images into a new version's INT8 set",
                            description="Examples:\n  calibration int8 add --camera cam-A shots/*.png\n"
                                        "  calibration int8 add --camera cam-A shots/ --any-size", formatter_class=fmt)
    q.add_argument("--camera", required=True)
    q.add_argument("images", nargs="+", help="image files or folders")
    q.add_argument("--any-size", action="store_true", help="accept images of another size than the camera's")
    q.add_argument("--root", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_int8_add)
    q = int8_sub.add_parser("list", help="the INT8 images of a profile and its cache path",
                            description="Example:\n  calibration int8 list cam-A@v4", formatter_class=fmt)
    q.add_argument("profile", help="cam-A (latest) or cam-A@vN")
    q.add_argument("--root", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_int8_list)

    p = step("list", "list the profiles of the store", "Every version of every camera (or of --camera), oldest first.",
             "  calibration list\n  calibration list --camera cam-A --json", camera=False)
    p.add_argument("--camera", help="only this camera")
    p.set_defaults(func=_list)
    p = step("show", "show one profile version and check its files", "What each section holds; every file is "
             "checked against its SHA-256 (exit 1 when one is missing or changed).",
             "  calibration show cam-A\n  calibration show cam-A@v2 --json", camera=False)
    p.add_argument("profile", help="cam-A (latest) or cam-A@vN")
    p.set_defaults(func=_show)

    p = sub.add_parser("synth", help="write synthetic captures to try the commands on",
                       description="flatfield: dark/, bright/ and check.png of a vignetted, gain-striped sensor; "
                                   "checkerboard: a target at a known mm/px; lens: a camera-module cover glass; "
                                   "screen: a screen in its bezel.\n\nExamples:\n"
                                   "  calibration synth flatfield --out /tmp/caps\n"
                                   "  calibration synth checkerboard --out /tmp/target.png --mm-per-px 0.05",
                       formatter_class=fmt)
    p.add_argument("what", choices=["flatfield", "checkerboard", "lens", "screen"])
    p.add_argument("--out", required=True, help="folder (flatfield) or PNG file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--line-scan", action="store_true", help="flatfield: a line-scan sensor")
    p.add_argument("--mm-per-px", type=float, default=0.05, help="checkerboard: true scale")
    p.add_argument("--pitch-mm", type=float, default=2.0, help="checkerboard: square side")
    p.add_argument("--angle", type=float, default=2.0, help="checkerboard: rotation in degrees")
    p.add_argument("--size", default="640x480", help="checkerboard, lens: image WIDTHxHEIGHT (default 640x480, the "
                                                     "size of the synthetic flat-field captures)")
    p.set_defaults(func=_synth)

    p = sub.add_parser("benchmark", help="the flat-field (>= 10x) and scale (<= 0.5 %%) goals on synthetic captures",
                       description="Prints the column non-uniformity before and after flat-field of synthetic "
                                   "vignetted, gain-striped captures (area-scan and line-scan; goal >= 10x lower), "
                                   "an extra line-scan screen of engines.data.synthetic_screen (no goal: milder "
                                   "striping, shown beside its noise floor), and the scale error on synthetic "
                                   "checkerboards and a dot grid (goal <= 0.5 %%). Exit 1 when a goal is missed.",
                       formatter_class=fmt)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_benchmark)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - a user error: one line, exit 2; anything else: a bug, its traceback, 1
        return report_error("calibration", exc)


if __name__ == "__main__":
    sys.exit(main())
