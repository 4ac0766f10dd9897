"""Long CPU work cut into steps, so that a reload can share the event loop with requests.

Loading and compiling a 100,000-entry config is pure CPU. A thread does not take it off
the loop: the GIL is shared, C calls such as a regex over a list hold it throughout, and
the loop waits up to the switch interval each time it wants it back (the "convoy
effect", which made p99 8x worse during reloads). So the work is written as a generator
that yields between bounded pieces (a few thousand entries each); ``drive`` runs it to
the end at once (CLI, tests, start-up); ``reload.drive_on_loop`` runs pieces for a
fraction of a millisecond at a time and lets the loop serve requests in between. Sans-IO, like the
core that uses it.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

T = TypeVar("T")
Steps = Generator[None, None, T]


def drive(steps: Steps[T]) -> T:
    """Run every step now and return the result."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            result: T = stop.value
            return result
