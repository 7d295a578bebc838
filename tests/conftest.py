"""Shared pytest fixtures."""

import logging

import pytest


@pytest.fixture(autouse=True)
def restore_suite_logger():
    """Undo what a script's ``main`` (``semseg_suite.cli.setup_logging``) does to the
    suite's logger: its own handler and ``propagate = False`` would hide later
    tests' records from ``caplog``, making those tests depend on the order they run in."""
    logger = logging.getLogger("semseg_suite")
    state = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = state
