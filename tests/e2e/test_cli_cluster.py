"""`vnix cluster ...` as a user runs it: a real manager over HTTP (in-process fake agents), the
CLI as a subprocess; tables, --json, exit statuses, one-line errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from vnix.api.app import create_api
from vnix.cluster.testing import ADMIN_PASSWORD, FakeAgents, fake_manager
from vnix.cluster.vcluster import parse_cluster
from vnix.cluster.vcluster.testlab import free_port

LAB = """<?xml version="1.0"?>
<cluster name="lab">
  <profile name="small" memory="64M"/>
  <group name="head" count="1" image="tiny" profile="small"/>
  <group name="work" count="2" image="tiny" profile="small">
    <placement policy="anti-affinity"/>
  </group>
</cluster>
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("cli-cluster")
    agents = FakeAgents(tmp / "agents", ["h1", "h2"])
    manager = fake_manager(tmp, agents)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_api(manager), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "manager did not start"
        time.sleep(0.05)
    token = httpx.post(f"{url}/api/v1/login", json={"name": "admin",
                                                    "password": ADMIN_PASSWORD}).json()["token"]
    yield {**os.environ, "VNIX_URL": url, "VNIX_TOKEN": token, "COLUMNS": "160",
           "TMPDIR": str(tmp)}
    server.should_exit = True
    thread.join(10)


def vnix(env: dict[str, str], *args: str, code: int = 0) -> str:
    r = subprocess.run([sys.executable, "-m", "vnix", "cluster", *args], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == code, (args, r.stdout, r.stderr)
    if code:
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("vnix: error: "), r.stderr
        assert "Traceback" not in r.stderr
        return lines[0]
    return r.stdout


def test_cluster_commands_end_to_end(env: dict[str, str], tmp_path: Path) -> None:
    f = tmp_path / "lab.xml"
    f.write_text(LAB)
    shown = vnix(env, "create", str(f))
    assert "lab-work-1" in shown and "3 of 3 node(s) running" in shown
    listed = json.loads(vnix(env, "list", "--json"))
    assert [(c["name"], c["nodes"], c["running"]) for c in listed] == [("lab", 3, 3)]
    assert "lab" in vnix(env, "list") and "workx2" in vnix(env, "list")
    detail = json.loads(vnix(env, "show", "lab", "--json"))
    work_hosts = {n["host"] for n in detail["node_list"] if n["group"] == "work"}
    assert work_hosts == {"h1", "h2"}

    exported = tmp_path / "out.xml"
    vnix(env, "export", "lab", "-o", str(exported))
    assert parse_cluster(exported.read_text()) == parse_cluster(LAB)
    assert parse_cluster(vnix(env, "export", "lab")) == parse_cluster(LAB)
    job = json.loads(vnix(env, "import", str(exported), "--name", "lab2", "--json"))
    assert job["state"] == "succeeded" and len(job["result"]["nodes"]) == 3

    assert "lab/head: 3 node(s) (+2, -0)" in vnix(env, "scale", "lab", "head", "3")
    out = vnix(env, "stop", "lab", "--group", "work", "--force")
    assert "stop: 2 node(s) done, 0 skipped" in out
    out = vnix(env, "start", "lab")
    assert "start: 2 node(s) done, 3 skipped" in out and "it is running" in out
    out = vnix(env, "move", "lab2-work-1", "--to", "lab")
    assert "re-assigned lab2 -> lab/work" in out
    detail = json.loads(vnix(env, "show", "lab", "--json"))
    assert {g["name"]: g["count"] for g in detail["groups"]} == {"head": 3, "work": 3}

    vnix(env, "profile", "save", "big", "--cpus", "2", "--memory", "1G")
    profiles = json.loads(vnix(env, "profile", "list", "--json"))
    assert [(p["name"], p["cpus"], p["memory_mib"]) for p in profiles] == [("big", 2, 1024)]
    vnix(env, "profile", "delete", "big")
    for name in ("lab", "lab2"):
        assert f"cluster {name} deleted" in vnix(env, "delete", name)
    assert json.loads(vnix(env, "list", "--json")) == []


def test_bad_input_is_one_line_and_exit_2(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text(LAB.replace('<group name="head" count="1"', '<group name="head"'))
    assert vnix(env, "create", str(bad), code=2) == (
        "vnix: error: bad.xml:4: element 'group': missing required attribute 'count'")
    bomb = tmp_path / "bomb.xml"
    bomb.write_text('<?xml version="1.0"?>\n<!DOCTYPE c [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                    '\n<cluster name="x"><description>&x;</description></cluster>')
    line = vnix(env, "create", str(bomb), code=2)
    assert "DOCTYPE" in line and "root:" not in line
    assert "cannot read" in vnix(env, "create", str(tmp_path / "missing.xml"), code=2)
    assert "no cluster 'ghost'" in vnix(env, "show", "ghost", code=2)
    assert "no cluster 'ghost'" in vnix(env, "delete", "ghost", code=2)
    assert "COUNT must be 0 or more" in vnix(env, "scale", "ghost", "g", "--", "-1", code=2)
    assert "not a whole number of MiB" in vnix(env, "profile", "save", "p", "--memory", "1K",
                                               code=2)
    no_manager = {**env, "VNIX_URL": f"http://127.0.0.1:{free_port()}"}
    assert "cannot reach the manager" in vnix(no_manager, "list", code=1)
    assert json.loads(vnix(env, "list", "--json")) == []  # nothing was stored
