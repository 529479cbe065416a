"""The native driver as a user runs it: ``vnix agent --driver native`` with the test kit's
``idle`` guest (a kernel image in the agent's store): start, console, pause, resume, info with
exit counters and balloon, graceful and forced stop; the agent SIGKILLed and restarted while
five native VMs run -> all still managed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agent_process import Agent, running_agent

from vnix.testkit.runner import TESTKIT_DIR

pytestmark = [pytest.mark.kvm,
              pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm")]
TOKEN = "native-token"


def ticks(agent: Agent, vm: str) -> int:
    return sum(1 for ln in agent.console(vm) if ln.startswith("tick "))


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    subprocess.run(["make", "-s", "-C", str(TESTKIT_DIR), "build/idle.elf"], check=True, capture_output=True)
    yield from running_agent(tmp_path, "native", TOKEN, TESTKIT_DIR / "build" / "idle.elf")


def test_native_vm_lifecycle_through_the_agent(agent: Agent) -> None:
    r = agent.http.post("/vms", json={"name": "n1", "image": "idle", "memory": "64M", "driver": "native"})
    assert r.status_code == 201, r.text
    vm = r.json()
    assert vm["state"] == "running" and vm["driver"] == "native" and vm["pid"]
    agent.wait_console("n1", "tick 1")
    agent.http.post("/vms/n1/console", json={"text": "typed-through-agent\n"})
    agent.wait_console("n1", "echo: typed-through-agent")

    assert agent.http.post("/vms/n1/pause").json()["state"] == "paused"
    time.sleep(0.3)
    before = ticks(agent, "n1")
    time.sleep(1.5)
    assert ticks(agent, "n1") == before  # paused: no ticks
    assert agent.http.get("/vms/n1").json()["state"] == "paused"
    assert agent.http.post("/vms/n1/resume").json()["state"] == "running"
    agent.wait_console("n1", f"tick {before + 1}", timeout=5)

    info = agent.http.get("/vms/n1").json()
    assert info["exit_counters"]["io_out"] > 10 and info["cpu_time_s"] > 0
    assert info["memory_mib"] == 64 and info["rss_mib"] > 0
    r = agent.http.post("/vms/n1/balloon", json={"target_mib": 48})
    assert r.status_code < 300, r.text

    vm = agent.http.post("/vms/n1/stop", json={"timeout": 10}).json()
    assert vm["state"] == "stopped" and vm["detail"] == "guest powered off (ACPI S5)"
    assert agent.console("n1")[-1] == "power off"
    r = agent.http.post("/vms/n1/pause")
    assert r.status_code == 409 and "it is stopped" in r.json()["error"]

    assert agent.http.post("/vms/n1/start").json()["state"] == "running"
    agent.wait_console("n1", "ready: idle")
    assert agent.http.post("/vms/n1/force-stop").json()["state"] == "stopped"


def test_graceful_stop_refused_by_the_guest_is_not_forced_unless_asked(agent: Agent, tmp_path: Path) -> None:
    r = agent.http.post("/vms", json={"name": "stubborn", "image": "idle", "memory": "64M",
                                      "cmdline": "cad=ignore"})
    assert r.status_code == 201, r.text
    agent.wait_console("stubborn", "tick 1")
    vm = agent.http.post("/vms/stubborn/stop", json={"timeout": 1}).json()
    assert vm["state"] == "running"
    agent.wait_console("stubborn", "ignoring ctrl-alt-del")
    vm = agent.http.post("/vms/stubborn/stop", json={"timeout": 1, "force_after": True}).json()
    assert vm["state"] == "stopped"


def test_five_native_vms_survive_agent_sigkill(agent: Agent) -> None:
    names = [f"v{i}" for i in range(5)]
    pids = {}
    for n in names:
        r = agent.http.post("/vms", json={"name": n, "image": "idle", "memory": "32M"})
        assert r.status_code == 201, r.text
        pids[n] = r.json()["pid"]
    for n in names:
        agent.wait_console(n, "tick 1")
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
    assert "without a word" in vms["v4"]["detail"]  # SIGKILL: no stats.json written
    # still managed: every action works on the VMs the previous agent started
    assert agent.http.post("/vms/v1/resume").json()["state"] == "running"
    assert agent.http.post("/vms/v0/pause").json()["state"] == "paused"
    agent.http.post("/vms/v2/console", json={"text": "still-here\n"})
    agent.wait_console("v2", "echo: still-here")
    assert agent.http.get("/vms/v2").json()["exit_counters"]["io_out"] > 0
    assert agent.http.post("/vms/v3/stop", json={"timeout": 10}).json()["state"] == "stopped"
    assert agent.http.post("/vms/v4/start").json()["state"] == "running"
    for n in names:
        assert agent.http.delete(f"/vms/{n}").status_code == 204
    for n in ("v0", "v1", "v2", "v4"):
        with pytest.raises(ProcessLookupError):
            for _ in range(50):
                os.kill(pids[n] if n != "v4" else 2**22 + 1, 0)
                time.sleep(0.1)


def test_suspend_to_disk_and_resume_continue_the_guest(agent: Agent) -> None:
    r = agent.http.post("/vms", json={"name": "s1", "image": "idle", "memory": "64M"})
    assert r.status_code == 201, r.text
    agent.wait_console("s1", "tick 2")
    old_pid = r.json()["pid"]
    vm = agent.http.post("/vms/s1/suspend").json()
    assert vm["state"] == "suspended", vm
    with pytest.raises(ProcessLookupError):  # no VMM process while suspended
        for _ in range(50):
            os.kill(old_pid, 0)
            time.sleep(0.1)
    last = ticks(agent, "s1")
    vm = agent.http.post("/vms/s1/resume-from-disk").json()
    assert vm["state"] == "running" and vm["pid"] != old_pid, vm
    # the restored guest carries on from its own count (its memory came back), and answers
    agent.wait_console("s1", f"tick {last + 1}", timeout=10)
    agent.http.post("/vms/s1/console", json={"text": "after-restore\n"})
    agent.wait_console("s1", "echo: after-restore")
    assert agent.http.post("/vms/s1/stop", json={"timeout": 10}).json()["state"] == "stopped"


def wait_state(agent: Agent, vm: str, state: str, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        info: dict[str, Any] = agent.http.get(f"/vms/{vm}").json()
        if info["state"] == state or time.monotonic() > deadline:
            assert info["state"] == state, info
            return info
        time.sleep(0.1)


def test_clones_take_serial_input_and_end_like_any_native_vm(agent: Agent) -> None:
    """Clones made by the clone server (POST /vms with a snapshot) are typed into through the
    agent (their serial socket); a guest that powers off by itself shows STOPPED with its
    reason and one that triple-faults CRASHED with it (both from the clone's stats.json); a
    stop we ask for shows STOPPED, a SIGKILL CRASHED without a word and a forced stop STOPPED."""
    names = ["cpoff", "cfault", "cstop", "ckill", "cforce"]
    run = agent.data_dir / "run" / "native"
    for n in names:
        r = agent.http.post("/vms", json={"name": n, "image": "idle", "snapshot": "gold", "memory": "32M"})
        assert r.status_code == 201, r.text
        assert r.json()["state"] == "running" and "cloned from gold" in r.json()["detail"], r.json()
        assert (run / n / "clone.json").is_file() and (run / n / "serial.sock").exists()
    for n in names:
        agent.http.post(f"/vms/{n}/console", json={"text": f"typed-into-{n}\n"})
        agent.wait_console(n, f"echo: typed-into-{n}")

    agent.http.post("/vms/cpoff/console", json={"text": "poweroff\n"})
    vm = wait_state(agent, "cpoff", "stopped")
    assert vm["detail"] == "guest powered off (ACPI S5)" and vm["pid"] is None
    stats = json.loads((run / "cpoff" / "stats.json").read_text())
    assert stats["exit_status"] == 0 and stats["serial_bytes"] > 0
    assert not (run / "cpoff" / "serial.sock").exists() and not (run / "cpoff" / "qmp.sock").exists()

    agent.http.post("/vms/cfault/console", json={"text": "triple-fault\n"})
    vm = wait_state(agent, "cfault", "crashed")
    assert vm["detail"].startswith("the VMM exited with status 12: triple fault on vCPU 0"), vm["detail"]

    vm = agent.http.post("/vms/cstop/stop", json={"timeout": 10}).json()
    assert vm["state"] == "stopped" and vm["detail"] == "guest powered off (ACPI S5)", vm

    os.kill(agent.http.get("/vms/ckill").json()["pid"], signal.SIGKILL)
    vm = wait_state(agent, "ckill", "crashed")
    assert "without a word" in vm["detail"]  # SIGKILL: no stats.json written

    vm = agent.http.post("/vms/cforce/force-stop").json()
    assert vm["state"] == "stopped" and vm["detail"] == "forced off", vm

    for n in names:
        assert agent.http.delete(f"/vms/{n}").status_code == 204
    assert agent.http.delete("/snapshots/gold").status_code == 204
