"""Fault injection for the local Cloud Armor API.

A :class:`FaultConfig` holds one probability per fault kind.  For every
request on a selected route the injector draws at most one *exclusive* fault
(in the order of :data:`EXCLUSIVE_KINDS`, with the probabilities summed on a
single uniform draw) and, independently, an added ``latency``:

* ``http_429`` / ``http_500`` / ``http_503``: answered before anything is done
  (reasons rateLimitExceeded / backendError / backendError);
* ``reset``: the connection is closed without an answer; nothing is done;
* ``op_error`` (mutations only): the request is validated and answered with an
  Operation that ends DONE with ``error.errors[0].code == "INTERNAL_ERROR"``
  (httpErrorStatusCode 500); nothing is committed;
* ``commit_then_timeout`` (mutations only): the change is accepted and commits
  when its Operation ends, but the client gets no usable answer: with
  ``commit_then_timeout_mode="delay"`` the response is held
  ``commit_then_timeout_delay`` seconds (set the client's timeout below it),
  with ``"reset"`` the connection is closed after the change was accepted;
* ``latency``: with that probability a delay drawn uniformly from
  ``latency_range`` seconds is added before the request is handled.

``scope`` selects the routes: ``"mutations"`` (default), ``"reads"`` (get, list,
getRule and the operation get/wait) or ``"all"``; ``methods``, when not empty,
further restricts to route names such as ``"securityPolicies.addRule"``.
``seed`` makes the draws reproducible.  ``LocalCloudArmor.fault_counts`` counts
the faults actually applied, by kind.
"""
from __future__ import annotations

import json
import os
import random
import threading
from collections import Counter
from dataclasses import dataclass, field, fields

EXCLUSIVE_KINDS = ("http_429", "http_500", "http_503", "reset", "op_error", "commit_then_timeout")
MUTATION_ONLY = frozenset({"op_error", "commit_then_timeout"})


@dataclass
class FaultConfig:
    http_429: float = 0.0
    http_500: float = 0.0
    http_503: float = 0.0
    reset: float = 0.0
    op_error: float = 0.0
    commit_then_timeout: float = 0.0
    latency: float = 0.0
    latency_range: tuple[float, float] = (0.05, 0.2)
    commit_then_timeout_mode: str = "delay"  # "delay" | "reset"
    commit_then_timeout_delay: float = 2.0
    scope: str = "mutations"  # "mutations" | "reads" | "all"
    methods: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.scope not in ("mutations", "reads", "all"):
            raise ValueError(f"scope must be mutations, reads or all, not {self.scope!r}")
        if self.commit_then_timeout_mode not in ("delay", "reset"):
            raise ValueError("commit_then_timeout_mode must be 'delay' or 'reset'")
        self.latency_range = tuple(self.latency_range)  # type: ignore[assignment]
        self.methods = tuple(self.methods)
        if sum(getattr(self, k) for k in EXCLUSIVE_KINDS) > 1.0:
            raise ValueError("the exclusive fault probabilities sum above 1")

    @classmethod
    def from_json(cls, text_or_path: str) -> FaultConfig:
        """Build from a JSON object, given inline or as a file path."""
        if os.path.exists(text_or_path):
            with open(text_or_path, encoding="utf-8") as fh:
                text_or_path = fh.read()
        data = json.loads(text_or_path)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        return cls(**data)


@dataclass
class Draw:
    """The faults chosen for one request."""

    kind: str | None = None
    latency: float = 0.0


@dataclass
class FaultInjector:
    """Draws faults for requests and counts the ones applied (thread safe)."""

    config: FaultConfig = field(default_factory=FaultConfig)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self._rng = random.Random(self.config.seed)

    def configure(self, config: FaultConfig) -> None:
        with self._lock:
            self.config = config
            self._rng = random.Random(config.seed)

    def selects(self, route_name: str, mutating: bool) -> bool:
        c = self.config
        if c.methods and route_name not in c.methods:
            return False
        return c.scope == "all" or (c.scope == "mutations") == mutating

    def draw(self, route_name: str, mutating: bool) -> Draw:
        with self._lock:
            c = self.config
            if not self.selects(route_name, mutating):
                return Draw()
            result = Draw()
            if c.latency and self._rng.random() < c.latency:
                result.latency = self._rng.uniform(*c.latency_range)
            r = self._rng.random()
            acc = 0.0
            for kind in EXCLUSIVE_KINDS:
                p = getattr(c, kind)
                if kind in MUTATION_ONLY and not mutating:
                    continue
                acc += p
                if r < acc:
                    result.kind = kind
                    break
            return result

    def record(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] += 1
