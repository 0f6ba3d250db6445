"""Loads the log detectors named by ``[detectors]`` and validates them.

The detector file (``config/detectors.toml`` by default) holds
``[[detector]]`` tables (schema: ``handlers/formats/logs.py``) and an
optional ``[source_ids]`` table mapping a detector name to the source id the
band records for it. The band's source ids are 1 to 16 of a-z, 0-9 and '-',
starting with a letter (the feed-name rule of ``config.settings``); a detector whose
name does not fit needs an entry there. ``@name`` in ``url_paths`` resolves
to ``<lists_dir>/<name>.txt``.

``load`` is called at the edge, right after the settings are loaded
(``handlers.runtime.load_settings``: the entry points and the CLI), so a bad
file stops the functions at start with a ``ConfigError`` naming the file, the
detector and the field; the log-sink handler calls it again and gets the
cached result: the file is read once per process. It lives beside the log
formats it reads, not in ``config/``, which imports nothing of the product.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from config.settings import DENY_ACTIONS, ConfigError, DetectorSettings

if TYPE_CHECKING:
    from handlers.formats.logs import Detector

SOURCE_ID = re.compile(r"[a-z][a-z0-9-]{0,15}")  # always fullmatch: "$" also matches before a final newline
RESERVED = ("manual", "monitoring", "scc")  # operators' and the alert handler's source ids


@dataclass(frozen=True)
class Detectors:
    """The active detector definitions and their band source ids."""

    detectors: tuple[Detector, ...]
    source_ids: Mapping[str, str]  # detector name -> source id

    @property
    def enabled(self) -> tuple[Detector, ...]:
        return tuple(d for d in self.detectors if d.enabled)


def load(settings: DetectorSettings) -> Detectors:
    """The detectors of ``settings`` (cached per file and its mtime)."""
    try:
        mtime = settings.file.stat().st_mtime_ns
    except OSError as exc:
        raise ConfigError(f"detectors.file: cannot read {settings.file}: {exc.strerror or exc}") from None
    return _load(settings, mtime)


@lru_cache(maxsize=8)
def _load(settings: DetectorSettings, mtime: int) -> Detectors:
    from handlers.formats.logs import DetectorError, load_detectors, parse_signature_list

    where = f"detectors.file ({settings.file.name})"
    try:
        text = settings.file.read_text("utf-8")
        lists = {p.stem: parse_signature_list(p.read_text("utf-8")) for p in sorted(settings.lists_dir.glob("*.txt"))}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read: {exc}") from None
    try:
        detectors = load_detectors(text, lists)
        doc = tomllib.loads(text)
    except DetectorError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    unknown_top = sorted(set(doc) - {"detector", "source_ids"})
    if unknown_top:
        raise ConfigError(f"{where}: {unknown_top[0]}: unknown table (known: detector, source_ids)")
    mapping = doc.get("source_ids", {})
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: source_ids: must be a table of detector name = source id")
    names = {d.name for d in detectors}
    ids: dict[str, str] = {}
    for name, sid in mapping.items():
        if name not in names:
            raise ConfigError(f"{where}: source_ids.{name}: no detector has this name")
        if not isinstance(sid, str) or not SOURCE_ID.fullmatch(sid):
            raise ConfigError(f"{where}: source_ids.{name}: {sid!r} is not a source id (1-16 of a-z, 0-9, '-', starting with a letter)")
    for det in detectors:
        if det.action not in DENY_ACTIONS:
            raise ConfigError(f"{where}: detector {det.name!r}: action: must be one of {', '.join(DENY_ACTIONS)}, got {det.action!r}")
        sid = mapping.get(det.name, det.name)
        if not SOURCE_ID.fullmatch(sid):
            raise ConfigError(
                f"{where}: detector {det.name!r}: name: longer than a band source id allows "
                "(1-16 of a-z, 0-9, '-', starting with a letter); map it in [source_ids]"
            )
        if sid in RESERVED:
            raise ConfigError(f"{where}: detector {det.name!r}: source id {sid!r} is reserved")
        if sid in ids.values():
            other = next(n for n, s in ids.items() if s == sid)
            raise ConfigError(f"{where}: detector {det.name!r}: source id {sid!r} is also {other!r}'s")
        ids[det.name] = sid
    for key, values in (("enable", settings.enable), ("disable", settings.disable)):
        for name in values:
            if name not in names:
                raise ConfigError(f"detectors.{key}: no detector named {name!r} in {settings.file.name}")
    active = tuple(
        replace(d, enabled=True) if d.name in settings.enable
        else replace(d, enabled=False) if d.name in settings.disable
        else d
        for d in detectors
    )
    return Detectors(active, ids)


def default_file() -> Path:
    return DetectorSettings().file
