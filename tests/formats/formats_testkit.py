"""Constants shared by the format parser tests (a module of its own: test
folders have no __init__.py, so 'conftest' names more than one module)."""

from datetime import UTC, datetime
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data" / "formats"
SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "samples"
NOW = datetime(2025, 1, 1, tzinfo=UTC)
