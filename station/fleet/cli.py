"""`station forward` and `station fleet ...` (filled in by the fleet work, issue 16)."""
from __future__ import annotations

import argparse


def add_fleet_commands(sub: argparse._SubParsersAction) -> None:
    """Add the fleet's subcommands to ``station``'s parser."""
