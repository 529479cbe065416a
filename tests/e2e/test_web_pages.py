"""The dashboard over HTTP without a browser: sessions and CSRF, roles on every action route,
actions that submit the same operations as the API, cluster pages, users and quotas, graphs
and /metrics from the same samples, downsampling and retention, and the console proxy
(manager -> a real agent with the fake driver, over loopback WebSockets)."""
from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from vnix.api.app import create_api
from vnix.cluster import metrics
from vnix.cluster.auth import SYSTEM
from vnix.cluster.manager import Manager, ManagerConfig
from vnix.cluster.metrics import Sample
from vnix.cluster.ops_admin import RegisterHost
from vnix.cluster.store import Store, sqlite_url
from vnix.cluster.tables import Job, Vm, utcnow
from vnix.cluster.testing import (
    ADMIN_PASSWORD,
    AGENT_TOKEN,
    FakeAgents,
    FakeGolden,
    fake_manager,
    image_files,
)
from vnix.cluster.vcluster import parse_cluster
from vnix.cluster.vcluster.testlab import free_port

LAB = """<?xml version="1.0"?>
<cluster name="lab">
  <profile name="small" memory="64M"/>
  <group name="head" count="1" image="tiny" profile="small"/>
  <group name="work" count="2" image="tiny" profile="small"/>
</cluster>
"""


class Browser:
    """A TestClient with a session cookie, sending the page's CSRF token like htmx does."""

    def __init__(self, app: object, name: str, password: str) -> None:
        self.c = TestClient(app)  # type: ignore[arg-type]
        r = self.c.post("/login", data={"name": name, "password": password})
        assert r.status_code == 200, r.text
        m = re.search(r'X-CSRF-Token&#34;: &#34;([0-9a-f]+)|X-CSRF-Token": "([0-9a-f]+)"',
                      r.text)
        assert m is not None
        self.csrf = m.group(1) or m.group(2)

    def post(self, path: str, **kw: object) -> object:
        return self.c.post(path, headers={"X-CSRF-Token": self.csrf, "HX-Request": "true"},
                           **kw)  # type: ignore[arg-type]

    def wait_job(self, html: str, timeout: float = 20) -> str:
        job = re.search(r'data-job="(\d+)"', html)
        assert job is not None, html
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            frag = self.c.get(f"/ui/jobs/{job.group(1)}").text
            state = re.search(r'data-state="(\w+)"', frag).group(1)  # type: ignore[union-attr]
            if state in ("succeeded", "failed", "cancelled"):
                return state
            time.sleep(0.1)
        raise AssertionError(f"job {job.group(1)} did not end")


@contextmanager
def serve(tmp: Path, agents: FakeAgents) -> Iterator[dict[str, object]]:
    """The manager's app over ``agents``, with bob (user) and gus (guest), and a logged-in
    Browser for each of admin, bob and gus."""
    manager = fake_manager(tmp, agents)
    app = create_api(manager)
    with TestClient(app) as admin_api:
        token = admin_api.post("/api/v1/login", json={"name": "admin",
                                                      "password": ADMIN_PASSWORD}).json()
        h = {"Authorization": f"Bearer {token['token']}"}
        for name, role in (("bob", "user"), ("gus", "guest")):
            assert admin_api.post("/api/v1/users", headers=h, json={
                "name": name, "password": f"{name}-password", "role": role}).status_code == 201
        yield {"app": app, "manager": manager, "api": admin_api, "h": h, "agents": agents,
               "admin": Browser(app, "admin", ADMIN_PASSWORD),
               "bob": Browser(app, "bob", "bob-password"),
               "gus": Browser(app, "gus", "gus-password")}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    tmp = tmp_path_factory.mktemp("web-pages")
    with serve(tmp, FakeAgents(tmp / "agents", ["h1", "h2"])) as s:
        yield s


def test_pages_need_a_session_and_login_sets_a_strict_cookie(site: dict) -> None:
    c = TestClient(site["app"])
    r = c.get("/vms/x", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/vms/x"
    assert "/api/docs" in c.get("/").text  # the login page links the API docs
    r = c.post("/login", data={"name": "admin", "password": "nope"})
    assert r.status_code == 401 and "wrong user name or password" in r.text
    r = c.post("/login", data={"name": "admin", "password": ADMIN_PASSWORD, "next": "//evil"},
               follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert c.get("/metrics").status_code == 200  # the session works for /metrics
    assert TestClient(site["app"]).get("/metrics").status_code == 401


def test_every_action_route_refuses_a_guest_and_needs_the_csrf_token(site: dict) -> None:
    from vnix.web import actions

    gus, admin = site["gus"], site["admin"]
    routes = sorted({r.path for r in actions.router.routes if getattr(r, "methods", None)
                     and "POST" in r.methods and r.path.startswith("/ui/")})
    assert len(routes) >= 9
    for path in routes:
        filled = re.sub(r"\{[^}]+\}", "x1", path.replace("{job_id}", "1"))
        filled = filled.replace("x1/x1", "x1/start")
        r = gus.post(filled, data={"name": "x1", "password": "p" * 8, "group": "g",
                                   "count": "1", "xml": LAB})
        assert r.status_code == 403, (path, r.status_code, r.text)
        r = admin.c.post(filled, data={"name": "x1"})  # no CSRF header: refused too
        assert r.status_code == 403 and "CSRF" in r.text, path


def test_a_guest_sees_pages_without_actions(site: dict) -> None:
    gus, admin = site["gus"], site["admin"]
    assert admin.wait_job(admin.post("/ui/vms", data={"name": "seen1"}).text) == "succeeded"
    for path in ("/", "/vms/seen1", "/hosts/h1"):
        page = gus.c.get(path)
        assert page.status_code == 200
        assert "hx-post" not in page.text, path
    assert "hx-post" in admin.c.get("/vms/seen1").text
    assert gus.c.get("/users").status_code == 403


def test_ui_actions_submit_the_api_operations(site: dict) -> None:
    bob, manager = site["bob"], site["manager"]
    r = bob.post("/ui/vms", data={"name": "bobvm", "memory": "128M", "cpus": "1"})
    assert r.status_code == 200 and "create vm vm/bobvm" in r.text
    assert bob.wait_job(r.text) == "succeeded"
    with manager.store.session() as s:
        job = s.get(Job, int(re.search(r'data-job="(\d+)"', r.text).group(1)))
        assert job.owner == "bob" and job.op["kind"] == "create_vm"
        assert job.op["memory"] == "128M" and job.op["name"] == "bobvm"
    r = bob.post("/ui/vms/bobvm/pause")
    assert bob.wait_job(r.text) == "succeeded"
    assert site["api"].get("/api/v1/vms/bobvm", headers=site["h"]).json()["actual"] == "paused"
    r = bob.post("/ui/vms/bobvm/pause")  # wrong state: the API's 409, shown on the page
    assert r.status_code == 409 and "cannot pause VM" in r.text
    r = bob.post("/ui/vms/seen1/stop")  # the admin's VM: bob may see it? no: 404 for a user
    assert r.status_code == 404
    r = bob.post("/ui/vms", data={"name": "Bad Name"})
    assert r.status_code == 400 and "name" in r.text


def test_cluster_deploy_page_scale_export_and_batch(site: dict) -> None:
    admin = site["admin"]
    r = admin.post("/ui/clusters", files={"file": ("lab.xml", LAB, "application/xml")},
                   data={"mode": "create"})
    assert r.status_code == 200 and "create cluster cluster/lab" in r.text
    assert admin.wait_job(r.text) == "succeeded"
    page = admin.c.get("/clusters/lab").text
    assert page.count('data-vm="lab-work-') == 2 and "&lt;group name=&#34;work&#34;" in page
    assert admin.wait_job(admin.post("/ui/clusters/lab/scale",
                                     data={"group": "work", "count": "3"}).text) == "succeeded"
    nodes = admin.c.get("/ui/clusters/lab/nodes").text
    assert "lab-work-2" in nodes
    exported = admin.c.get("/ui/clusters/lab/export")
    spec = parse_cluster(exported.content, "lab.xml")
    assert [(g.name, g.count) for g in spec.groups] == [("head", 1), ("work", 3)]
    assert admin.wait_job(admin.post("/ui/clusters/lab/stop").text) == "succeeded"
    assert 'data-actual="stopped"' in admin.c.get("/ui/clusters/lab/nodes").text
    r = admin.post("/ui/clusters", data={"xml": "<cluster name='x'><group/></cluster>"})
    assert r.status_code == 400 and "cluster.xml:1" in r.text  # the file's line numbers
    assert admin.wait_job(admin.post("/ui/clusters/lab/delete").text) == "succeeded"
    assert admin.c.get("/clusters/lab").status_code == 404


def test_users_and_quotas_page(site: dict) -> None:
    admin, api, h = site["admin"], site["api"], site["h"]
    r = admin.post("/ui/users", data={"name": "carol", "password": "carol-password",
                                      "role": "user", "max_vms": "2", "max_memory": "1G"})
    assert r.status_code == 200 and r.headers.get("hx-refresh") == "true"
    carol = api.get("/api/v1/users/carol", headers=h).json()
    assert (carol["max_vms"], carol["max_memory_mib"], carol["max_cpus"]) == (2, 1024, None)
    admin.post("/ui/users/carol/quota", data={"max_vms": "", "max_cpus": "4", "max_memory": ""})
    carol = api.get("/api/v1/users/carol", headers=h).json()
    assert (carol["max_vms"], carol["max_cpus"], carol["max_memory_mib"]) == (None, 4, None)
    assert 'data-user="carol"' in admin.c.get("/users").text
    assert admin.post("/ui/users", data={"name": "carol", "password": "x" * 8}).status_code == 409
    assert admin.post("/ui/users/carol/delete").status_code == 200
    assert api.get("/api/v1/users/carol", headers=h).status_code == 404


def test_graphs_and_metrics_show_the_same_figures(site: dict) -> None:
    admin, manager = site["admin"], site["manager"]
    assert admin.wait_job(admin.post("/ui/vms", data={"name": "graphed"}).text) == "succeeded"
    for _ in range(3):
        manager.monitor.poll_once(reconcile=False)
        time.sleep(0.05)
    page = admin.c.get("/vms/graphed").text
    for metric in ("cpu_time_s", "memory_mib", "balloon_mib"):
        assert f'data-metric="{metric}"' in page
    mem = admin.c.get("/ui/graph/vm/graphed/memory_mib").json()
    assert len(mem["x"]) == 3 and mem["y"] == [256.0] * 3 and mem["unit"] == "MiB"
    cpu = admin.c.get("/ui/graph/vm/graphed/cpu_time_s?window=24h").json()
    assert cpu["unit"] == "%" and len(cpu["y"]) == 2  # a rate between 3 counter samples
    prom = admin.c.get("/metrics").text
    assert 'vnix_vm_memory_mib{vm="graphed"} 256.0' in prom
    host_cpu = admin.c.get("/ui/graph/host/h1/cpu_percent").json()["y"][-1]
    line = re.search(r'^vnix_host_cpu_percent\{host="h1"\} (\S+)$', prom, re.M)
    assert line is not None and float(line.group(1)) == pytest.approx(host_cpu, abs=1e-3)
    assert re.search(r'^vnix_vm_cpu_time_s_total\{vm="graphed"\} ', prom, re.M)
    assert 'vnix_host_up{host="h1"} 1.0' in prom
    host = admin.c.get("/hosts/h1").text  # CPU, memory and network graphs
    for metric in ("cpu_percent", "memory_used_mib", "net_rx_bytes", "net_tx_bytes"):
        assert f'data-metric="{metric}"' in host
    rx = admin.c.get("/ui/graph/host/h1/net_rx_bytes").json()
    assert rx["unit"] == "B/s" and len(rx["y"]) >= 2 and min(rx["y"]) >= 0


def test_downsampling_averages_minutes_and_retention_prunes(tmp_path: Path) -> None:
    store = Store(sqlite_url(tmp_path / "m.db"))
    minute0 = utcnow().replace(second=0, microsecond=0)
    now = minute0 + timedelta(seconds=30)
    t0 = minute0 - timedelta(hours=2)
    keep = timedelta(minutes=90, seconds=30)
    with store.session() as s:  # every 10 s for 2 hours and 20 s: value = 6 * minute + i % 6
        for i in range(723):
            metrics.write(s, [Sample("vm", "a", "memory_mib", float(i // 6 * 6 + i % 6))],
                          t0 + timedelta(seconds=10 * i))
    with store.session() as s:
        assert metrics.maintain(s, keep, now) == 120  # the 120 minutes that have ended
    with store.session() as s:
        minutes = metrics.series(s, "vm", "a", "memory_mib", step=metrics.MINUTE)
        raw = metrics.series(s, "vm", "a", "memory_mib")
    # each minute is the mean of its six samples; minutes older than the retention are gone
    assert [v for _, v in minutes] == [m * 6 + 2.5 for m in range(30, 120)]
    assert metrics._utc(minutes[0][0]) == minute0 - timedelta(minutes=90)
    # raw samples older than an hour are gone, the current minute's are kept
    assert len(raw) == 360 and metrics._utc(raw[0][0]) >= now - timedelta(hours=1)
    with store.session() as s:
        assert metrics.maintain(s, keep, now) == 0  # no minute has ended since
        day = metrics.graph(s, "vm", "a", "memory_mib", timedelta(hours=24), now)
        hour = metrics.graph(s, "vm", "a", "memory_mib", timedelta(hours=1), now)
    assert len(day) == 90 + 3  # the minutes, then the raw samples of the running minute
    assert [t for t, _ in day] == sorted(t for t, _ in day)
    assert len(hour) == 360  # an hour's graph reads the raw tier
    store.close()


def test_rates_of_counters_skip_restarts() -> None:
    t = utcnow()
    pts = [(t, 10.0), (t + timedelta(seconds=2), 11.0), (t + timedelta(seconds=4), 0.5),
           (t + timedelta(seconds=6), 1.5)]
    assert [v for _, v in metrics.rates(pts, 100.0)] == [50.0, 50.0]


# -- golden snapshots: h1 has the fake driver only, h2 and h3 also the native one -------------------
@pytest.fixture(scope="module")
def snap_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """A site whose agents make golden snapshots and clones with FakeGolden (no KVM)."""
    tmp = tmp_path_factory.mktemp("web-snapshots")
    agents = FakeAgents(tmp / "agents", ["h1", "h2", "h3"], native=["h2", "h3"])
    with FakeGolden(delay=0.3) as golden, serve(tmp, agents) as s:
        yield s | {"golden": golden}


def make_snapshot(who: Browser, **form: str) -> str:
    """Make one through the page's form; the job's final state."""
    r = who.post("/ui/snapshots", data={"image": "tiny", "memory": "64M", "cpus": "1"} | form)
    assert r.status_code == 200 and f"create snapshot snapshot/{form['name']}" in r.text, r.text
    return who.wait_job(r.text)


def rows(html: str) -> list[tuple[str, str]]:
    """(host, snapshot) of each row of the snapshots table."""
    return [(h, n) for n, h in re.findall(r'data-snapshot="([^"]+)" data-host="([^"]+)"', html)]


def test_snapshots_page_lists_them_and_the_hosts_that_did_not_answer(snap_site: dict) -> None:
    admin, agents = snap_site["admin"], snap_site["agents"]
    assert make_snapshot(admin, name="listed", host="h2") == "succeeded"
    for who in ("admin", "bob", "gus"):
        page = snap_site[who].c.get("/snapshots")
        assert page.status_code == 200 and '<a href="/snapshots">Snapshots</a>' in page.text
        assert ("h2", "listed") in rows(page.text), who
        row = page.text[page.text.index('data-snapshot="listed"'):]
        row = row[:row.index("</tr>")]
        for text in ("<td>tiny</td>", "64 MiB", "<td>1</td>", "4.0 KiB", "2023-11-14 22:13 UTC",
                     'data-clones="0"'):
            assert text in row, (who, text, row)
        assert "data-unanswered" not in page.text
    agents.down.add("h3")
    try:
        frag = snap_site["bob"].c.get("/ui/snapshots").text
        warning = re.search(r'<div class="alert warning" data-unanswered="h3">(.*?)</div>',
                            frag, re.S)
        assert warning is not None and "connection refused" in warning.group(1), frag
        assert ("h2", "listed") in rows(frag)  # the hosts that answered are still listed
    finally:
        agents.down.discard("h3")


def test_admin_makes_a_snapshot_watching_its_job_and_deletes_it(snap_site: dict) -> None:
    admin = snap_site["admin"]
    page = admin.c.get("/snapshots").text
    form = page[page.index('<form id="create-snapshot"'):]
    form = form[:form.index("</form>")]
    assert "<option selected>tiny</option>" in form
    assert all(f'<option value="{h}">{h}</option>' in form for h in ("h1", "h2", "h3"))
    assert '<option value="all">all (every host that can)</option>' in form
    r = admin.post("/ui/snapshots", data={"name": "watched", "image": "tiny", "memory": "64M",
                                          "cpus": "1", "host": "all"})
    assert r.status_code == 200, r.text
    job_id = re.search(r'data-job="(\d+)"', r.text).group(1)  # type: ignore[union-attr]
    # the live fragment: polled every second until the job ends, then it fires the event on
    # which the snapshots table reloads
    assert f'hx-get="/ui/jobs/{job_id}" hx-trigger="every 1s"' in r.text
    assert "hx-trigger" not in {k.lower() for k in r.headers}
    assert admin.wait_job(r.text) == "succeeded"
    done = admin.c.get(f"/ui/jobs/{job_id}")
    assert 'data-state="succeeded"' in done.text and done.headers["hx-trigger"] == "vnix-job-done"
    assert "every 1s" not in done.text
    assert 'hx-trigger="every 10s, vnix-job-done from:body"' in admin.c.get("/snapshots").text
    table = admin.c.get("/ui/snapshots").text
    assert {("h2", "watched"), ("h3", "watched")} <= set(rows(table))  # h1: no native driver
    # delete the one on h3 (the row's host); h2 keeps its own
    r = admin.post("/ui/snapshots/watched/delete", data={"host": "h3"})
    assert r.status_code == 200 and 'data-state="succeeded"' in r.text, r.text
    assert r.headers["hx-trigger"] == "vnix-job-done"  # inline: done at once, the table reloads
    after = set(rows(admin.c.get("/ui/snapshots").text))
    assert ("h2", "watched") in after and ("h3", "watched") not in after
    r = admin.post("/ui/snapshots/watched/delete", data={"host": "h3"})
    assert r.status_code == 404 and 'role="alert"' in r.text
    assert "no snapshot &#39;watched&#39; on host h3" in r.text
    # refusals of the create form are its error line, with the manager's status
    for form_data, status, text in [
        ({"name": "watched"}, 409, "exists already on h2"),
        ({"name": "g2", "image": "nope"}, 404, "no image &#39;nope&#39; on any host"),
        ({"name": "g2", "host": "h1"}, 409, "its agent has no native driver"),
        ({"name": "Bad Name"}, 400, "name: String should match"),
        ({"name": "g2", "memory": "1M"}, 400, "too small"),
    ]:
        r = admin.post("/ui/snapshots", data={"image": "tiny", "memory": "64M"} | form_data)
        assert r.status_code == status and 'role="alert"' in r.text, (form_data, r.text)
        assert text in r.text, (form_data, r.text)


def test_delete_is_refused_while_a_clone_uses_it(snap_site: dict) -> None:
    admin, bob, gus = snap_site["admin"], snap_site["bob"], snap_site["gus"]
    assert make_snapshot(admin, name="used", host="h3") == "succeeded"
    assert admin.wait_job(admin.post("/ui/vms", data={"name": "adm-clone",
                                                      "snapshot": "used"}).text) == "succeeded"
    assert bob.wait_job(bob.post("/ui/vms", data={"name": "bob-clone",
                                                  "snapshot": "used"}).text) == "succeeded"
    r = admin.post("/ui/snapshots/used/delete", data={"host": "h3"})
    assert r.status_code == 409, r.text
    assert re.sub(r"\s+", " ", r.text).strip() == (
        '<div class="job error" role="alert">snapshot &#39;used&#39; is used by VM(s) adm-clone, '
        "bob-clone on h3: delete those VMs first</div>")
    # the clones: links to the VMs each may see (a user: their own), and how many there are
    def clones(who: Browser) -> str:
        frag = who.c.get("/ui/snapshots").text
        cell = re.search(r'data-snapshot="used" data-host="h3">.*?<td class="clones" '
                         r'data-clones="(\d+)">(.*?)</td>', frag, re.S)
        assert cell is not None, frag
        assert cell.group(1) == "2"
        return re.sub(r"\s+", " ", cell.group(2)).strip()
    both = '2: <a href="/vms/adm-clone">adm-clone</a>, <a href="/vms/bob-clone">bob-clone</a>'
    assert clones(admin) == both and clones(gus) == both
    assert clones(bob) == ('2: <a href="/vms/bob-clone">bob-clone</a> '
                           '<span class="muted">(1 not yours)</span>')
    for who, vm in ((admin, "adm-clone"), (bob, "bob-clone")):
        assert who.wait_job(who.post(f"/ui/vms/{vm}/delete").text) == "succeeded"
    r = admin.post("/ui/snapshots/used/delete", data={"host": "h3"})
    assert r.status_code == 200 and 'data-state="succeeded"' in r.text, r.text
    assert ("h3", "used") not in rows(admin.c.get("/ui/snapshots").text)


def test_a_user_or_guest_has_no_snapshot_controls_and_is_refused(snap_site: dict) -> None:
    admin = snap_site["admin"]
    assert make_snapshot(admin, name="kept", host="h2") == "succeeded"
    assert 'id="create-snapshot"' in admin.c.get("/snapshots").text
    assert "/ui/snapshots/kept/delete" in admin.c.get("/snapshots").text
    for name in ("bob", "gus"):
        who = snap_site[name]
        page = who.c.get("/snapshots").text
        assert ("h2", "kept") in rows(page)
        assert "hx-post" not in page and 'id="create-snapshot"' not in page, name
        r = who.post("/ui/snapshots", data={"name": "mine", "image": "tiny", "memory": "64M"})
        assert r.status_code == 403, (name, r.text)
        assert f"&#39;{name}&#39; may not create golden snapshot mine" in r.text
        r = who.post("/ui/snapshots/kept/delete", data={"host": "h2"})
        assert r.status_code == 403, (name, r.text)
        assert f"&#39;{name}&#39; may not delete golden snapshot kept" in r.text
    assert ("h2", "kept") in rows(admin.c.get("/ui/snapshots").text)
    assert not any(m[1] == "mine" for m in snap_site["golden"].made)


def test_vm_form_from_a_snapshot(snap_site: dict) -> None:
    admin, bob, manager = snap_site["admin"], snap_site["bob"], snap_site["manager"]
    assert make_snapshot(admin, name="form", host="h2", memory="96M", cpus="2") == "succeeded"
    overview = bob.c.get("/").text
    assert ('<select name="snapshot" hx-get="/ui/snapshot-choices" hx-trigger="load" '
            'hx-target="this"'
            in overview)
    choices = bob.c.get("/ui/snapshot-choices").text
    assert '<option value="">none: boot the image</option>' in choices
    assert ('<option value="form" data-image="tiny" data-memory="96M" data-cpus="2">'
            'form (tiny, 96 MiB, 2 vCPU)</option>') in choices
    assert "snapshot-choices" not in snap_site["gus"].c.get("/").text  # no create form
    # the machine is the snapshot's, whatever image/memory/cpus the form still sent
    r = bob.post("/ui/vms", data={"name": "from-form", "snapshot": "form", "image": "tiny",
                                  "memory": "256M", "cpus": "1"})
    assert r.status_code == 200 and "create vm vm/from-form" in r.text, r.text
    assert bob.wait_job(r.text) == "succeeded"
    with manager.store.session() as s:
        vm = s.get(Vm, "from-form")
        assert (vm.owner, vm.host, vm.memory_mib, vm.cpus, vm.image) == ("bob", "h2", 96, 2,
                                                                         "tiny")
        assert vm.spec["driver"] == "native"
    # the manager's refusals are the form's error line, never a 500
    for form_data, status, text in [
        ({"name": "x-nope", "snapshot": "nope"}, 404,
         "no snapshot &#39;nope&#39; on any host (known: "),
        ({"name": "x-bad", "snapshot": "Bad!"}, 400, "snapshot: String should match"),
        ({"name": "from-form", "snapshot": "form"}, 409, "exists already"),
        ({"name": "x-drv", "snapshot": "form", "driver": "fake"}, 400,
         "makes clones on the native driver, not &#39;fake&#39;"),
    ]:
        r = bob.post("/ui/vms", data=form_data)
        assert r.status_code == status and 'role="alert"' in r.text, (form_data, r.text)
        assert text in r.text, (form_data, r.text)
    assert bob.wait_job(bob.post("/ui/vms/from-form/delete").text) == "succeeded"


# -- the console proxy, over real sockets ----------------------------------------------------------
def _serve(app: object, port: int) -> uvicorn.Server:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,  # type: ignore[arg-type]
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return server


def test_console_proxy_relays_and_checks_roles(tmp_path: Path) -> None:
    from vnix.node.app import create_app

    agent_port = free_port()
    agent = _serve(create_app(tmp_path / "agent", AGENT_TOKEN, ["fake"], "fake",
                              reconcile=False), agent_port)
    manager = Manager(Store(sqlite_url(tmp_path / "m.db")), ManagerConfig(monitor=False))
    manager.ensure_admin(ADMIN_PASSWORD)
    try:
        url = f"http://127.0.0.1:{agent_port}"
        kernel, initrd = image_files(tmp_path / "files")
        client = manager.agent_for("h1", url, AGENT_TOKEN)
        from vnix.node.models import ImportImage

        client.call("import_image", ImportImage(name="tiny", kernel=str(kernel),
                                                initrd=str(initrd)))
        manager.submit(RegisterHost(name="h1", url=url, token=AGENT_TOKEN), SYSTEM)
        with TestClient(create_api(manager)) as c:
            tok = c.post("/api/v1/login", json={"name": "admin",
                                                "password": ADMIN_PASSWORD}).json()["token"]
            h = {"Authorization": f"Bearer {tok}"}
            assert c.post("/api/v1/vms?wait=20", headers=h, json={"name": "c1"}).status_code == 200
            c.post("/api/v1/users", headers=h, json={"name": "gus", "password": "gus-password",
                                                       "role": "guest"})
            gtok = c.post("/api/v1/login", json={"name": "gus", "password": "gus-password"}
                          ).json()["token"]
            with c.websocket_connect(f"/api/v1/vms/c1/console/ws?token={tok}") as ws:
                ws.send_text("echo proxied\r")
                seen = b""
                while b"echo proxied\r\n" not in seen:
                    seen += ws.receive_bytes()
            with c.websocket_connect("/api/v1/vms/c1/console/ws",
                                     headers={"Authorization": f"Bearer {gtok}"}) as ws:
                ws.send_text("rm -rf /\r")
                seen = b""
                while b"read-only console" not in seen:
                    seen += ws.receive_bytes()
            out = client.call("console", name="c1").lines
            assert not any("rm -rf" in line for line in out)  # the guest's input never arrived
            for path, code in (("/api/v1/vms/c1/console/ws", 4401),
                               (f"/api/v1/vms/nope/console/ws?token={tok}", 4404),
                               (f"/api/v1/vms/c1/vnc/ws?token={gtok}", 4403)):
                with pytest.raises(WebSocketDisconnect) as exc:
                    with c.websocket_connect(path) as ws:
                        ws.receive_bytes()
                assert exc.value.code == code, path
    finally:
        manager.stop()
        agent.should_exit = True


def test_static_assets_are_served_from_the_package(site: dict) -> None:
    c = site["admin"].c
    for path in ("/static/app.js", "/static/app.css", "/static/vendor/htmx.min.js",
                 "/static/vendor/uPlot.iife.min.js", "/static/vendor/xterm/xterm.js",
                 "/static/vendor/xterm/addon-fit.js", "/static/vendor/novnc/core/rfb.js"):
        assert c.get(path).status_code == 200, f"{path} (run `make web`)"
    page = c.get("/vms/seen1").text
    assert not re.search(r'(src|href)="https?://', page)  # nothing from another site
    assert json.loads(re.search(r"content='(\{.*?\})'", page).group(1))["responseHandling"]
