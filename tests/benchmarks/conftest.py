import logging

import pytest


@pytest.fixture
def library_log_level():
    """The weighting scripts quiet the library's logger; tests run after theirs still read its INFO lines."""
    logger = logging.getLogger("longalign_hf")
    level = logger.level
    yield
    logger.setLevel(level)
