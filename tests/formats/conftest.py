"""Shared fixtures for the format parser tests."""

import pytest
from formats_testkit import DATA, SAMPLES


@pytest.fixture
def data():
    """Read one of our own fixtures as bytes."""
    return lambda name: (DATA / name).read_bytes()


@pytest.fixture
def sample():
    """Read a published sample by name; skip when the folder is absent."""
    def read(name: str) -> bytes:
        if not SAMPLES.is_dir():
            pytest.skip(f"samples folder {SAMPLES} is absent")
        path = SAMPLES / name
        if not path.is_file():
            pytest.skip(f"sample {name} is absent")
        return path.read_bytes()
    return read
