"""The alert rules and the Grafana dashboard that docs/monitoring/ ships are valid and right.

promtool (Debian's ``prometheus`` package, which .ci/run installs) checks the rules, runs their
unit tests (docs/monitoring/alerts-test.yml: each alert firing on the traffic it is about and
quiet just short of it), and parses every query of the dashboard. Every metric they use must be
one the roles really expose when scraped, and documented.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import eventually, require_tool
from tests.test_prometheus import roles  # noqa: F401 (the fixture: registry, bridge, service)

MONITORING = Path(__file__).parent.parent / "docs" / "monitoring"
RULES = MONITORING / "alerts.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
OPERATIONS = Path(__file__).parent.parent / "docs" / "operations.md"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.usefixtures("promtool_installed")


@pytest.fixture
def promtool_installed() -> None:
    require_tool(
        PROMTOOL is not None,
        "promtool not found: install Debian's prometheus package "
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


def used_metrics() -> set[str]:
    """The natsreg metric names the rules and the dashboard query (a histogram's by its
    ``_bucket``, ``_sum`` or ``_count`` series, a counter's with ``_total``)."""
    used = {
        name
        for query in rule_queries() + dashboard_queries()
        for name in re.findall(r"\bnatsreg_[a-z_]+", query)
    }
    assert used, "no natsreg metric found in the rules and the dashboard"
    return used


def documented_metrics() -> set[str]:
    return set(re.findall(r"`(natsreg_[a-z_]+)`", OPERATIONS.read_text()))


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
    used = {re.sub(r"_(bucket|count|sum)$", "", name) for name in used_metrics()}
    documented = documented_metrics()
    assert used <= documented, f"not in docs/operations.md: {sorted(used - documented)}"


async def test_every_metric_the_rules_and_dashboard_use_is_in_a_scrape_of_the_running_roles(
    roles: dict,  # noqa: F811
) -> None:
    ports, service = roles["ports"], roles["service"]
    bridge = f"http://127.0.0.1:{ports['bridge']}"
    scrapes = [
        f"http://127.0.0.1:{ports['registry']}/metrics",
        f"{bridge}/_natsreg/metrics",  # the bridge, and the client it calls services with
        f"http://127.0.0.1:{ports['service']}/metrics",
    ]
    async with httpx.AsyncClient(timeout=5.0) as http:

        async def listed() -> bool:
            try:
                return service in (await http.get(f"{bridge}/_natsreg/services")).text
            except httpx.TransportError:
                return False

        await eventually(listed, 20.0, what=f"{service} listed by the registry node")
        # Calls through the bridge, one failing: each role has series of its own.
        for fail in (False, True):
            await http.post(f"{bridge}/{service}/echo", json={"fail": fail})
        texts = [(await http.get(url)).text for url in scrapes]
    # What a query may name of each family the three processes expose.
    suffixes = {"counter": ("_total",), "histogram": ("", "_bucket", "_sum", "_count")}
    families = {
        (family.name, family.type)
        for text in texts
        for family in text_string_to_metric_families(text)
        if family.name.startswith("natsreg_")
    }
    exposed = {name + end for name, kind in families for end in suffixes.get(kind, ("",))}
    used = used_metrics()
    assert used <= exposed, f"used but not exposed by any role: {sorted(used - exposed)}"
    # And the docs list what is exposed (counters with _total, histograms by their name).
    named = {name + ("_total" if kind == "counter" else "") for name, kind in families}
    documented = documented_metrics()
    assert named <= documented, f"not in docs/operations.md: {sorted(named - documented)}"
