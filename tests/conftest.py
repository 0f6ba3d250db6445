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
