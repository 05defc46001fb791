"""What the OPC UA server says it is (``Server/ServerStatus/BuildInfo``, the endpoints' ApplicationDescription):
read from the installed package, so asset management identifies the station and its software version."""
from __future__ import annotations

import datetime as dt
import importlib.metadata
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

PACKAGE = "inspection-station"
#: used when the package metadata has no home page / author (setup.cfg [metadata] url, author)
PRODUCT_URI = "urn:inspection-station"
MANUFACTURER = "inspection-station project"


@dataclass(frozen=True)
class BuildInfo:
    """OPC 10000-5 BuildInfo: the fields of ``Server_ServerStatus_BuildInfo``."""

    product_uri: str
    manufacturer_name: str
    product_name: str
    software_version: str
    build_number: str
    build_date: dt.datetime


def build_info(package: str = PACKAGE) -> BuildInfo:
    """The BuildInfo of the installed ``package``: its name and version; its home page (else
    :data:`PRODUCT_URI`) and author (else :data:`MANUFACTURER`); the build date is when its metadata was written
    (the install). A package that is not installed (a bare source tree) reports version ``0+unknown``."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        log.warning("OPC UA BuildInfo: the package %s is not installed; SoftwareVersion 0+unknown (pip install -e .)",
                    package)
        return BuildInfo(PRODUCT_URI, MANUFACTURER, package, "0+unknown", "0+unknown",
                         dt.datetime.now(dt.timezone.utc))
    meta = dist.metadata
    urls = [u.split(",", 1)[-1].strip() for u in (meta.get_all("Project-URL") or [])]
    uri = meta.get("Home-page") or (urls[0] if urls else None) or PRODUCT_URI
    author = meta.get("Author") or meta.get("Maintainer") or \
        (meta.get("Author-email") or "").split("<")[0].strip().strip('"') or MANUFACTURER
    built = None
    folder = getattr(dist, "_path", None)  # the .dist-info / .egg-info folder (PathDistribution)
    for name in ("METADATA", "PKG-INFO"):
        try:
            if folder is not None and (folder / name).is_file():
                built = dt.datetime.fromtimestamp((folder / name).stat().st_mtime, dt.timezone.utc)
                break
        except OSError:
            pass
    version = meta.get("Version") or dist.version
    return BuildInfo(uri, author, meta.get("Name") or package, version, version,
                     built or dt.datetime.now(dt.timezone.utc))
