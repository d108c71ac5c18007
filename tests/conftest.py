"""Suite-wide test policy.

An unexpected WARNING fails the test (STYLE.md): an autouse fixture puts a handler on the
``dsafs`` logger for each test. A record at WARNING or above from the ``dsafs`` loggers during
setup or the test itself fails the test; one logged during teardown fails it at teardown (shown
as an ERROR). A test that expects such records is marked ``@pytest.mark.allow_warnings``.
"""

import logging

import pytest

_COLLECTOR = pytest.StashKey["_WarningCollector"]()


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "allow_warnings: the test may log WARNING or higher from the dsafs loggers",
    )


class _WarningCollector(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def take_report(self):
        """The records so far as one failure message ('' if none), and forget them."""
        records, self.records = self.records, []
        if not records:
            return ""
        lines = "\n".join(
            f"  {r.levelname} {r.name} ({r.pathname}:{r.lineno}): {r.getMessage()}" for r in records
        )
        return (
            "unexpected WARNING or higher from the dsafs loggers "
            f"(mark the test @pytest.mark.allow_warnings if it is expected):\n{lines}"
        )


@pytest.fixture(autouse=True)
def _fail_on_dsafs_warnings(request):
    if request.node.get_closest_marker("allow_warnings") is not None:
        yield
        return
    logger = logging.getLogger("dsafs")
    collector = _WarningCollector()
    request.node.stash[_COLLECTOR] = collector
    logger.addHandler(collector)
    try:
        yield
    finally:
        logger.removeHandler(collector)
        del request.node.stash[_COLLECTOR]
    message = collector.take_report()
    if message:
        pytest.fail(message, pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    outcome = yield
    collector = item.stash.get(_COLLECTOR, None)
    if collector is None:
        return
    message = collector.take_report()
    if message and outcome.excinfo is None:
        outcome.force_exception(pytest.fail.Exception(message, pytrace=False))
