from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support import Upstream, start_upstream


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    """A real echo server on loopback, shared by the session's end-to-end tests."""
    up = start_upstream("up1")
    yield up
    up.proc.stop()


@pytest.fixture(scope="session")
def upstream2() -> Iterator[Upstream]:
    up = start_upstream("up2")
    yield up
    up.proc.stop()
