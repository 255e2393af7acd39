"""A pytest plugin: each test's CPU seconds (user + sys of the process and of the children it
waited for, around setup, call and teardown), one `seconds<TAB>node id` line per test appended
to $CPU_DURATIONS (default cpu_durations.txt), from every xdist worker. On a shared machine
these are steadier than `--durations`' wall times:

    PYTHONPATH=tests CPU_DURATIONS=/tmp/cpu.txt .venv/bin/python -m pytest -p cpu_durations
    sort -rn /tmp/cpu.txt | head -25
"""

import os
import resource

import pytest


def _cpu() -> float:
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                         resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    started = _cpu()
    yield
    with open(os.environ.get("CPU_DURATIONS", "cpu_durations.txt"), "a") as out:
        out.write(f"{_cpu() - started:.2f}\t{item.nodeid}\n")
