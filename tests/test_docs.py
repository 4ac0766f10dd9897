"""The README's reference is checked against the code, so the docs cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.cli import build_parser
from gateway.config import schema
from gateway.metrics import COUNTER_FAMILIES

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text("utf-8")


def test_every_config_key_is_documented() -> None:
    missing = []
    for name, definition in schema()["$defs"].items():
        for key in definition.get("properties", {}):
            if f"`{key}`" not in README and f"{key}`" not in README and f".{key}" not in README:
                missing.append(f"{name}.{key}")
    assert missing == []


def test_every_command_is_documented() -> None:
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    commands = [c for c in sub.choices if c != "worker"]  # worker is internal
    assert [c for c in commands if f"gateway {c}" not in README] == []


def test_every_metric_is_documented() -> None:
    assert [m for m in COUNTER_FAMILIES if f"`{m}`" not in README] == []


def test_quick_start_and_links() -> None:
    assert "make run" in README and "make test" in README
    assert "Host header does not match" in README
    for link in re.findall(r"\]\(((?!http)[^)#]+)\)", README):
        assert (ROOT / link).exists(), link
