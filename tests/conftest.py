"""Shared by both layers: tests/unit (no processes) and tests/system (the real mesh;
its fixtures in tests/system/conftest.py, helpers in tests/helpers.py)."""


def pytest_terminal_summary(terminalreporter):
    """Shows what tests measured (record_property), e.g. the longest publish stall
    during a failover, at the end of every run."""
    lines = [f"{report.nodeid}: {name} = {value}"
             for reports in terminalreporter.stats.values() for report in reports
             for name, value in getattr(report, "user_properties", ()) if report.when == "call"]
    if lines:
        terminalreporter.section("measured")
        for line in sorted(lines):
            terminalreporter.line(line)
