"""The `calibration` command: station calibration steps (flat-field, scale, ROI, thresholds).

No calibration step ships in this version yet: the line runs uncalibrated (no flat-field, pixel units, the
recipe's ROI). The command exists so installs and scripts can rely on its name; it says so plainly.
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="calibration",
        description="Station calibration (flat-field, scale, region of interest, decision thresholds). "
                    "No calibration step is available in this version: the station runs uncalibrated, with "
                    "pixel units and the recipe's region of interest.",
    )


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print("calibration: no calibration step is available in this version; the station runs uncalibrated "
          "(see `calibration --help`)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
