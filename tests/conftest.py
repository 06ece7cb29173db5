"""Shared fixtures; the kernel-test gates live in tests/support/require.py."""
import pytest

from tests.support.require import require_root
from tests.support.served import Served
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


@pytest.fixture
def served():
    """Start ``python -m cgshim serve`` (tests/support/served.py) as often as the test asks;
    each is stopped by pid after the test, also when it fails."""
    started = []

    def start(*args, **kw):
        s = Served(*args, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()
