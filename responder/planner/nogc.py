"""The cyclic garbage collector paused while the planner runs.

Invariant: the planner makes no reference cycles (its objects are tuples,
lists, dicts and sets of immutable values that refer only downwards), so a
collection while it runs frees nothing: it only walks every object of the
process (the function's imported libraries are most of them). A plan of
10k indicators allocates enough to start dozens of collections, a tenth of
its time in a process that has imported google-cloud-compute. Reference
counting frees the planner's garbage as before; cycles made elsewhere wait
for the next collection after the plan.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def gc_paused(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` with the collector paused while it runs. Threads may overlap:
    whichever found it enabled enables it again when it returns."""

    @functools.wraps(fn)
    def paused(*args: P.args, **kwargs: P.kwargs) -> R:
        was = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was:
                gc.enable()

    return paused
