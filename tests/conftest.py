"""Fixtures shared by every test folder: an isolated environment."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def isolate_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RESPONDER_* setting leaks into a test from the shell or another test."""
    for name in list(os.environ):
        if name.startswith("RESPONDER_"):
            monkeypatch.delenv(name)


# Hypothesis: on CI the default run replays a fixed (derandomized) set of
# examples, so a landing never depends on luck; locally the tests explore anew
# each run (and keep failing examples in .hypothesis/). HYPOTHESIS_PROFILE=
# explore on CI, or =ci locally, switches. A run given --hypothesis-seed=N
# explores from that seed whatever the profile (CI's second, randomized pass
# of the tests marked "property", seeded from the commit; README, "Testing"),
# and HYPOTHESIS_SCALE=K runs K times as many examples per test (the hunt,
# scripts/hunt.py).
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
_hypothesis_settings.register_profile("explore", print_blob=True)
_hypothesis_settings.register_profile("seeded", derandomize=False, database=None, print_blob=True)
_hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "explore"))


def hypothesis_scale() -> float:
    """How many times the usual number of examples to run (HYPOTHESIS_SCALE, default 1)."""
    try:
        return max(float(os.environ.get("HYPOTHESIS_SCALE") or 1), 0.01)
    except ValueError:
        return 1.0


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("hypothesis_seed", None) is not None:
        _hypothesis_settings.load_profile("seeded")


def pytest_sessionstart(session: pytest.Session) -> None:
    """The seed of a randomized run, first thing (pytest runs with -q, so not in the header)."""
    seed = session.config.getoption("hypothesis_seed", None)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if seed is not None and reporter is not None:
        reporter.write_line(f"hypothesis: randomized from seed {seed} "
                            f"(reproduce: ./test.sh -m property --hypothesis-seed={seed})")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _one_worker_per_shared_fixture(config, items)
    _scale_examples(items)


def _one_worker_per_shared_fixture(config: pytest.Config, items: list[pytest.Item]) -> None:
    """./test.sh runs the suite on several pytest-xdist workers (--dist
    loadgroup): tests go one by one to whichever worker is free, except that
    the tests of a module sharing a module-scoped fixture (a deploy run, a
    browser page, a local API) go to one worker, so that fixture is built once."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs.values() if info is not None else ()
        if any(d and d[-1].scope in ("module", "package", "class") for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))


def _scale_examples(items: list[pytest.Item]) -> None:
    scale = hypothesis_scale()
    if scale == 1:
        return
    for item in items:
        test = getattr(item, "obj", None)
        inner = getattr(test, "_hypothesis_internal_use_settings", None)
        if inner is not None and getattr(test, "is_hypothesis_test", False):
            test._hypothesis_internal_use_settings = _hypothesis_settings(  # type: ignore[union-attr]
                inner, max_examples=max(1, int(inner.max_examples * scale)))
