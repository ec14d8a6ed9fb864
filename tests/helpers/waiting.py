"""Polling with a bound: every wait in the tests ends, in time and in count."""

import time


def wait_for(condition, timeout: float = 30, interval: float = 0.2, message: str = "condition"):
    """Call `condition` every `interval` s until it returns something true (returned), or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {message}")
