"""The agent as a user runs it (`vnix agent`), with QEMU VMs: lifecycle, SIGKILL and restart.

The guests are the idle PVH guest from vnix.hypervisor.testing (prints a ready line, sleeps in
hlt, echoes the serial port, powers off on the ACPI button): five of them cost almost no CPU,
so the restart test runs the full five the issue asks for.
"""
from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_process import Agent, running_agent
from websockets.sync.client import connect

from vnix.hypervisor.testing import READY_LINE, build_idle_guest, toolchain_available

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU"),
    pytest.mark.skipif(not toolchain_available(), reason="needs binutils for the test guest"),
]
TOKEN = "integration-token"


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    yield from running_agent(tmp_path, "qemu", TOKEN, build_idle_guest(tmp_path / "idle.elf"))


def test_qemu_vm_start_pause_resume_suspend_stop(agent: Agent) -> None:
    r = agent.http.post("/vms", json={"name": "q1", "image": "idle", "memory": "64M",
                                      "accel": "tcg"})
    assert r.status_code == 201, r.text
    vm = r.json()
    assert vm["state"] == "running" and vm["accel"] == "tcg" and vm["pid"]
    agent.wait_console("q1", READY_LINE)
    # the consoles over WebSocket: serial history first, then live; VNC relays RFB bytes
    base = f"ws://127.0.0.1:{agent.port}/vms/q1"
    with connect(f"{base}/console/ws?token={TOKEN}") as ws:
        assert READY_LINE.encode() in ws.recv(timeout=5)
        ws.send("ws-typed\n")
        got = b""
        while b"ws-typed" not in got:
            got += ws.recv(timeout=5)
    with connect(f"{base}/vnc/ws", additional_headers={"Authorization": f"Bearer {TOKEN}"},
                 subprotocols=["binary"]) as ws:
        assert ws.recv(timeout=5).startswith(b"RFB 003.008")  # RFC 6143 7.1.1 ProtocolVersion
    assert agent.http.post("/vms/q1/pause").json()["state"] == "paused"
    assert agent.http.post("/vms/q1/resume").json()["state"] == "running"
    agent.http.post("/vms/q1/console", json={"text": "typed-through-agent\n"})
    agent.wait_console("q1", "typed-through-agent")
    assert agent.http.post("/vms/q1/suspend").json()["state"] == "suspended"
    vm = agent.http.post("/vms/q1/resume-from-disk").json()
    assert vm["state"] == "running"
    agent.http.post("/vms/q1/console", json={"text": "after-resume\n"})
    agent.wait_console("q1", "after-resume")  # the restored guest still runs its loop
    vm = agent.http.post("/vms/q1/stop", json={"timeout": 10}).json()
    assert vm["state"] == "stopped" and vm["detail"] == "the guest powered off"
    assert agent.http.get("/vms/q1").json()["console_tail"][-1] == "vnix-idle-guest: power off"
    r = agent.http.post("/vms/q1/pause")
    assert r.status_code == 409 and "it is stopped" in r.json()["error"]


TINY = Path(os.environ.get("VNIX_HOME", Path.home() / ".local/share/vnix")) / "images/tiny"


@pytest.mark.skipif(not (TINY / "manifest.json").is_file(), reason="run `vnix image build tiny`")
def test_tiny_linux_guest_through_the_agent(agent: Agent) -> None:
    r = agent.http.post("/images", json={"name": "tiny", "tiny": True})
    assert r.status_code == 201, r.text
    assert r.json()["kind"] == "linux" and r.json()["disk_format"] == "raw"
    t0 = time.monotonic()
    vm = agent.http.post("/vms", json={"name": "lin", "image": "tiny", "memory": "256M"}).json()
    assert vm["disks"][0]["format"] == "qcow2"  # the VM writes to its overlay only
    agent.wait_console("lin", "vnix-guest: ready", timeout=120)
    boot_s = time.monotonic() - t0
    agent.http.post("/vms/lin/console", json={"text": "echo answer-$((6*7))\n"})
    agent.wait_console("lin", "answer-42", timeout=60)
    assert agent.http.post("/vms/lin/pause").json()["state"] == "paused"
    assert agent.http.post("/vms/lin/resume").json()["state"] == "running"
    r = agent.http.delete("/images/tiny")
    assert r.status_code == 409 and "in use by VM(s) lin" in r.json()["error"]
    vm = agent.http.post("/vms/lin/stop", json={"timeout": 5, "force_after": True}).json()
    assert vm["state"] == "stopped"
    print(f"tiny guest ready after {boot_s:.1f}s")


def test_five_vms_survive_agent_sigkill(agent: Agent) -> None:
    names = [f"v{i}" for i in range(5)]
    pids = {}
    for n in names:
        r = agent.http.post("/vms", json={"name": n, "image": "idle", "memory": "48M"})
        assert r.status_code == 201, r.text
        pids[n] = r.json()["pid"]
    for n in names:
        agent.wait_console(n, READY_LINE)
    agent.http.post("/vms/v1/pause")

    agent.kill()
    for n in names:
        os.kill(pids[n], 0)  # still alive without the agent
    os.kill(pids["v4"], signal.SIGKILL)  # and one dies while nobody watches
    agent.start()

    vms = {v["name"]: v for v in agent.http.get("/vms").json()}
    assert {n: vms[n]["state"] for n in names} == {
        "v0": "running", "v1": "paused", "v2": "running", "v3": "running", "v4": "crashed"}
    assert vms["v0"]["pid"] == pids["v0"]
    assert vms["v4"]["console_tail"][-1] == READY_LINE and "died" in vms["v4"]["detail"]
    # still managed: every action works on the VMs the previous agent started
    assert agent.http.post("/vms/v1/resume").json()["state"] == "running"
    assert agent.http.post("/vms/v0/pause").json()["state"] == "paused"
    agent.http.post("/vms/v2/console", json={"text": "still-here\n"})
    agent.wait_console("v2", "still-here")
    assert agent.http.post("/vms/v3/stop", json={"timeout": 10}).json()["state"] == "stopped"
    assert agent.http.post("/vms/v4/start").json()["state"] == "running"
    metrics = agent.http.get("/metrics").text
    assert 'vnix_vm_up{state="running",vm="v2"} 1.0' in metrics
    for n in names:
        assert agent.http.delete(f"/vms/{n}").status_code == 204
    for n in ("v0", "v1", "v2"):
        with pytest.raises(ProcessLookupError):
            for _ in range(50):
                os.kill(pids[n], 0)
                time.sleep(0.1)
