"""Helpers shared by the command-line scripts."""

from __future__ import annotations

import argparse
import logging


def setup_logging() -> None:
    """One-line ``LEVEL: message`` records from the suite's logger."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger = logging.getLogger("semseg_suite")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def str2bool(value: str) -> bool:
    """Parses the old suite's boolean flag values (``--h_flip True``)."""
    lowered = str(value).lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


def ignore_class(value: str) -> str | int:
    """``--ignore-class``: a class index if numeric, else a class name."""
    return int(value) if value.lstrip("-").isdigit() else value
