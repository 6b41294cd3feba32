"""A real Prometheus (Debian's) scrapes a real dragonfork serving a stream to one viewer.

The server also runs its RTMP server with a token: FFmpeg publishes one stream to it and another FFmpeg,
with a wrong token, is refused, so the ingest panels have a publisher, its bitrate and a refusal to show.
Every expression of the Grafana dashboard and every rule of deploy/prometheus/dragonfork-rules.yml is
evaluated through Prometheus's HTTP API and must return data.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from harness import Server, free_port, lavfi_process, running_server, wait_live, whep_url
from rtmp_helpers import Publisher, wait_until
from whep_peers import ClientProcess, play, start_client

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "dragonfork-rules.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dragonfork.json"

RTMP_TOKEN = "prometheus-test-token"
# Grafana's variables as a user selecting "All" processes sees them.
GRAFANA_VARIABLES = {"$process": ".*", "$__rate_interval": "1m"}
METRIC_NAME = re.compile(r"\b((?:dragonfork[_:]|process_)[a-z0-9_:]+|up)\b")


@dataclass
class Prometheus:
    url: str

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
        return list(body["data"]["result"])

    def get(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.url}{path}", params=params, timeout=10)
        response.raise_for_status()
        return response.json()["data"]


def metric_names(expr: str) -> set[str]:
    return {name for name in METRIC_NAME.findall(expr) if not name.startswith("dragonfork:")}


def dashboard_expressions() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"]))
    return found


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: the nox tests session installs Debian's prometheus package"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, cwd=PROMETHEUS_DIR)


def test_promtool_checks_the_rules_and_the_sample_config() -> None:
    for args in (("check", "rules", RULES.name), ("check", "config", "prometheus.yml")):
        result = promtool(*args)
        assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_cover_every_alert() -> None:
    result = promtool("test", "rules", "dragonfork-rules.test.yml")
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", (PROMETHEUS_DIR / "dragonfork-rules.test.yml").read_text()))
    assert {rule["alert"] for rule in rules() if "alert" in rule} == tested


@dataclass
class LiveSetup:
    server: Server
    prometheus: Prometheus
    viewer: ClientProcess


def refused_publisher(rtmp_port: int, log: Path) -> None:
    """A real FFmpeg publisher with a wrong token: refused, counted with ``reason="token"``."""
    with Publisher(f"rtmp://127.0.0.1:{rtmp_port}/intruder.stream?token=wrong", log) as refused:
        assert refused.proc.wait(30) != 0
    assert "invalid token" in refused.log(), refused.log()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveSetup]:
    tmp = tmp_path_factory.mktemp("prometheus")
    rtmp_port = free_port()
    rtmp = {
        "CORE_RTMP_ENABLE": "true",
        "CORE_RTMP_ADDRESS": f"127.0.0.1:{rtmp_port}",
        "CORE_RTMP_TOKEN": RTMP_TOKEN,
    }
    with (
        running_server(tmp / "dragonfork", **rtmp) as server,
        Publisher(f"rtmp://127.0.0.1:{rtmp_port}/cam.stream?token={RTMP_TOKEN}", tmp / "publisher.log"),
    ):
        server.api("POST", "/api/v3/process", json=lavfi_process("cam", webrtc=True)).raise_for_status()
        # A process that fails and stays failed, and one that restarts in a loop.
        for process_id, reconnect in (("broken", False), ("flapping", True)):
            config = lavfi_process(process_id, options=["-no_such_option", "1"], reconnect=reconnect)
            config["reconnect_delay_seconds"] = 1
            server.api("POST", "/api/v3/process", json=config).raise_for_status()
        # A WebRTC process whose input cannot be probed: a counted failure (dragonfork_failures_total).
        unprobeable = lavfi_process("unprobeable", webrtc=True, audio=False)
        unprobeable["input"][0]["address"] = "no_such_filter"
        server.api("POST", "/api/v3/process", json=unprobeable).raise_for_status()
        wait_live(server, "cam")
        first = play(whep_url(server, "cam"), duration=1)  # a viewer that came and went (a closed reason)
        assert first.get("error") is None, first
        viewer = start_client(whep_url(server, "cam"), duration=120, decode=False)
        assert server.api("GET", "/api/v3/process/no-such-process").status_code == 404
        wait_until(
            lambda: server.api("GET", "/api/v3/rtmp").json() == [{"name": "/cam.stream"}], 20, "the publisher"
        )
        refused_publisher(rtmp_port, tmp / "refused-before.log")

        with running_prometheus(tmp / "prometheus", server.port) as prometheus:
            server.wait_for(
                lambda: bool(prometheus.query("dragonfork_webrtc_viewers_active > 0")),
                30,
                "the viewer in Prometheus",
            )
            # A second refusal while Prometheus scrapes, so the refusal rate is more than 0.
            refused_publisher(rtmp_port, tmp / "refused-while-scraped.log")
            # Rates need two samples of every counter, recording rules one evaluation after that.
            server.wait_for(
                lambda: bool(prometheus.query("dragonfork:webrtc_rtp_packets_forwarded:rate1m > 0")),
                30,
                "recording rules over the live series",
            )
            yield LiveSetup(server, prometheus, viewer)
        viewer.proc.kill()
        viewer.proc.communicate()  # closes its pipes now, not whenever the garbage collector gets to them


@pytest.fixture
def prometheus(live: LiveSetup) -> Prometheus:
    return live.prometheus


@contextmanager
def running_prometheus(directory: Path, dragonfork_port: int) -> Iterator[Prometheus]:
    """Debian's Prometheus with the sample config (this server as target, 1 s intervals), its own data dir."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: the nox tests session installs Debian's prometheus package"
    directory.mkdir(parents=True)
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(RULES)]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{dragonfork_port}"]}]
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (directory / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (directory / "prometheus.log").read_text()[-5000:]
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "Prometheus not ready in 30 s"
            time.sleep(0.1)
        yield Prometheus(url)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


PANEL_IDS = [title for title, _ in dashboard_expressions()]


def with_grafana_variables(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


def test_prometheus_scrapes_the_server(prometheus: Prometheus) -> None:
    (target,) = prometheus.get("/api/v1/targets")["activeTargets"]
    assert target["health"] == "up", target
    assert target["labels"]["job"] == "dragonfork"


@pytest.mark.parametrize(("title", "expr"), dashboard_expressions(), ids=PANEL_IDS)
def test_every_dashboard_panel_returns_data(prometheus: Prometheus, title: str, expr: str) -> None:
    result = prometheus.query(with_grafana_variables(expr))
    assert result, f"{title!r}: {expr} returned nothing"


def test_the_ingest_panels_show_the_rtmp_publisher_its_bitrate_and_the_refusal(live: LiveSetup) -> None:
    panels = dict(dashboard_expressions())

    def panel(title: str) -> dict[tuple[str, ...], float]:
        result = live.prometheus.query(with_grafana_variables(panels[title]))
        return {tuple(series["metric"].values()): float(series["value"][1]) for series in result}

    assert panel("Publishers by protocol") == {("rtmp",): 1}
    (bitrate,) = panel("Ingest bitrate by protocol").values()
    assert bitrate > 0  # its size depends on how fast a loaded machine lets FFmpeg encode
    # The second refusal happened while Prometheus scraped; the rate window holds both.
    live.server.wait_for(
        lambda: panel("Publishers refused by reason").get(("rtmp", "token"), 0) > 0, 30, "the refusal rate"
    )


def test_the_process_variable_lists_the_processes(live: LiveSetup) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "process"]
    assert variable["definition"] == "label_values(dragonfork_process_state, process)"
    values = live.prometheus.get("/api/v1/label/process/values", **{"match[]": "dragonfork_process_state"})
    assert {"cam", "broken", "flapping", "unprobeable"} <= set(values)
    selected = live.prometheus.query('dragonfork_process_fps{process=~"cam"}')
    assert [series["metric"]["process"] for series in selected] == ["cam"]
    assert float(selected[0]["value"][1]) > 0


def test_every_rule_is_loaded_and_evaluates_without_error(prometheus: Prometheus) -> None:
    loaded = {
        rule["name"]: rule for group in prometheus.get("/api/v1/rules")["groups"] for rule in group["rules"]
    }
    assert set(loaded) == {rule.get("record") or rule["alert"] for rule in rules()}
    broken = {name: rule.get("lastError") for name, rule in loaded.items() if rule["health"] != "ok"}
    assert broken == {}


@pytest.mark.parametrize("rule", rules(), ids=[rule.get("record") or rule["alert"] for rule in rules()])
def test_every_rule_reads_live_series(prometheus: Prometheus, rule: dict[str, Any]) -> None:
    """A recording rule's series exists; every series an alert reads exists (alerts are quiet here)."""
    expr = str(rule["expr"])
    if "record" in rule:
        assert prometheus.query(rule["record"]), f"{rule['record']} recorded nothing"
        return
    for name in metric_names(expr):
        assert prometheus.query(name), f"{rule['alert']} reads {name}, which has no series"
    if rule["alert"] == "DragonforkMetricsAbsent":
        assert prometheus.query(expr) == [], "the target is scraped: absent(up) must be empty"


def test_process_alerts_are_pending_for_the_broken_processes(live: LiveSetup) -> None:
    """The process alerts see the failed and the flapping process (pending: `for:` is minutes)."""

    def pending() -> set[tuple[str, str]]:
        alerts = live.prometheus.get("/api/v1/alerts")["alerts"]
        return {(alert["labels"]["alertname"], alert["labels"].get("process", "")) for alert in alerts}

    expected = {("DragonforkProcessFailed", "broken"), ("DragonforkProcessRestartLoop", "flapping")}
    live.server.wait_for(lambda: expected <= pending(), 30, f"alerts {expected} (have {pending()})")
    assert not {name for name, process in pending() if process == "cam"}, pending()


def test_the_dashboard_has_its_rows_and_filters_per_process_panels_by_the_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    rows = [panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"]
    assert rows == ["Overview", "WebRTC", "Processes", "Ingest", "HTTP"]
    per_process = [
        (title, expr)
        for title, expr in dashboard_expressions()
        if re.search(r"dragonfork_(process_\w+|webrtc_viewers_active|webrtc_source_idle_seconds)\b", expr)
        or "dragonfork:process_" in expr
    ]
    assert per_process and all('process=~"$process"' in expr for _, expr in per_process), per_process
    taken = set()
    for panel in dashboard["panels"]:
        box = panel["gridPos"]
        cells = {
            (x, y) for x in range(box["x"], box["x"] + box["w"]) for y in range(box["y"], box["y"] + box["h"])
        }
        assert box["x"] + box["w"] <= 24 and not cells & taken, f"{panel['title']!r} overlaps another panel"
        taken |= cells


def test_deploy_readme_lists_every_alert() -> None:
    text = (REPO / "deploy" / "README.md").read_text()
    assert [rule["alert"] for rule in rules() if "alert" in rule] == re.findall(
        r"^\| `(Dragonfork\w+)`", text, re.M
    )
