"""The order in which pytest-xdist hands out test files: the longest first, so that the workers finish together.

With `--dist loadfile --no-loadscope-reorder` a worker takes whole files in collection order.
`FileOrder` sorts the collected tests by the seconds their file is expected to take, longest
first: the sum of what each selected test took when it last ran, kept in pytest's cache
(`.pytest_cache`; half a second for a unit test never timed). While a selected slow test has
never been timed (a fresh clone, a new slow test) the files holding slow tests simply go first.
Files keep their collected order among equals. The controller reads the cache once and hands the
same figures to every worker, so that all collect the same order; it records this run's timings
at the end.
"""

import pytest

CACHE_KEY = "wetterfrosch/test_seconds"
UNTIMED_UNIT_TEST_SECONDS = 0.5


class FileOrder:
    def __init__(self, config):
        self.worker = hasattr(config, "workerinput")
        self.cache = getattr(config, "cache", None)  # None with -p no:cacheprovider
        if self.worker:
            self.recorded = config.workerinput["test_seconds"]
        else:
            self.recorded = self.cache.get(CACHE_KEY, {}) if self.cache else {}
        self.timed = {}

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node):
        node.workerinput["test_seconds"] = self.recorded

    @pytest.hookimpl(trylast=True)  # after pytest has grouped the tests of session-scoped parameters
    def pytest_collection_modifyitems(self, items):
        slow = {item.nodeid for item in items if item.get_closest_marker("slow")}
        timed = slow <= self.recorded.keys()  # a slow test never timed could be the longest
        first_seen, expected = {}, {}
        for index, item in enumerate(items):
            first_seen.setdefault(item.path, index)
            if timed:
                seconds = self.recorded.get(item.nodeid, UNTIMED_UNIT_TEST_SECONDS)
                expected[item.path] = expected.get(item.path, 0.0) + seconds
            else:  # whether the file holds a slow test
                expected[item.path] = max(expected.get(item.path, 0.0), float(item.nodeid in slow))
        items.sort(key=lambda item: (-expected[item.path], first_seen[item.path]))

    def pytest_runtest_logreport(self, report):
        """Setup, call and teardown of each test, as the controller (or the only process) sees them."""
        if not self.worker:
            self.timed[report.nodeid] = self.timed.get(report.nodeid, 0.0) + report.duration

    def pytest_sessionfinish(self):
        if not self.worker and self.cache is not None and self.timed:
            self.cache.set(CACHE_KEY, {**self.recorded, **self.timed})
