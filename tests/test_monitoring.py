"""The alert rules and the Grafana dashboard that docs/monitoring/ ships are valid and right.

promtool (Debian's ``prometheus`` package, which .ci/run installs) checks the rules, runs their
unit tests (docs/monitoring/alerts-test.yml: each alert firing on the traffic it is about and
quiet just short of it), and parses every query of the dashboard.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

MONITORING = Path(__file__).parent.parent / "docs" / "monitoring"
RULES = MONITORING / "alerts.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
OPERATIONS = Path(__file__).parent.parent / "docs" / "operations.md"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not found: install Debian's prometheus package "
    "(apt-get install -y prometheus), as .ci/run does",
)


def promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def dashboard_queries() -> list[str]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def rule_queries() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


@needs_promtool
def test_the_alert_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_each_alert_fires_on_its_traffic_and_not_short_of_it() -> None:
    result = promtool("test", "rules", "alerts-test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    # Grafana's own variables, given values, so that promtool parses what Prometheus receives.
    queries = [
        q.replace("$__rate_interval", "5m").replace("$service", ".*") for q in dashboard_queries()
    ]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"natsreg:dashboard_query_{n}", "expr": q}
                    for n, q in enumerate(queries)
                ],
            }
        ]
    }
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", "dashboard.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_every_metric_the_rules_and_dashboard_use_is_documented() -> None:
    documented = set(re.findall(r"`(natsreg_[a-z_]+)`", OPERATIONS.read_text()))
    used = {
        re.sub(r"_(bucket|count|sum)$", "", name)
        for query in rule_queries() + dashboard_queries()
        for name in re.findall(r"\bnatsreg_[a-z_]+", query)
    }
    assert used, "no natsreg metric found in the rules and the dashboard"
    assert used <= documented, f"not in docs/operations.md: {sorted(used - documented)}"
