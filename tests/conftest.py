from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import support
from support import Upstream, start_upstream

# Every test that talks to a live gateway runs once per engine, as uvicorn's suite runs
# over both its h11 and httptools protocols. A module is "live" when it starts gateways
# (it imports start_gateway or running_gateway from support): no test needs editing.
# GATEWAY_ENGINES=fast (comma-separated) narrows a run while developing.
ENGINES = tuple(
    e for e in os.environ.get("GATEWAY_ENGINES", "aiohttp,fast").split(",") if e.strip()
)


def _is_live(module: object) -> bool:
    if getattr(module, "BOTH_ENGINES_IN_EACH_TEST", False):
        return False  # test_differential: every test runs both engines itself
    return hasattr(module, "start_gateway") or hasattr(module, "running_gateway")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sansio: a plain-call test in a live module, not run once per engine"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("sansio"):
        return
    if "engine" in metafunc.fixturenames and _is_live(metafunc.module):
        # Session scope: pytest then runs every live test of one engine before the next,
        # so module-scoped gateways (built on the session's upstream, which depends on the
        # engine) are started once per engine, not once per test.
        metafunc.parametrize("engine", ENGINES, indirect=True, scope="session")


@pytest.fixture(scope="session", autouse=True)
def engine(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The engine start_gateway uses when a test does not name one; None (the CLI's
    default) for tests that are not parametrised."""
    name: str | None = getattr(request, "param", None)
    previous = support.DEFAULT_ENGINE
    support.DEFAULT_ENGINE = name
    yield name
    support.DEFAULT_ENGINE = previous


@pytest.fixture(scope="session")
def upstream(engine: str | None) -> Iterator[Upstream]:
    """A real echo server on loopback, shared by the session's end-to-end tests.

    It depends on ``engine`` only so that the fixtures built on it (module-scoped
    gateways) are rebuilt when the engine changes."""
    up = start_upstream("up1")
    yield up
    up.proc.stop()


@pytest.fixture(scope="session")
def upstream2(engine: str | None) -> Iterator[Upstream]:
    up = start_upstream("up2")
    yield up
    up.proc.stop()
