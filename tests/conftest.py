"""Shared pytest fixtures."""

import logging

import pytest

from semseg_suite import synthetic


@pytest.fixture(autouse=True)
def restore_suite_logger():
    """Undo what a script's ``main`` (``semseg_suite.cli.setup_logging``) does to the
    suite's logger: its own handler and ``propagate = False`` would hide later
    tests' records from ``caplog``, making those tests depend on the order they run in."""
    logger = logging.getLogger("semseg_suite")
    state = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = state


@pytest.fixture(autouse=True, scope="session")
def isolated_stats_dir(tmp_path_factory):
    """Dataset statistics go to a temporary folder, never beside a dataset the tests
    read (`semseg_suite.data.statistics`); scripts the tests run inherit it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEMSEG_SUITE_STATS_DIR", str(tmp_path_factory.mktemp("stats")))
        yield


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """A synthetic colour-label dataset folder: 4 train, 2 val, 2 test images of 64 px."""
    root = tmp_path_factory.mktemp("data") / "shapes"
    synthetic.generate_dataset(root, num_train=4, num_val=2, num_test=2, size=64)
    return root
