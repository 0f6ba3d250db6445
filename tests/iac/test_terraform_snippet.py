"""The Terraform snippet in docs/terraform: formatted as `terraform fmt`
wants (when a terraform binary is on the machine), and the safe pattern:
the policy holds no rule block and ignores `rule`, every rule is its own
resource, and no literal priority falls in the responder's band."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SNIPPET = ROOT / "docs" / "terraform" / "main.tf"
BAND = tomllib.loads((ROOT / "config" / "responder.toml").read_text())["band"]


def _resource(text: str, typ: str, name: str) -> str:
    """The body of one resource block (braces balanced)."""
    start = text.index(f'resource "{typ}" "{name}" {{')
    depth, i = 0, text.index("{", start)
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i : j + 1]
    raise AssertionError(f"unbalanced block {typ}.{name}")


@pytest.mark.skipif(shutil.which("terraform") is None, reason="no terraform binary on this machine")
def test_snippet_is_formatted() -> None:
    result = subprocess.run(
        ["terraform", "fmt", "-check", "-diff", str(SNIPPET.parent)],
        capture_output=True, text=True, timeout=60,
    )
    assert 0 == result.returncode, result.stdout + result.stderr


def test_policy_declares_no_rule_block_and_ignores_rule() -> None:
    policy = _resource(SNIPPET.read_text(), "google_compute_security_policy", "edge")

    assert not re.search(r"^\s*rule\s*\{", policy, re.MULTILINE)
    assert re.search(r"ignore_changes\s*=\s*\[rule\]", policy)


def test_default_rule_is_its_own_resource_and_denies_by_default() -> None:
    text = SNIPPET.read_text()
    default = _resource(text, "google_compute_security_policy_rule", "default")

    assert re.search(r"priority\s*=\s*2147483647", default)
    assert re.search(r'src_ip_ranges\s*=\s*\["\*"\]', default)
    assert re.search(r'variable "default_action" \{[^}]*default\s*=\s*"deny\(403\)"', text)


def test_no_literal_priority_falls_in_the_band() -> None:
    text = SNIPPET.read_text()
    priorities = [int(p) for p in re.findall(r"^\s*priority\s*=\s*(\d+)", text, re.MULTILINE)]

    assert priorities
    assert [] == [p for p in priorities if BAND["start"] <= p <= BAND["end"]]
    assert re.search(rf"default\s*=\s*\{{ start = {BAND['start']}, end = {BAND['end']} \}}", text)


def _band_removals(plan: dict[str, object]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["jq", "-r", "--argjson", "band_start", str(BAND["start"]), "--argjson", "band_end", str(BAND["end"]),
         "-f", str(SNIPPET.parent / "band-removals.jq")],
        input=json.dumps(plan), capture_output=True, text=True, timeout=60,
    )


def _policy_change(before: list[int], after: list[int] | None) -> dict[str, object]:
    return {"address": "google_compute_security_policy.edge", "type": "google_compute_security_policy",
            "change": {"actions": ["update" if after is not None else "delete"],
                       "before": {"rule": [{"priority": p} for p in before]},
                       "after": None if after is None else {"rule": [{"priority": p} for p in after]}}}


@pytest.mark.skipif(shutil.which("jq") is None, reason="no jq on this machine")
def test_plan_check_fails_on_band_rules_removed_inline_or_as_resources() -> None:
    plan = {"resource_changes": [
        _policy_change([1000, BAND["start"] + 1, 2147483647], [1000, 2147483647]),
        {"address": "google_compute_security_policy_rule.x", "type": "google_compute_security_policy_rule",
         "change": {"actions": ["delete", "create"], "before": {"priority": BAND["end"]}, "after": {"priority": 9}}},
        {"address": "google_compute_security_policy_rule.y", "type": "google_compute_security_policy_rule",
         "change": {"actions": ["delete"], "before": {"priority": 3000}, "after": None}},
    ]}

    result = _band_removals(plan)

    assert 1 == result.returncode
    found = json.loads(result.stderr.split(": ", 1)[1])
    assert [BAND["start"] + 1, BAND["end"]] == [entry["priority"] for entry in found]


@pytest.mark.skipif(shutil.which("jq") is None, reason="no jq on this machine")
def test_plan_check_passes_when_only_rules_outside_the_band_change() -> None:
    plan = {"resource_changes": [_policy_change([1000, 2147483647], [2147483647])]}

    result = _band_removals(plan)

    assert (0, "no band rule removed") == (result.returncode, result.stdout.strip())
