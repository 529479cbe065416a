"""Every route checks the role: a table of route x role -> status, and walks over all routes
(so routes added later are covered too): no token -> 401, guest -> 403 on every mutating one."""
from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from vnix.api.app import create_api
from vnix.cluster.testing import ADMIN_PASSWORD, FakeAgents, fake_manager

MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
# mutating routes a guest may call: logging in and managing their own API tokens
GUEST_MAY = {("POST", "/api/v1/login"), ("POST", "/api/v1/tokens"),
             ("DELETE", "/api/v1/tokens/{token_id}")}
PUBLIC = {("GET", "/api/v1/health"), ("POST", "/api/v1/login")}


class Api:
    def __init__(self, client: TestClient) -> None:
        self.c = client
        self.h: dict[str, dict[str, str]] = {}

    def login(self, role: str, name: str, password: str) -> None:
        r = self.c.post("/api/v1/login", json={"name": name, "password": password})
        assert r.status_code == 200, r.text
        self.h[role] = {"Authorization": f"Bearer {r.json()['token']}"}

    def do(self, role: str, method: str, path: str, body: object = None) -> int:
        r = self.c.request(method, path, headers=self.h.get(role, {}), json=body)
        assert r.status_code != 500, r.text
        return r.status_code


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One manager for the module (its set-up hashes passwords: slow on purpose)."""
    tmp_path = tmp_path_factory.mktemp("roles")
    agents = FakeAgents(tmp_path / "agents", ["h1"])
    manager = fake_manager(tmp_path, agents)
    with TestClient(create_api(manager)) as client:
        a = Api(client)
        a.login("admin", "admin", ADMIN_PASSWORD)
        for name, role in (("bob", "user"), ("gus", "guest")):
            assert a.do("admin", "POST", "/api/v1/users",
                        {"name": name, "password": f"{name}-password", "role": role}) == 201
            a.login(role, name, f"{name}-password")
        for owner, vm in (("user", "bobvm"), ("admin", "adminvm")):
            assert a.do(owner, "POST", "/api/v1/vms?wait=10", {"name": vm}) == 200
        yield a


def api_routes(client: TestClient) -> list[tuple[str, str]]:
    """Every (method, path) of the API, from its OpenAPI schema (which lists them all)."""
    paths = client.get("/api/openapi.json").json()["paths"]
    return sorted((m.upper(), p) for p, ops in paths.items() for m in ops
                  if p.startswith("/api/v1"))


def fill(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x1", path)


def test_no_token_is_401_on_every_route_but_health_and_login(api: Api) -> None:
    routes = api_routes(api.c)
    assert len(routes) > 30
    for method, path in routes:
        if (method, path) in PUBLIC:
            continue
        assert api.do("nobody", method, fill(path)) == 401, (method, path)
        r = api.c.request(method, fill(path), headers={"Authorization": "Bearer vnix_nope"})
        assert r.status_code == 401 and "unknown or revoked" in r.json()["error"]


def test_a_guest_gets_403_on_every_mutating_route(api: Api) -> None:
    checked = 0
    for method, path in api_routes(api.c):
        if method in MUTATING and (method, path) not in GUEST_MAY:
            assert api.do("guest", method, fill(path), {}) == 403, (method, path)
            checked += 1
    assert checked >= 15


# (method, path, body) -> status for guest, user (bob), admin. The VM routes act on bob's VM.
TABLE: list[tuple[str, str, object, tuple[int, int, int]]] = [
    ("GET", "/api/v1/vms", None, (200, 200, 200)),
    ("GET", "/api/v1/vms/bobvm", None, (200, 200, 200)),
    ("GET", "/api/v1/vms/adminvm", None, (200, 404, 200)),
    ("GET", "/api/v1/vms/bobvm/console", None, (200, 200, 200)),
    ("POST", "/api/v1/vms/bobvm/console", {"text": "ls\n"}, (403, 204, 204)),
    ("POST", "/api/v1/vms/bobvm/pause?wait=10", None, (403, 200, 409)),
    ("POST", "/api/v1/vms/bobvm/resume?wait=10", None, (403, 200, 409)),
    ("POST", "/api/v1/vms/bobvm/suspend?wait=10", None, (403, 200, 409)),
    ("POST", "/api/v1/vms/bobvm/resume?wait=10", None, (403, 200, 409)),
    ("POST", "/api/v1/vms/bobvm/stop?force=true&wait=10", None, (403, 200, 409)),
    ("POST", "/api/v1/vms/bobvm/start?wait=10", None, (403, 200, 409)),
    ("POST", "/api/v1/vms/adminvm/pause", None, (403, 404, 202)),
    ("POST", "/api/v1/vms?wait=10", {"name": "v2", "memory": "64M"}, (403, 200, 409)),
    ("POST", "/api/v1/vms/batch?wait=10", {"vms": [{"name": "v3"}]}, (403, 200, 409)),
    ("POST", "/api/v1/jobs?wait=10", {"op": {"kind": "pause_vm", "name": "v2"}},
     (403, 200, 409)),
    ("DELETE", "/api/v1/vms/v3?wait=10", None, (403, 200, 404)),
    ("GET", "/api/v1/jobs", None, (200, 200, 200)),
    ("GET", "/api/v1/jobs/kinds", None, (200, 200, 200)),
    ("GET", "/api/v1/hosts", None, (200, 200, 200)),
    ("GET", "/api/v1/hosts/h1", None, (200, 200, 200)),
    ("GET", "/api/v1/images", None, (200, 200, 200)),
    ("POST", "/api/v1/images?wait=10", {"image": {"name": "tiny", "tiny": True}},
     (403, 403, 200)),
    ("GET", "/api/v1/snapshots", None, (200, 200, 200)),
    ("POST", "/api/v1/snapshots", {"name": "g1"}, (403, 403, 409)),  # h1: no native driver
    ("DELETE", "/api/v1/snapshots/g1", None, (403, 403, 404)),
    ("POST", "/api/v1/hosts/join-token", None, (403, 403, 200)),
    ("POST", "/api/v1/hosts", {"name": "h9", "url": "http://h9.test", "token": "t"},
     (403, 403, 400)),
    ("DELETE", "/api/v1/hosts/h1", None, (403, 403, 409)),
    ("GET", "/api/v1/users", None, (403, 403, 200)),
    ("GET", "/api/v1/users/bob", None, (403, 200, 200)),
    ("POST", "/api/v1/users", {"name": "zed", "password": "zed-password"}, (403, 403, 201)),
    ("PUT", "/api/v1/users/zed/quota", {"max_vms": 1}, (403, 403, 200)),
    ("DELETE", "/api/v1/users/zed/tokens", None, (403, 403, 204)),
    ("DELETE", "/api/v1/users/zed", None, (403, 403, 204)),
    ("GET", "/api/v1/whoami", None, (200, 200, 200)),
    ("GET", "/api/v1/tokens", None, (200, 200, 200)),
    ("GET", "/api/v1/samples/host/h1/cpu_percent", None, (200, 200, 200)),
]


def test_route_by_role_table(api: Api) -> None:
    for method, path, body, expected in TABLE:
        got = tuple(api.do(role, method, path, body) for role in ("guest", "user", "admin"))
        assert got == expected, (method, path, got)


def test_users_see_only_their_own_vms_and_jobs(api: Api) -> None:
    names = {r: {v["name"] for v in api.c.get("/api/v1/vms", headers=api.h[r]).json()}
             for r in ("guest", "user", "admin")}
    assert names["guest"] == names["admin"] >= {"adminvm", "bobvm"}
    assert "bobvm" in names["user"] and "adminvm" not in names["user"]
    assert {v["owner"] for v in api.c.get("/api/v1/vms", headers=api.h["user"]).json()} == {"bob"}
    owners = {j["owner"] for j in api.c.get("/api/v1/jobs", headers=api.h["user"]).json()}
    assert owners == {"bob"}


def test_tokens_are_personal_and_revocable(api: Api) -> None:
    r = api.c.post("/api/v1/tokens", headers=api.h["guest"], json={"name": "ci"})
    assert r.status_code == 201
    tok = r.json()
    h = {"Authorization": f"Bearer {tok['token']}"}
    assert api.c.get("/api/v1/whoami", headers=h).json() == {"user": "gus", "role": "guest"}
    assert api.c.delete(f"/api/v1/tokens/{tok['id']}", headers=api.h["user"]).status_code == 404
    assert api.c.delete(f"/api/v1/tokens/{tok['id']}", headers=api.h["guest"]).status_code == 204
    assert api.c.get("/api/v1/whoami", headers=h).status_code == 401
    r = api.c.post("/api/v1/login", json={"name": "gus", "password": "wrong-password"})
    assert (r.status_code, r.json()["error"]) == (401, "wrong user name or password")
