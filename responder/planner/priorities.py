"""Free priorities of the band, handed out to new rules.

Invariant: every priority handed out is inside the band, was neither in
``used`` nor handed out before, and ``take`` returns None only when no such
priority is left. The order is random but seeded, so that concurrent
writers seldom pick the same one and a plan is the same for the same seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from config.settings import BandSettings


class Priorities:
    """Hands out free priorities of the band in a seeded random order."""

    def __init__(self, band: BandSettings, used: Iterable[int], seed: int) -> None:
        self.band = band
        self.size = band.size
        self.used = set(used)
        self.rng = random.Random(seed)

    @property
    def free(self) -> int:
        return self.size - len(self.used)

    def take(self) -> int | None:
        free = self.free
        if free <= 0:
            return None
        if free * 4 >= self.size:  # plenty free: sample
            while True:
                candidate = self.rng.randint(self.band.start, self.band.end)
                if candidate not in self.used:
                    break
        else:
            candidates = [p for p in range(self.band.start, self.band.end + 1) if p not in self.used]
            candidate = self.rng.choice(candidates)
        self.used.add(candidate)
        return candidate
