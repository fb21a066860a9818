"""How `make test` and `make test-fast` spread the suite over their workers (pytest-xdist).

The Makefile runs `pytest -n 2 --dist loadfile` (TEST_WORKERS=2): a test module is one unit of
work, run whole by one worker, so a module-scoped fixture is built once, as in a serial run (a
worker builds its own copy for each module it runs tests of: split across two workers,
test_kfp_contract.py's `contract_run`, a 2-minute KFP run, would run twice, and train_test.py's
`jobs`, which starts the training processes of every selected test of the module, would start
them all twice). There are no session-scoped fixtures; one would be built once per worker.
(--dist loadgroup with xdist_group marks would allow finer units, but xdist 3.8 cannot
apply them under pytest 9.2, whose nodeid is read-only: its groups are silently ignored.)

The order: xdist hands out the modules in the order the workers collected them, which here
puts the modules with the most tests marked slow first (then collection order): a worker that
picks up a 2-minute module near the end leaves the other one idle. A plain `pytest` (no
workers) keeps the collection order.

Modules run side by side share nothing but the machine: no fixed ports (the ports come from
the OS or are probed and retried), no fixed paths outside their tmp_path (the one in the
repository, .venv-kfp217, is built by one test). Nothing asserts a duration that another
process's load can break: the few wall-clock bounds are on things that do not compute (a 25 s
watchdog timer read within 20-30 s, SIGTERM handled within 30 s).
"""
from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("dist", "no") in ("loadfile", "loadscope"):
        config.option.loadscopereorder = False  # else xdist sorts by number of tests


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if not hasattr(config, "workerinput"):  # not an xdist worker
        return
    first, slow = {}, {}
    for i, item in enumerate(items):
        module = item.nodeid.split("::")[0]
        first.setdefault(module, i)
        slow[module] = slow.get(module, 0) + (item.get_closest_marker("slow") is not None)
    items.sort(key=lambda item: (-slow[item.nodeid.split("::")[0]],
                                 first[item.nodeid.split("::")[0]]))
