"""The agent's HTTP API with the fake driver: every route, auth, and clear 4xx answers."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from vnix.node.app import create_app

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
H = {"Authorization": "Bearer s3cret"}


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(b"\0" * 0x202 + b"HdrS" + b"\0" * 64)
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"070701")
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\0" * 1024 * 1024)
    qcow = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow), "8M"], check=True)
    text = tmp_path / "notes.txt"
    text.write_text("hello, I am not a disk\n")
    return {"kernel": kernel, "initrd": initrd, "raw": raw, "qcow": qcow, "text": text}


@pytest.fixture
def client(tmp_path: Path, files: dict[str, Path]) -> TestClient:
    app = create_app(tmp_path / "data", "s3cret", ["fake"], "fake", reconcile=False)
    c = TestClient(app)
    r = c.post("/images", headers=H, json={"name": "linux", "kernel": str(files["kernel"]),
                                           "initrd": str(files["initrd"]),
                                           "path": str(files["raw"]), "cmdline": "console=ttyS0"})
    assert r.status_code == 201, r.text
    return c


def test_every_route_needs_the_token(client: TestClient) -> None:
    for method, path in [("get", "/vms"), ("get", "/images"), ("get", "/host"),
                         ("get", "/metrics"), ("get", "/openapi.json"), ("get", "/networks"),
                         ("post", "/vms/x/start"), ("delete", "/images/linux")]:
        r = getattr(client, method)(path)
        assert r.status_code == 401, path
        assert r.json()["error"] == "missing or wrong bearer token"
        r = getattr(client, method)(path, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401, path


def test_vm_lifecycle_through_the_api(client: TestClient) -> None:
    r = client.post("/vms", headers=H, json={"name": "web1", "image": "linux", "memory": "128M",
                                             "cpus": 2})
    assert r.status_code == 201, r.text
    vm = r.json()
    assert (vm["state"], vm["memory_mib"], vm["cpus"]) == ("running", 128, 2)
    assert vm["disks"][0]["format"] == "qcow2"  # an overlay, never the base image
    assert Path(vm["disks"][0]["path"]).name == "linux.qcow2"
    for action, state in [("pause", "paused"), ("resume", "running"),
                          ("suspend", "suspended"), ("resume-from-disk", "running"),
                          ("force-stop", "stopped"), ("start", "running")]:
        r = client.post(f"/vms/web1/{action}", headers=H)
        assert r.status_code == 200, (action, r.text)
        assert r.json()["state"] == state
    r = client.post("/vms/web1/stop", headers=H, json={"timeout": 1})
    assert r.json()["state"] == "stopped"
    assert [v["name"] for v in client.get("/vms", headers=H).json()] == ["web1"]
    assert client.delete("/vms/web1", headers=H).status_code == 204
    assert client.get("/vms/web1", headers=H).status_code == 404


def test_wrong_state_is_409_naming_both_states(client: TestClient) -> None:
    client.post("/vms", headers=H, json={"name": "a", "image": "linux", "start": False})
    r = client.post("/vms/a/pause", headers=H)
    assert r.status_code == 409
    assert r.json()["error"] == "cannot pause VM 'a': it is defined, needs running"


def test_bad_requests_get_clear_4xx(client: TestClient) -> None:
    cases = [
        ({"name": "a", "image": "nope"}, 404, "unknown image 'nope'"),
        ({"name": "a", "image": "linux", "memory": "8M"}, 400, "too small"),
        ({"name": "a", "image": "linux", "memory": "999T"}, 400, "more than this host has"),
        ({"name": "a", "image": "linux", "cpus": 99}, 400, "--cpus must be between 1 and 8"),
        ({"name": "a", "image": "linux", "memory": "lots"}, 400, "cannot read memory size"),
        ({"name": "Bad Name!", "image": "linux"}, 422, "name"),
        ({"name": "a", "image": "linux", "driver": "xen"}, 400, "not enabled"),
        ({"name": "a", "image": "linux", "nics": [{"network": "nonet"}]}, 404, "unknown network"),
    ]
    for body, status, text in cases:
        r = client.post("/vms", headers=H, json=body)
        assert r.status_code == status, (body, r.text)
        assert text in r.json()["error"], (body, r.json())
    assert client.get("/vms", headers=H).json() == []  # nothing half-made is left behind
    client.post("/vms", headers=H, json={"name": "a", "image": "linux"})
    r = client.post("/vms", headers=H, json={"name": "a", "image": "linux"})
    assert r.status_code == 409 and "already exists" in r.json()["error"]


def test_image_import_validates_and_in_use_images_stay(client: TestClient,
                                                       files: dict[str, Path]) -> None:
    r = client.post("/images", headers=H, json={"name": "q", "path": str(files["qcow"])})
    assert r.status_code == 201 and r.json()["disk_format"] == "qcow2"
    assert r.json()["virtual_size"] == 8 * 1024 * 1024
    r = client.post("/images", headers=H, json={"name": "t", "path": str(files["text"])})
    assert r.status_code == 400 and "not a disk image" in r.json()["error"]
    broken = files["qcow"].with_name("broken.qcow2")
    data = bytearray(files["qcow"].read_bytes())
    data[0x20:0x28] = b"\xff" * 8  # l1_table_offset far beyond the file (qcow2 header field)
    broken.write_bytes(data)
    r = client.post("/images", headers=H, json={"name": "b", "path": str(broken)})
    assert r.status_code == 400, r.text
    r = client.post("/images", headers=H, json={"name": "r", "path": str(files["raw"]),
                                                "format": "qcow2"})
    assert r.status_code == 400 and "is raw, not qcow2" in r.json()["error"]
    client.post("/vms", headers=H, json={"name": "user", "image": "linux", "disk_image": "q"})
    for img in ("linux", "q"):
        r = client.delete(f"/images/{img}", headers=H)
        assert r.status_code == 409 and "in use by VM(s) user" in r.json()["error"]
    client.delete("/vms/user", headers=H)
    assert client.delete("/images/q", headers=H).status_code == 204
    assert [i["name"] for i in client.get("/images", headers=H).json()] == ["linux"]


def test_console_info_metrics_host_and_schema(client: TestClient) -> None:
    client.post("/vms", headers=H, json={"name": "c1", "image": "linux"})
    assert client.post("/vms/c1/console", headers=H, json={"text": "uptime\r"}).status_code == 204
    lines = client.get("/vms/c1/console?lines=5", headers=H).json()["lines"]
    assert lines[-1] == "uptime" and lines[0].startswith("fake: booting c1")
    client.post("/vms/c1/balloon", headers=H, json={"target_mib": 100})
    assert client.get("/vms/c1", headers=H).json()["balloon_mib"] == 100
    metrics = client.get("/metrics", headers=H).text
    assert 'vnix_vm_up{state="running",vm="c1"} 1.0' in metrics
    assert "vnix_vm_balloon_bytes{vm=\"c1\"} 1.048576e+08" in metrics
    assert "vnix_host_memory_total_bytes" in metrics
    host = client.get("/host", headers=H).json()
    assert host["vms"] == 1 and host["drivers"] == ["fake"]
    paths = client.get("/openapi.json", headers=H).json()["paths"]
    assert "/vms/{name}/resume-from-disk" in paths and "/images" in paths


def test_crashed_vm_reports_last_console_lines(client: TestClient) -> None:
    client.post("/vms", headers=H, json={"name": "k", "image": "linux"})
    app_vms = client.app.state.vms  # type: ignore[attr-defined]
    app_vms.drivers["fake"].crash("k", "Kernel panic - not syncing: VFS")
    vm = client.get("/vms/k", headers=H).json()
    assert vm["state"] == "crashed"
    assert vm["console_tail"][-1] == "Kernel panic - not syncing: VFS"


def test_console_websocket_streams_and_types(client: TestClient) -> None:
    client.post("/vms", headers=H, json={"name": "w", "image": "linux"})
    with client.websocket_connect("/vms/w/console/ws?token=s3cret") as ws:
        first = ws.receive_bytes()
        assert b"fake: booting w" in first
        ws.send_text("ls\r")
        got = b""
        while b"ls" not in got:
            got += ws.receive_bytes()
    with pytest.raises(Exception):
        with client.websocket_connect("/vms/w/console/ws?token=nope") as ws:
            ws.receive_bytes()


def fake_golden(client: TestClient, name: str, image: str) -> Path:
    """A golden snapshot of ``image`` as the agent stores one (no KVM: its record, an empty
    snapshot file and the saved disk, a qcow2 overlay of the image's disk, made the way
    vnix.node.snapshots makes it)."""
    import json
    from dataclasses import asdict

    from vnix.node.snapshots import GoldenRecord

    gold = client.app.state.vms.snapshots  # type: ignore[attr-defined]
    d = gold.root / name
    d.mkdir(parents=True)
    rec = gold.images.get(image)
    disk = gold.images.make_overlay(rec, d / "disk.qcow2") if rec.disk else None
    (d / "golden.snap").write_bytes(b"")
    (d / "golden.json").write_text(json.dumps(asdict(GoldenRecord(
        name=name, image=image, memory_mib=64, cpus=1, cmdline=rec.cmdline, ready="tick 1",
        vsock=False, identity_port=None, disk=str(disk) if disk else None,
        path=str(d / "golden.snap"), size=0, created=0.0, boot_s=0.1, save_s=0.1))))
    return d


def test_image_with_golden_snapshots_is_not_deleted(client: TestClient,
                                                    files: dict[str, Path]) -> None:
    """A golden snapshot's disk is an overlay of its image's disk (and its clones boot the
    image's kernel): the image stays until the snapshots are gone, and nothing is lost."""
    client.post("/images", headers=H, json={"name": "q", "path": str(files["qcow"])})
    gold, silver = fake_golden(client, "gold", "linux"), fake_golden(client, "silver", "linux")
    other = fake_golden(client, "other", "q")
    base = client.get("/images/linux", headers=H).json()["disk"]
    r = client.delete("/images/linux", headers=H)
    assert r.status_code == 409, r.text
    assert r.json()["kind"] == "ImageInUse"
    assert r.json()["error"] == ("image 'linux' has golden snapshot(s) made from it: gold, "
                                 "silver; every clone of them needs it (delete the snapshot(s) "
                                 "first)")
    assert Path(base).is_file() and client.get("/images/linux", headers=H).status_code == 200
    info = subprocess.run(["qemu-img", "info", "--output=json", "--backing-chain",
                           str(gold / "disk.qcow2")], capture_output=True, text=True)
    assert info.returncode == 0 and base in info.stdout  # the snapshot's disk still reads
    # a record that cannot be read still counts when its disk sits on the image
    (silver / "golden.json").write_text("{not json")
    assert client.delete("/images/linux", headers=H).status_code == 409
    assert "silver" in client.delete("/images/linux", headers=H).json()["error"]
    assert client.delete("/snapshots/gold", headers=H).status_code == 204
    r = client.delete("/images/linux", headers=H)
    assert r.status_code == 409 and "made from it: silver;" in r.json()["error"]
    shutil.rmtree(silver)  # (the agent cannot read it, so the admin removes it by hand)
    assert client.delete("/images/linux", headers=H).status_code == 204
    r = client.delete("/images/q", headers=H)
    assert r.status_code == 409 and "made from it: other;" in r.json()["error"]
    assert other.is_dir()
