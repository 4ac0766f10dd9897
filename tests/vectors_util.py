"""Load tests/vectors/hosts.json: expected decisions shared by the decision, end-to-end
and explain tests, so the three can never drift apart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VECTORS = json.loads((Path(__file__).parent / "vectors" / "hosts.json").read_text("utf-8"))


def config_for(name: str, upstream_url: str = "http://127.0.0.1:9") -> dict[str, Any]:
    raw = json.dumps(VECTORS["configs"][name]).replace("UPSTREAM", upstream_url)
    result: dict[str, Any] = json.loads(raw)
    return result


def case_id(case: dict[str, Any]) -> str:
    host = case.get("host", case.get("hosts"))
    return f"{case['config']}:{host!r}"[:80]


CASES: list[dict[str, Any]] = VECTORS["cases"]
