"""Shared fixtures; the kernel-test gates live in tests/support/require.py."""
import pytest

from tests.support.require import require_root
from tests.support.testbed import Testbed


@pytest.fixture
def testbed():
    """A Testbed removed again after the test, also when the test fails."""
    require_root()
    bed = Testbed()
    try:
        yield bed
    finally:
        bed.close()
