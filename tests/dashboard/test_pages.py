"""The dashboard in a real browser (Playwright driving Debian's Chromium) against a live controller."""

from __future__ import annotations

import re
from typing import Any

import httpx
from fastapi.routing import APIRoute, iter_route_contexts

from controller.rollouts import RolloutState
from tests.dashboard.conftest import ARTIFACTS, FLEET, LiveController
from tests.services import wait_until


def _page(browser: Any, live: LiveController) -> tuple[Any, list[str]]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    return page, requested


def _sign_in(page: Any, live: LiveController, role: str, target: str = "/ui/") -> None:
    page.goto(live.url + target)
    assert "/ui/login" in page.url
    page.fill("#token", live.tokens[role])
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(re.escape(live.url + target) + r"(\?.*)?$"))


def test_pages_need_a_signed_in_operator_token(browser: Any, live_controller: LiveController) -> None:
    page, _ = _page(browser, live_controller)
    page.goto(live_controller.url + "/ui/devices/orin-1")
    assert "/ui/login" in page.url and "orin-1" not in page.content().split("<main>", 1)[1].split("name=\"next\"")[0]
    page.fill("#token", "efo_not-a-real-token")
    page.click("button[type=submit]")
    assert "unknown, revoked or expired" in page.inner_text("[role=alert]")
    page.fill("#token", live_controller.tokens["viewer"])
    page.click("button[type=submit]")
    page.wait_for_url(live_controller.url + "/ui/devices/orin-1")  # back where the operator was going
    assert page.inner_text("h1").startswith("orin-1")


def test_every_dashboard_route_refuses_a_request_without_a_session(live_controller: LiveController) -> None:
    ui = next(r.app for r in live_controller.app.routes if getattr(r, "path", "") == "/ui")
    routes = [(c.path, c.methods or set()) for c in iter_route_contexts(ui.routes)
              if isinstance(c.route, APIRoute) and c.path not in ("/login", "/logout")]
    assert len(routes) >= 7
    with httpx.Client(base_url=live_controller.url, follow_redirects=False) as client:
        for route_path, methods in routes:
            path = "/ui" + re.sub(r"\{[^}]+\}", "x", route_path)
            for method in methods:
                r = client.request(method, path, cookies={"edgefleet_session": "efo_forged"})
                assert r.status_code == 303 and r.headers["location"].startswith("/ui/login"), (method, path)
        assert client.get("/").headers["location"] == "/ui/"


def test_fleet_overview_groups_devices_by_hardware_class(browser: Any, live_controller: LiveController) -> None:
    page, requested = _page(browser, live_controller)
    _sign_in(page, live_controller, "viewer")
    for device_id, _, variant in FLEET:
        row = page.locator(f"tr[data-device='{device_id}']")
        assert variant in row.inner_text()
    headings = page.locator("section h2").all_inner_texts()
    assert {"jetson-orin (2)", "rpi5 (2)", "intel-x86 (2)"} <= {h.strip() for h in headings}
    assert "offline" in page.locator("tr[data-device='nuc-2']").inner_text()
    assert page.inner_text("#online-count") == "5"
    assert "r-v2" in page.inner_text("main")  # the active rollout is linked from the overview
    page.screenshot(path=str(ARTIFACTS / "fleet.png"), full_page=True)
    assert requested and all(u.startswith(live_controller.url) for u in requested), requested


def test_device_page_charts_latency_with_the_version_change(browser: Any, live_controller: LiveController) -> None:
    page, requested = _page(browser, live_controller)
    _sign_in(page, live_controller, "viewer", "/ui/devices/orin-1")
    chart = page.locator("svg.chart").first
    for name in ("p50", "p95", "p99"):
        points = chart.locator(f"polyline[data-series='{name}']").get_attribute("points")
        assert points is not None and len(points.split()) >= 5
    assert "v2" in chart.locator(".marker-label").all_text_contents()
    gates = page.locator("table.gates").inner_text()
    assert "passed" in gates and "ort-fp32-cuda" in gates
    assert "gate_passed" in page.locator("table.events").inner_text()
    assert page.inner_text("#samples-total") == "3"  # captured samples: 2 random, 1 low confidence
    capture = page.locator("#capture tbody tr").all_inner_texts()  # counter, this run, all runs
    assert "uploaded\t3\t8" in capture and "captured_random\t2\t7" in capture and "pending\t1\t—" in capture
    assert "2 agent run(s)" in page.inner_text("#capture")
    page.screenshot(path=str(ARTIFACTS / "device.png"), full_page=True)
    page.goto(live_controller.url + "/ui/devices/pi5-1")
    assert "accuracy 0.110 below 0.900" in page.locator("table.gates").inner_text()
    assert "reports no capture counters" in page.inner_text("#capture")
    assert all(u.startswith(live_controller.url) for u in requested)


def test_model_page_lists_variants_and_the_frontier(browser: Any, live_controller: LiveController) -> None:
    page, _ = _page(browser, live_controller)
    _sign_in(page, live_controller, "viewer", "/ui/models")
    page.click("text=digits")
    page.wait_for_url(live_controller.url + "/ui/models/digits/1")
    variants = page.locator("table.variants").inner_text()
    assert "0.9711" in variants and "0.9622" in variants
    legend = page.locator("svg.chart .legend").all_text_contents()
    assert "build host" in legend and "gate: rpi5" in legend and "live: rpi5" in legend
    page.screenshot(path=str(ARTIFACTS / "model.png"), full_page=True)


def test_operator_pauses_and_resumes_a_running_rollout(browser: Any, live_controller: LiveController) -> None:
    engine = live_controller.engine
    assert engine.store.load("r-v2").state == RolloutState.RUNNING
    page, _ = _page(browser, live_controller)
    _sign_in(page, live_controller, "operator", "/ui/rollouts/r-v2")
    assert page.inner_text("#rollout-state") == "running"
    assert page.locator("[data-wave='1'] tr[data-device]").count() == 1
    page.screenshot(path=str(ARTIFACTS / "rollout-running.png"), full_page=True)
    page.click("button.btn-pause")
    page.wait_for_url(re.compile(r".*/ui/rollouts/r-v2\?message=pause.*"))
    assert page.inner_text("#rollout-state") == "paused"
    assert engine.store.load("r-v2").state == RolloutState.PAUSED
    assert "dashboard:ui-operator" in page.locator("table.history").inner_text()  # the audit trail
    page.screenshot(path=str(ARTIFACTS / "rollout-paused.png"), full_page=True)
    page.click("button.btn-resume")
    wait_until(lambda: engine.store.load("r-v2").state == RolloutState.RUNNING, message="resumed")
    assert page.inner_text("#rollout-state") == "running"


def test_a_viewer_cannot_act_on_a_rollout(browser: Any, live_controller: LiveController) -> None:
    page, _ = _page(browser, live_controller)
    _sign_in(page, live_controller, "viewer", "/ui/rollouts/r-v2")
    assert page.locator("button.btn-pause").count() == 0
    cookie = next(c["value"] for c in page.context.cookies() if c["name"] == "edgefleet_session")
    with httpx.Client(base_url=live_controller.url) as client:
        r = client.post("/ui/rollouts/r-v2/pause", cookies={"edgefleet_session": cookie}, data={"csrf": "wrong"})
        assert r.status_code == 403
        op = live_controller.tokens["operator"]
        r = client.post("/ui/rollouts/r-v2/pause", cookies={"edgefleet_session": op}, data={"csrf": "forged"})
        assert r.status_code == 403 and "stale or came from another site" in r.text
    assert live_controller.engine.store.load("r-v2").state == RolloutState.RUNNING


def test_device_page_tables_the_capture_counters_of_this_run_and_all_runs(live_controller: LiveController) -> None:
    """The HTML itself (no browser needed): orin-1's agent restarted once, pi5-1's sends no counters."""
    cookies = {"edgefleet_session": live_controller.tokens["viewer"]}
    with httpx.Client(base_url=live_controller.url, cookies=cookies) as client:
        page = client.get("/ui/devices/orin-1")
        assert page.status_code == 200
        section = page.text.split('id="capture"', 1)[1].split("</section>", 1)[0]
        rows = re.findall(r"<tr><td>(\w+)</td><td>(\d+)</td><td>([^<]+)</td></tr>", section)
        assert ("uploaded", "3", "8") in rows and ("captured_random", "2", "7") in rows
        assert ("pending", "1", "—") in rows and "2 agent run(s)" in section
        other = client.get("/ui/devices/pi5-1").text.split('id="capture"', 1)[1].split("</section>", 1)[0]
        assert "reports no capture counters" in other
