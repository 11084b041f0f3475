"""Test helper (tests/test_two_hosts.py): put this directory on PYTHONPATH with SDS_TEST_CLOCK_SKEW_S=N
and every Python process of that "host" (the launcher, submitit, the cells) reads a wall clock N
seconds off, as a host with a skewed clock would. File mtimes stay the kernel's, as on a real host."""

import os
import time

_SKEW = float(os.environ.get("SDS_TEST_CLOCK_SKEW_S", "0") or 0)
if _SKEW:
    _real_time, _real_time_ns = time.time, time.time_ns
    time.time = lambda: _real_time() + _SKEW
    time.time_ns = lambda: _real_time_ns() + int(_SKEW * 1e9)
