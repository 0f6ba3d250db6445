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


# Hypothesis: on CI the property tests run a fixed (derandomized) set of
# examples, so a landing never depends on luck; locally they explore anew
# each run (and keep failing examples in .hypothesis/). Set
# HYPOTHESIS_PROFILE=explore on CI, or =ci locally, to switch.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
_hypothesis_settings.register_profile("explore", print_blob=True)
_hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "explore"))
