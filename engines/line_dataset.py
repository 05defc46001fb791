"""A training data set from the line's reviews (issue 29): what QA said of the station's verdicts, as images and masks.

``engines dataset --from-ledger DB [--from-ledger DB2 ...] --out DIR`` reads each ledger's reviewed rows (the latest
review of a row counts: :func:`station.review.reviewed_rows`, handed in by the ``engines`` command) and writes DIR
in the generic layout ``engines train --data`` reads (:func:`engines.data.segmentation.load_generic`)::

    DIR/images/NAME.png         the part's image as the ledger saved it
    DIR/masks/NAME.png          its defect mask (0 background, 255 defect); no mask: defect-free
    DIR/needs_mask/NAME.png     defective parts without a mask yet: a labeller draws one (engines.label_exchange)
    DIR/needs_mask/listing.json what each of them is and why it waits
    DIR/provenance.jsonl        one line per image: ledger, row, station, part, time, verdict, review, finding
    DIR/line_dataset.json       the summary: ledgers, counts by finding, rows skipped and why

What each review makes of its row:

- a false reject (FAIL marked good) and a confirmed pass (PASS marked good): a defect-free image, no mask (false
  rejects are the hard negatives of the real line);
- a confirmed reject (FAIL marked defect): the image with the mask the station predicted (the ledger's
  ``<image stem>_mask.png``, :mod:`station.rejectlog`); without one (a row saved before masks were kept, or an empty
  decision) it waits in ``needs_mask/``;
- an escape (PASS marked defect): the station saw no defect, so there is no mask to keep: it waits in
  ``needs_mask/``, never in ``images/`` (where a missing mask would teach that the part is good).

Rows are skipped, and counted by reason, when they are NOT_INSPECTED or GAP rows (no verdict of the engine to
learn from), or their image was never saved or is gone (retention pruned it, or it was moved). Names are
``<station>_<row>`` (``<station>_<ledger stem>_<row>`` when two ledgers hold the same station's rows), unique in DIR.

DIR is written whole or not at all (into a temporary folder beside it, renamed at the end). An existing DIR is
refused; ``--force`` replaces it, masks imported into it included: keep the labeller's COCO or labelme file and
import it again (``--import-coco`` / ``--import-labelme``; an escape's mask moves it from ``needs_mask/`` into
``images/``).
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engines.data.segmentation import DatasetError
from engines.errors import InputError
from engines.label_exchange import folder_images
from inspection_core import imageio
from inspection_core.errors import ImageReadError

PROVENANCE, SUMMARY, LISTING = "provenance.jsonl", "line_dataset.json", "listing.json"
FINDINGS = ("false reject", "confirmed reject", "escape", "confirmed pass")
#: Why a reviewed row gives no image.
SKIP_NOT_INSPECTED, SKIP_GAP = "not inspected (no verdict of the engine)", "gap row (frames lost, no part)"
SKIP_NO_IMAGE, SKIP_GONE = "no image saved", "image gone (pruned by [log] images_max_mb, or moved)"
#: Why a defective part waits in needs_mask/.
WAIT_ESCAPE = "escape: the station saw no defect, so no mask was predicted"
WAIT_NO_MASK = "confirmed reject without a predicted mask (saved before masks were kept)"
WAIT_EMPTY = "confirmed reject whose predicted mask is empty (no defect region was kept)"


@dataclass(frozen=True)
class Ledger:
    """One ledger's reviewed rows, as :func:`station.review.reviewed_rows` reads them."""

    path: Path
    rows: list[dict[str, Any]]


def finding_of(verdict: str, mark: str) -> str | None:
    """What a review makes of a PASS or FAIL row: one of :data:`FINDINGS` (None for other verdicts)."""
    return {("FAIL", "good"): "false reject", ("FAIL", "defect"): "confirmed reject",
            ("PASS", "defect"): "escape", ("PASS", "good"): "confirmed pass"}.get((verdict, mark))


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-.") or "unknown"


def _names(ledgers: list[Ledger]) -> dict[tuple[int, int], str]:
    """``(ledger index, row id)`` → a unique name: ``<station>_<row>``, the ledger's stem added where two ledgers
    share a station, the ledger's index where even that is not enough."""
    stations: dict[str, set[int]] = {}
    for k, ledger in enumerate(ledgers):
        for row in ledger.rows:
            stations.setdefault(_safe(str(row.get("station_id") or "unknown")), set()).add(k)
    names, used = {}, set()
    for k, ledger in enumerate(ledgers):
        for row in ledger.rows:
            station = _safe(str(row.get("station_id") or "unknown"))
            name = f"{station}_{row['id']}"
            if len(stations[station]) > 1:
                name = f"{station}_{_safe(ledger.path.stem)}_{row['id']}"
            if name in used:
                name = f"{name}_{k + 1}"
            used.add(name)
            names[(k, int(row["id"]))] = name
    return names


def _provenance(ledger: Path, row: dict[str, Any], finding: str | None) -> dict[str, Any]:
    review = row["review"]
    try:
        defects = len(json.loads(row.get("defects_json") or "[]"))
    except (TypeError, ValueError):
        defects = None
    return {"ledger": str(ledger), "row": int(row["id"]), "station_id": row.get("station_id"),
            "run_id": row.get("run_id"), "part_id": row.get("part_id"), "file": row.get("file"),
            "time_utc": row.get("time_utc"), "verdict": row.get("verdict"), "defects": defects,
            "engine_id": row.get("engine_id"), "recipe": row.get("recipe"), "image_path": row.get("image_path"),
            "review": {k: review.get(k) for k in ("id", "reviewer", "mark", "time_utc", "note")},
            "review_count": row.get("review_count"), "finding": finding}


def _shape(path: Path) -> tuple[int, ...]:
    try:
        return imageio.read_image(path, "unchanged").shape[:2]
    except ImageReadError as exc:
        raise DatasetError(f"{exc}; the ledger's image is damaged: leave its row out or restore the file") from None


def _predicted_mask(path: Path, shape: tuple[int, ...]) -> tuple[np.ndarray | None, str | None]:
    """The ledger's predicted mask (``uint8`` 0/255), or None and why the part waits for one."""
    if not path.is_file():
        return None, WAIT_NO_MASK
    try:
        mask = imageio.read_image(path, "grey")
    except ImageReadError:
        return None, WAIT_NO_MASK
    if mask.shape != tuple(shape) or not mask.any():
        return None, WAIT_EMPTY if mask.shape == tuple(shape) else WAIT_NO_MASK
    return mask, None


def build_line_dataset(ledgers: list[Ledger], out: str | Path, force: bool = False) -> dict[str, Any]:
    """Write the data set of the ledgers' reviews to ``out`` (see the module's docstring) and return its summary:
    ``images``, ``defect_free``, ``with_mask``, ``needs_mask``, ``by_finding``, ``skipped`` (reason → rows), the
    ``ledgers`` and where the listing is. :class:`InputError` when ``out`` exists (without ``force``) or no ledger
    has a review."""
    out = Path(out)
    if not any(ledger.rows for ledger in ledgers):
        names = ", ".join(str(ledger.path) for ledger in ledgers)
        raise InputError(f"no reviews in {names}: nothing to learn from yet; mark rows first "
                         "(station review --db DB --mark ROW=good|defect)")
    for ledger in ledgers:
        if not ledger.rows:
            raise InputError(f"{ledger.path} has no reviews; mark its rows first (station review --db "
                             f"{ledger.path} --mark ROW=good|defect) or leave it out")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file; --out names the data folder to write")
    if out.exists() and any(out.iterdir()) and not force:
        raise InputError(f"{out} exists; choose a new --out, or pass --force to replace it (masks imported into it "
                         "are lost: import the labeller's file again afterwards)")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        summary = _write(ledgers, out, work)
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return summary


def _write(ledgers: list[Ledger], out: Path, work: Path) -> dict[str, Any]:
    names = _names(ledgers)
    for folder in ("images", "masks", "needs_mask"):
        (work / folder).mkdir()
    by_finding = dict.fromkeys(FINDINGS, 0)
    skipped: dict[str, int] = {}
    provenance, waiting = [], []
    counts = {"defect_free": 0, "with_mask": 0}
    for k, ledger in enumerate(ledgers):
        for row in ledger.rows:
            verdict, review = str(row.get("verdict")), row["review"]
            finding = finding_of(verdict, review["mark"])
            image = Path(row["image_file"]) if row.get("image_file") else None
            why_skipped = (SKIP_GAP if verdict == "GAP" else SKIP_NOT_INSPECTED if finding is None else
                           SKIP_NO_IMAGE if image is None else SKIP_GONE if not image.is_file() else None)
            if why_skipped:
                skipped[why_skipped] = skipped.get(why_skipped, 0) + 1
                continue
            name = names[(k, int(row["id"]))]
            target = f"{name}{image.suffix.lower()}"
            entry = {"name": target, **_provenance(ledger.path, row, finding)}
            wait = None
            if finding == "escape":
                wait = WAIT_ESCAPE
            elif finding == "confirmed reject":
                mask, wait = _predicted_mask(Path(row["mask_file"]), _shape(image))
                if mask is not None:
                    shutil.copyfile(row["mask_file"], work / "masks" / f"{name}.png")
            if wait:
                shutil.copyfile(image, work / "needs_mask" / target)
                entry.update({"folder": "needs_mask", "mask": None, "why": wait})
                waiting.append({k2: entry[k2] for k2 in ("name", "why", "ledger", "row", "station_id", "part_id",
                                                         "time_utc", "verdict", "finding")})
            else:
                shutil.copyfile(image, work / "images" / target)
                has_mask = finding == "confirmed reject"
                entry.update({"folder": "images", "mask": "predicted" if has_mask else None})
                counts["with_mask" if has_mask else "defect_free"] += 1
            by_finding[finding] += 1
            provenance.append(entry)
    listing = out / "needs_mask" / LISTING
    (work / "needs_mask" / LISTING).write_text(json.dumps(waiting, indent=1) + "\n", encoding="utf-8")
    with (work / PROVENANCE).open("w", encoding="utf-8") as fh:
        for entry in provenance:
            fh.write(json.dumps(entry) + "\n")
    summary = {"out": str(out), "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
               "ledgers": [{"path": str(ledger.path), "reviewed_rows": len(ledger.rows)} for ledger in ledgers],
               "images": counts["defect_free"] + counts["with_mask"], **counts, "needs_mask": len(waiting),
               "by_finding": by_finding, "skipped": skipped, "needs_mask_listing": str(listing),
               "provenance": str(out / PROVENANCE)}
    (work / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


def describe(summary: dict[str, Any]) -> str:
    """The summary as the command prints it."""
    found = ", ".join(f"{n} {f}" + ("s" if n != 1 else "") for f, n in summary["by_finding"].items())
    lines = [f"{summary['out']}: {summary['images']} training images ({summary['defect_free']} defect-free, "
             f"{summary['with_mask']} with the predicted mask), {summary['needs_mask']} waiting for a mask",
             f"  reviews: {found}"]
    for reason, n in summary["skipped"].items():
        lines.append(f"  skipped {n} row{'s' if n != 1 else ''}: {reason}")
    if summary["needs_mask"]:
        lines.append(f"  needing a mask: {summary['needs_mask_listing']} (export them for a labeller with "
                     f"engines dataset --export-coco {summary['out']} --out FILE.json, then --import-coco)")
    lines.append(f"  provenance of every image: {summary['provenance']}")
    return "\n".join(lines)


# -- masks imported into a data folder --------------------------------------------------------------------------

def apply_masks(root: str | Path, masks: dict[str, np.ndarray], source: str) -> dict[str, int]:
    """Give the folder's images the masks a labeller drew (``masks``: image stem → ``uint8`` mask, 0 background).
    An image in ``images/`` gets its mask replaced (none: defect-free); one in ``needs_mask/`` with a mask moves to
    ``images/`` with it, one without stays. ``provenance.jsonl`` and the listing follow, when the folder has them.
    Returns counts: ``masks`` written, ``defect_free`` (images whose mask was removed), ``moved`` from needs_mask,
    ``still_waiting`` (needs_mask images the file gave no mask).
    """
    root = Path(root)
    images = folder_images(root)
    counts = {"masks": 0, "defect_free": 0, "moved": 0, "still_waiting": 0}
    imported: set[str] = set()  # names of the images that got a mask
    (root / "masks").mkdir(exist_ok=True)
    for stem, mask in masks.items():
        image = images[stem]
        waiting = image.parent.name == "needs_mask"
        target = root / "masks" / f"{stem}.png"
        if not mask.any():
            if waiting:
                counts["still_waiting"] += 1
            elif target.is_file():
                target.unlink()
                counts["defect_free"] += 1
            continue
        ok, encoded = cv2.imencode(".png", np.ascontiguousarray(mask.astype(np.uint8)))
        if not ok:
            raise DatasetError(f"the mask of {stem} cannot be encoded as PNG")
        target.write_bytes(encoded.tobytes())
        counts["masks"] += 1
        imported.add(image.name)
        if waiting:
            image.rename(root / "images" / image.name)
            counts["moved"] += 1
    _note_imports(root, imported, source, {s for s, m in masks.items() if not m.any()})
    return counts


def _note_imports(root: Path, imported: set[str], source: str, emptied: set[str]) -> None:
    """Record in provenance.jsonl and the needs_mask listing what an import changed."""
    path = root / PROVENANCE
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if path.is_file():
        entries = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        for entry in entries:
            if entry.get("name") in imported:
                entry.update({"folder": "images", "mask": "imported", "mask_source": source, "imported_utc": now})
                entry.pop("why", None)
            elif Path(entry.get("name", "")).stem in emptied and entry.get("folder") == "images":
                entry.update({"mask": None, "mask_source": source, "imported_utc": now})
        path.write_text("".join(json.dumps(e) + "\n" for e in entries), encoding="utf-8")
    listing = root / "needs_mask" / LISTING
    if listing.is_file():
        waiting = [w for w in json.loads(listing.read_text(encoding="utf-8")) if w.get("name") not in imported]
        listing.write_text(json.dumps(waiting, indent=1) + "\n", encoding="utf-8")
