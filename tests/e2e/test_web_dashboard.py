"""The dashboard as a person uses it: Debian's chromium (headless, driven by Playwright) against
a real `vnix up` (tmp VNIX_HOME, QEMU TCG tiny guests).

Logs in, deploys a 2-node XML cluster from the overview, watches its nodes turn running,
opens a node's serial console and runs a command in the guest, sees a graph with data points
(and the same figure on /metrics), then logs in as a guest: no action anywhere, and a direct
action call is refused with 403. Screenshots go to test-artifacts/web/.

The golden snapshots page is driven in the same browser against a manager over in-process
fake agents (vnix.cluster.testing: FakeAgents with FakeGolden; a real snapshot needs KVM and
the native driver, which `vnix up` here does not run): make one from the form and watch its
job, make a VM from it in the overview's form, and see a delete refused while it has a clone.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from vnix.images import ImageError
from vnix.images.store import image_dir, load_image

pytestmark = [pytest.mark.qemu]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
ADMIN_PASSWORD = "admin-web-pass"
GUEST_PASSWORD = "guest-web-pass"
CLUSTER = """<?xml version="1.0" encoding="UTF-8"?>
<cluster name="webc" version="1">
  <description>two tiny nodes deployed from the dashboard</description>
  <profile name="small" cpus="1" memory="128M" driver="qemu"/>
  <group name="node" count="2" image="tiny" profile="small"/>
</cluster>
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("needs qemu-system-x86_64")
    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium (scripts/install-deps.sh)")
    try:
        load_image("tiny")
    except ImageError:
        pytest.skip("the tiny image is not built (make image)")
    tmp = tmp_path_factory.mktemp("web")
    (tmp / "home" / "images").mkdir(parents=True)
    (tmp / "home" / "images" / "tiny").symlink_to(image_dir("tiny"))
    env = {**os.environ, "VNIX_HOME": str(tmp / "home"), "VNIX_ADMIN_PASSWORD": ADMIN_PASSWORD}
    for key in ("VNIX_URL", "VNIX_TOKEN"):
        env.pop(key, None)
    port = free_port()
    r = subprocess.run([sys.executable, "-m", "vnix", "up", "--detach", "--listen",
                        f"127.0.0.1:{port}", "--driver", "qemu", "--interval", "1"],
                       env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    url = f"http://127.0.0.1:{port}"
    api = httpx.Client(base_url=url, timeout=60)
    token = api.post("/api/v1/login", json={"name": "admin", "password": ADMIN_PASSWORD}
                     ).json()["token"]
    api.headers["Authorization"] = f"Bearer {token}"
    assert api.post("/api/v1/users", json={"name": "gus", "password": GUEST_PASSWORD,
                                           "role": "guest"}).status_code == 201
    try:
        yield {"url": url, "api": api, "env": env}
    finally:
        api.delete("/api/v1/clusters/webc", params={"wait": 120})
        api.close()
        subprocess.run([sys.executable, "-m", "vnix", "down"], env=env, timeout=60)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def log_in(page: Any, url: str, name: str, password: str) -> None:
    page.goto(url + "/")
    assert "/login" in page.url  # no session: the login page
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_selector("h1:text('Overview')")


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_dashboard_deploy_console_graph_and_guest(up: dict[str, Any], browser: Any) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(30_000)
    try:
        walk_through(page, up["url"], up["api"])
    except Exception:
        shot(page, "failed")  # what the page showed when it failed
        raise
    finally:
        page.close()


def walk_through(page: Any, url: str, api: httpx.Client) -> None:

    # -- log in: the overview shows the local host up --------------------------------------
    page.goto(url + "/")
    page.fill("input[name=name]", "admin")
    page.fill("input[name=password]", "wrong-password")
    page.click("button[type=submit]")
    assert "wrong user name or password" in page.inner_text("[role=alert]")
    log_in(page, url, "admin", ADMIN_PASSWORD)
    page.wait_for_selector("table.hosts tr[data-host] .badge:text('up')")
    shot(page, "01-overview")

    # -- deploy the XML cluster from the overview; the job's progress is shown live ---------
    page.fill("#deploy textarea[name=xml]", CLUSTER)
    page.click("#deploy button[type=submit]")
    job = page.wait_for_selector("#deploy-job .job")
    assert "create cluster" in job.inner_text()
    page.wait_for_selector("#deploy-job .job[data-state=succeeded]", timeout=120_000)
    page.wait_for_selector("table.clusters tr[data-cluster=webc]")

    # -- the cluster page: XML, groups, nodes turning running (polled) ---------------------
    page.click("table.clusters a:text('webc')")
    page.wait_for_selector("h1:has-text('Virtual cluster webc')")
    assert "<group" in page.inner_text("#cluster-xml")
    assert page.inner_text("table.groups tr[data-group=node] td:nth-child(2)") == "2"
    page.wait_for_function(
        "document.querySelectorAll('#nodes tr[data-actual=running]').length === 2",
        timeout=120_000)
    shot(page, "02-cluster-running")

    # -- a node's serial console: the guest's shell answers a command typed in xterm.js -----
    page.click("#nodes a:text('webc-node-0')")
    page.wait_for_selector("h1:text('VM webc-node-0')")
    page.click("#console-open")
    page.wait_for_selector("#console-status[data-state=connected]")
    rows = page.locator("#console .xterm-rows")
    page.wait_for_function("document.querySelector('#console .xterm-rows')"
                           ".innerText.includes('webc-node-0:/#')", timeout=120_000)
    page.click("#console")
    page.keyboard.type("echo web-$((6*7))\n", delay=20)
    page.wait_for_function("document.querySelector('#console .xterm-rows')"
                           ".innerText.includes('web-42')", timeout=30_000)
    assert re.search(r"^web-42\s*$", rows.inner_text(), re.M)
    shot(page, "03-console")

    # -- its display through noVNC (QEMU's VNC server, relayed by the manager) ---------------
    page.click("#vnc-open")
    page.wait_for_selector("#vnc-status[data-state=connected]")
    page.wait_for_selector("#vnc canvas")

    # -- a graph with data points, and the same figure on /metrics --------------------------
    mem = page.locator("figure.graph[data-metric=memory_mib]")
    page.wait_for_function("Number(document.querySelector("
                           "'figure.graph[data-metric=memory_mib] .points').dataset.points) >= 2",
                           timeout=60_000)
    assert mem.locator("canvas").count() >= 1  # uPlot drew it
    page.locator("section.graphs").scroll_into_view_if_needed()
    shot(page, "04-graphs")
    graph = page.request.get(url + "/ui/graph/vm/webc-node-0/memory_mib").json()
    assert graph["y"] and graph["y"][-1] == 128.0
    prom = api.get("/metrics").text
    assert 'vnix_vm_memory_mib{vm="webc-node-0"} 128.0' in prom
    cpu = page.request.get(url + "/ui/graph/vm/webc-node-0/cpu_time_s").json()
    assert cpu["unit"] == "%" and len(cpu["y"]) >= 1 and all(v >= 0 for v in cpu["y"])

    # -- a guest: sees everything, no action anywhere; a direct action call is refused -----
    page.click("button.link:text('log out')")
    page.wait_for_url("**/login")
    log_in(page, url, "gus", GUEST_PASSWORD)
    assert page.locator("#deploy, #create-vm").count() == 0
    page.goto(url + "/clusters/webc")
    page.wait_for_selector("#nodes tr[data-vm=webc-node-1]")
    assert page.locator("button[hx-post], form[hx-post]").count() == 0
    page.goto(url + "/vms/webc-node-1")
    assert page.locator("#vm-actions, #vnc-open").count() == 0
    assert "(read-only)" in page.inner_text(".console-card h2")
    shot(page, "05-guest")
    # the page's own CSRF token, so that only the role can be what refuses these
    csrf = json.loads(page.get_attribute("body", "hx-headers") or "{}")
    assert csrf.get("X-CSRF-Token")
    r = page.request.post(url + "/ui/vms/webc-node-1/stop", headers=csrf)
    assert r.status == 403 and "may not stop VM webc-node-1" in r.text()
    r = page.request.post(url + "/ui/clusters/webc/stop", headers=csrf)
    assert r.status == 403
    token = httpx.post(url + "/api/v1/login", json={"name": "gus", "password": GUEST_PASSWORD}
                       ).json()["token"]
    r = httpx.post(url + "/api/v1/vms/webc-node-1/stop",
                   headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403
    assert api.get("/api/v1/vms/webc-node-1").json()["desired"] == "running"


# -- golden snapshots, against a manager over fake agents (no QEMU needed) --------------------------
@pytest.fixture
def fake_site(tmp_path: Path) -> Iterator[str]:
    import uvicorn

    from vnix.api.app import create_api
    from vnix.cluster.testing import FakeAgents, FakeGolden, fake_manager

    if not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium (scripts/install-deps.sh)")
    agents = FakeAgents(tmp_path / "agents", ["h1", "h2"], native=["h2"])
    with FakeGolden(delay=3.0):  # a job that runs long enough to be seen running (1 s polls)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_api(fake_manager(tmp_path, agents)),
                                               host="127.0.0.1", port=port,
                                               log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "the manager did not start"
            time.sleep(0.05)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(20)


def test_snapshots_page_and_vm_from_snapshot(fake_site: str, browser: Any) -> None:
    from vnix.cluster.testing import ADMIN_PASSWORD as FAKE_ADMIN_PASSWORD

    url = fake_site
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(20_000)
    page.on("dialog", lambda d: d.accept())  # hx-confirm of the delete button
    try:
        log_in(page, url, "admin", FAKE_ADMIN_PASSWORD)
        page.click("header nav a:text('Snapshots')")
        page.wait_for_selector("h1:text('Golden snapshots')")
        assert "no golden snapshots" in page.inner_text("#snapshots")

        # -- make one: the job's progress is shown live, then the table reloads ---------------
        page.fill("#create-snapshot input[name=name]", "gold")
        page.fill("#create-snapshot input[name=memory]", "64M")
        page.select_option("#create-snapshot select[name=host]", "h2")
        page.click("#create-snapshot button[type=submit]")
        job = page.wait_for_selector("#snapshot-job .job")
        assert "create snapshot snapshot/gold" in job.inner_text()
        page.wait_for_selector("#snapshot-job .job[data-state=running]")
        page.wait_for_selector("#snapshot-job .job[data-state=succeeded]")
        row = page.wait_for_selector("#snapshots tr[data-snapshot=gold][data-host=h2]")
        assert "64 MiB" in row.inner_text()
        shot(page, "06-snapshots")

        # -- a VM from it: the form takes the snapshot's machine -------------------------------
        page.click("header nav a:text('Overview')")
        page.wait_for_selector("#create-vm select[name=snapshot] option[value=gold]",
                               state="attached")
        page.fill("#create-vm input[name=memory]", "512M")
        page.select_option("#create-vm select[name=snapshot]", "gold")
        for name, value in (("image", "tiny"), ("memory", "64M"), ("cpus", "1")):
            field = page.locator(f"#create-vm [name={name}]")
            assert field.is_disabled() and field.input_value() == value, name
        page.fill("#create-vm input[name=name]", "gold-clone")
        page.click("#create-vm button[type=submit]")
        page.wait_for_selector("#create-vm-job .job[data-state=succeeded]")
        page.wait_for_selector("table.vms tr[data-vm=gold-clone]")
        page.click("#create-vm button[type=submit]")  # again: the manager's refusal
        alert = page.wait_for_selector("#create-vm-job [role=alert]")
        assert "VM 'gold-clone' exists already" in alert.inner_text()
        page.select_option("#create-vm select[name=snapshot]", "")  # the user's values back
        assert page.locator("#create-vm [name=memory]").is_enabled()
        assert page.input_value("#create-vm [name=memory]") == "512M"

        # -- delete refused while the clone exists: the manager's reason ----------------------
        page.click("header nav a:text('Snapshots')")
        clones = page.wait_for_selector("#snapshots tr[data-snapshot=gold] td.clones")
        assert clones.inner_text().strip() == "1: gold-clone"
        page.click("#snapshots tr[data-snapshot=gold] button[data-action=delete]")
        alert = page.wait_for_selector("#snapshot-job [role=alert]")
        assert alert.inner_text() == ("snapshot 'gold' is used by VM(s) gold-clone on h2: "
                                      "delete those VMs first")
        shot(page, "07-snapshot-in-use")
    except Exception:
        shot(page, "failed-snapshots")
        raise
    finally:
        page.close()
