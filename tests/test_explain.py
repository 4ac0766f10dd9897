"""``gateway explain`` and ``gateway schema``: the same vectors as the data plane."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from vectors_util import CASES, case_id, config_for

from gateway.cli import main

SINGLE = [c for c in CASES if "host" in c and "target" not in c and "method" not in c]


@pytest.fixture(scope="module")
def config_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for name in {c["config"] for c in CASES}:
        p = tmp_path_factory.mktemp("cfg") / f"{name}.json"
        p.write_text(json.dumps(config_for(name)))
        out[name] = p
    return out


@pytest.mark.parametrize("case", SINGLE, ids=case_id)
def test_explain_matches_vectors(
    case: dict[str, Any], config_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["explain", "--json", "--config", str(config_files[case["config"]]), "--", case["host"]]
    )
    out = json.loads(capsys.readouterr().out)
    want = case["expect"]
    assert out["action"] == want["action"]
    assert (out["environment"] or "") == want["environment"]
    key = "match" if want["action"] == "forward" else "reason"
    assert out[key] == want["label"]
    assert code == (0 if want["action"] == "forward" else 1)


def test_explain_cli_exit_codes_and_text(config_files: dict[str, Path]) -> None:
    run = [sys.executable, "-m", "gateway", "explain", "--config", str(config_files["single"])]
    ok = subprocess.run([*run, "X.shop.acme.com"], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0
    assert "forwarded" in ok.stdout and "*.shop.acme.com" in ok.stdout
    refused = subprocess.run([*run, "evil.example"], capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1 and "unknown_host" in refused.stdout
    report = subprocess.run(
        [sys.executable, "-m", "gateway", "explain", "--config", str(config_files["shared"]), "new.org"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert report.returncode == 0 and "would-block" in report.stdout
    usage = subprocess.run(
        [*run[:-2], "--config", "/nonexistent.json", "a.com"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert usage.returncode == 2


def test_schema_describes_the_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    validator = jsonschema.Draft202012Validator(schema)
    for name in {c["config"] for c in CASES}:
        validator.validate(config_for(name))
    demo = Path(__file__).parent.parent / "gateway" / "examples" / "demo.json"
    validator.validate(json.loads(demo.read_text()))
    bad = config_for("single")
    bad["environments"][0]["secure_endpoint"] = []  # a typo must be an error
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(bad)
    for definition in schema["$defs"].values():
        if definition.get("type") == "object":
            assert definition.get("additionalProperties") is False
