"""The API's answers to bad input: one clear line and a 4xx, never a 500."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from vnix.api.app import create_api
from vnix.cluster.testing import ADMIN_PASSWORD, FakeAgents, fake_manager


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp: Path = tmp_path_factory.mktemp("errors")
    manager = fake_manager(tmp, FakeAgents(tmp / "agents", ["h1", "h2"]))
    with TestClient(create_api(manager)) as client:
        token = client.post("/api/v1/login", json={"name": "admin",
                                                   "password": ADMIN_PASSWORD}).json()["token"]
        client.headers["Authorization"] = f"Bearer {token}"
        assert client.post("/api/v1/users", json={"name": "bob", "password": "bob-password",
                                                  "max_vms": 1}).status_code == 201
        assert client.post("/api/v1/vms?wait=10", json={"name": "web"}).status_code == 200
        yield client


CASES = [
    ("GET", "/api/v1/vms/ghost", None, 404, "no VM 'ghost'"),
    ("POST", "/api/v1/vms/ghost/start", None, 404, "no VM 'ghost'"),
    ("GET", "/api/v1/hosts/ghost", None, 404, "no host 'ghost'"),
    ("GET", "/api/v1/jobs/999", None, 404, "no job 999"),
    ("DELETE", "/api/v1/users/ghost", None, 404, "no user 'ghost'"),
    ("POST", "/api/v1/vms", {"name": "x", "memory": "1.5G"}, 400, "cannot read memory size"),
    ("POST", "/api/v1/vms", {"name": "x", "memory": "1P"}, 400, "cannot read memory size"),
    ("POST", "/api/v1/vms", {"name": "x", "cpus": 0}, 422, "cpus: Input should be greater"),
    ("POST", "/api/v1/vms", {"name": "Bad_Name"}, 422, "name: String should match"),
    ("POST", "/api/v1/vms", {"name": "x", "colour": "red"}, 422, "colour: Extra inputs"),
    ("POST", "/api/v1/vms", {"name": "x", "image": "debian"}, 404, "no image 'debian'"),
    ("POST", "/api/v1/vms", {"name": "web"}, 409, "VM 'web' exists already"),
    ("POST", "/api/v1/vms", {"name": "x", "memory": "900G"}, 409,
     "no host can take 921600 MiB and 1 vCPU: h1 has"),
    ("POST", "/api/v1/vms", {"name": "x", "owner": "nobody"}, 404, "no user 'nobody'"),
    ("POST", "/api/v1/vms/web/resume", None, 409,
     "cannot resume VM 'web': it is running, needs paused or suspended"),
    ("POST", "/api/v1/vms/batch", {"vms": [{"name": "a"}, {"name": "a"}]}, 400,
     "the batch names VM(s) a twice"),
    ("POST", "/api/v1/vms/batch", {"vms": []}, 422, "vms: List should have at least 1"),
    ("POST", "/api/v1/jobs", {"op": {"kind": "format_disk"}}, 400,
     "unknown operation kind 'format_disk'"),
    ("POST", "/api/v1/jobs", {"op": {"kind": "start_vm"}}, 400, "start_vm: name: Field required"),
    ("POST", "/api/v1/users", {"name": "9lives", "password": "long-enough"}, 400,
     "bad user name '9lives'"),
    ("POST", "/api/v1/users", {"name": "carl", "password": "short"}, 400,
     "at least 8 characters"),
    ("POST", "/api/v1/users", {"name": "bob", "password": "long-enough"}, 409,
     "user 'bob' exists already"),
    ("PUT", "/api/v1/users/bob/quota", {"max_memory": "lots"}, 400, "cannot read memory size"),
    ("DELETE", "/api/v1/users/admin", None, 409, "you cannot delete yourself"),
    ("DELETE", "/api/v1/users/admin", None, 409, "you cannot delete yourself"),
    ("DELETE", "/api/v1/hosts/h1", None, 409, "host h1 still holds VM(s) web"),
    ("POST", "/api/v1/jobs/1/cancel", None, 409, "job 1 has already succeeded"),
    ("GET", "/api/v1/vms/web/console?lines=-1", None, 422, "lines: Input should be greater"),
    ("GET", "/api/v1/samples/disk/h1/x", None, 404, "no sample kind 'disk'"),
]


@pytest.mark.parametrize("method,path,body,status,text", CASES)
def test_bad_input(c: TestClient, method: str, path: str, body: object, status: int,
                   text: str) -> None:
    r = c.request(method, path, json=body)
    assert r.status_code == status, r.text
    assert text in r.json()["error"] and "\n" not in r.json()["error"]


def test_quota_exceeded_is_403_with_the_reason(c: TestClient) -> None:
    token = c.post("/api/v1/login", json={"name": "bob", "password": "bob-password"}).json()
    h = {"Authorization": f"Bearer {token['token']}"}
    assert c.post("/api/v1/vms?wait=10", json={"name": "b1"}, headers=h).status_code == 200
    r = c.post("/api/v1/vms", json={"name": "b2"}, headers=h)
    assert (r.status_code, r.json()["error"]) == (
        403, "quota exceeded: bob may have 1 VMs, has 1 and asks for 1 more")


def test_schema_landing_page_and_health(c: TestClient) -> None:
    schema = c.get("/api/openapi.json").json()
    assert {"/api/v1/vms", "/api/v1/login", "/api/v1/jobs/{job_id}/cancel"} <= set(
        schema["paths"])
    assert "vnix" in c.get("/").text and "/api/docs" in c.get("/").text
    assert c.get("/api/v1/health").json()["status"] == "ok"


def test_a_failed_job_says_why(c: TestClient) -> None:
    # the agent refuses a driver it does not have: the job fails, the VM is not kept
    r = c.post("/api/v1/vms?wait=10", json={"name": "qq", "driver": "qemu"})
    assert r.status_code == 200 and r.json()["state"] == "failed"
    assert "driver 'qemu' is not enabled" in r.json()["error"]
    job = c.get(f"/api/v1/jobs/{r.json()['id']}").json()
    assert "qq: not created" in job["log"]
    assert c.get("/api/v1/vms/qq").status_code == 404
