"""Kernel-test gates: tests that need root and the real kernel call ``require_kernel``:
they skip with a reason on a machine that cannot run them, and fail instead of skipping
when CGSHIM_REQUIRE_KERNEL=1 (set by .ci/run), so CI never passes by skipping them."""
import os

import pytest

REQUIRE = os.environ.get("CGSHIM_REQUIRE_KERNEL") == "1"


def require_kernel(condition, reason):
    """Skip (or, under CGSHIM_REQUIRE_KERNEL=1, fail) unless ``condition`` holds."""
    if condition:
        return
    if REQUIRE:
        pytest.fail(f"required kernel test cannot run: {reason} (CGSHIM_REQUIRE_KERNEL=1)")
    pytest.skip(reason)


def require_root():
    require_kernel(os.geteuid() == 0, "needs root to create cgroups and move tasks")
