"""The cluster REST routes over in-process fake agents: XML or JSON bodies, 400 with line
numbers, export/import round trip, scale, batch actions, move, profiles, roles."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from vnix.api.app import create_api
from vnix.cluster.testing import ADMIN_PASSWORD, FakeAgents, fake_manager
from vnix.cluster.vcluster import parse_cluster

XML = """<?xml version="1.0"?>
<cluster name="web">
  <group name="fe" count="2" image="tiny" memory="64M">
    <placement policy="anti-affinity"/>
  </group>
  <group name="db" count="1" image="tiny" memory="128M" profile="dbp"/>
</cluster>
"""


class Api:
    def __init__(self, c: TestClient) -> None:
        self.c, self.h = c, {}  # type: ignore[var-annotated]

    def login(self, who: str, password: str) -> None:
        r = self.c.post("/api/v1/login", json={"name": who, "password": password})
        assert r.status_code == 200, r.text
        self.h[who] = {"Authorization": f"Bearer {r.json()['token']}"}

    def __call__(self, who: str, method: str, path: str, **kw: object):  # type: ignore[no-untyped-def]
        r = self.c.request(method, "/api/v1" + path, headers={**self.h.get(who, {}),
                                                                **kw.pop("headers", {})}, **kw)  # type: ignore[arg-type]
        assert r.status_code != 500, r.text
        return r


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    agents = FakeAgents(tmp_path / "agents", ["h1", "h2"])
    manager = fake_manager(tmp_path, agents)
    with TestClient(create_api(manager)) as client:
        a = Api(client)
        a.login("admin", ADMIN_PASSWORD)
        for name, role in (("bob", "user"), ("gus", "guest")):
            r = a("admin", "POST", "/users", json={"name": name, "password": f"{name}-password",
                                                   "role": role})
            assert r.status_code == 201, r.text
            a.login(name, f"{name}-password")
        yield a


def test_cluster_life_over_rest(api: Api) -> None:
    # a profile first (the file refers to it), then the file as raw XML
    r = api("bob", "PUT", "/profiles/dbp", json={"name": "dbp", "cpus": 2})
    assert r.status_code == 200 and r.json()["owner"] == "bob"
    r = api("bob", "POST", "/clusters?wait=30", content=XML,
            headers={"Content-Type": "application/xml"})
    assert r.status_code == 200 and r.json()["state"] == "succeeded", r.text
    listed = api("gus", "GET", "/clusters").json()
    assert [(c["name"], c["nodes"], c["running"]) for c in listed] == [("web", 3, 3)]
    d = api("bob", "GET", "/clusters/web").json()
    nodes = {n["name"]: n for n in d["node_list"]}
    assert sorted(nodes) == ["web-db-0", "web-fe-0", "web-fe-1"]
    assert {nodes["web-fe-0"]["host"], nodes["web-fe-1"]["host"]} == {"h1", "h2"}
    assert nodes["web-db-0"]["cpus"] == 2

    exported = api("gus", "GET", "/clusters/web/export")
    assert exported.headers["content-type"].startswith("application/xml")
    spec = parse_cluster(exported.text)
    assert [p.name for p in spec.profiles] == ["dbp"]  # written in: imports anywhere
    assert spec.model_copy(update={"profiles": []}) == parse_cluster(XML)

    r = api("bob", "POST", "/clusters/web/scale?wait=30", json={"group": "db", "count": 2})
    assert r.json()["state"] == "succeeded", r.text
    r = api("bob", "POST", "/clusters/web/stop?wait=30&force=true&group=fe")
    assert r.json()["state"] == "succeeded" and r.json()["result"]["done"] == [
        "web-fe-0", "web-fe-1"]
    states = {n["name"]: n["actual"] for n in api("bob", "GET", "/clusters/web").json()["node_list"]}
    assert states == {"web-db-0": "running", "web-db-1": "running", "web-fe-0": "stopped",
                      "web-fe-1": "stopped"}

    # import the export under another name (JSON body), then move a node into it
    r = api("bob", "POST", "/clusters/import?wait=30",
            json={"xml": exported.text, "name": "web2", "start": False})
    assert r.json()["state"] == "succeeded", r.text
    r = api("bob", "POST", "/clusters/web/nodes/web-db-1/move?wait=30", json={"to": "web2"})
    assert r.json()["state"] == "succeeded", r.text
    assert r.json()["result"]["group"] == "db"
    web2 = api("bob", "GET", "/clusters/web2").json()
    assert {g["name"]: g["count"] for g in web2["groups"]} == {"fe": 2, "db": 2}

    assert api("bob", "DELETE", "/profiles/dbp").status_code == 409  # in use (web's db group)
    for name in ("web", "web2"):
        r = api("bob", "DELETE", f"/clusters/{name}?wait=30")
        assert r.json()["state"] == "succeeded", r.text
    assert api("bob", "GET", "/clusters").json() == []
    assert api("bob", "GET", "/vms").json() == []


def test_bad_input_is_4xx_with_lines_and_stores_nothing(api: Api) -> None:
    bad = XML.replace('<group name="fe" count="2"', '<group name="fe"')
    r = api("bob", "POST", "/clusters", content=bad,
            headers={"Content-Type": "application/xml", "X-Filename": "web.xml"})
    assert r.status_code == 400
    assert r.json()["error"] == "web.xml:3: element 'group': missing required attribute 'count'"
    bomb = ('<?xml version="1.0"?><!DOCTYPE c [<!ENTITY a "aaaaaaaaaa">'
            '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><cluster name="x">&b;</cluster>')
    r = api("bob", "POST", "/clusters", content=bomb, headers={"Content-Type": "application/xml"})
    assert r.status_code == 400 and "DOCTYPE" in r.json()["error"]
    for body, ctype, status in [
        (b"\xff\xfe", "application/xml", 400),
        (b"{not json", "application/json", 400),
        (b'{"xml": 5}', "application/json", 400),
        (b"x" * (2 << 20), "application/xml", 400),
    ]:
        r = api("bob", "POST", "/clusters", content=body, headers={"Content-Type": ctype})
        assert r.status_code == status, (body[:20], r.text)
        assert "\n" not in r.json()["error"]
    assert api("bob", "GET", "/clusters/nope").status_code == 404
    assert api("bob", "POST", "/clusters/nope/explode").status_code == 422
    assert api("bob", "POST", "/clusters/nope/start").status_code == 404
    r = api("bob", "PUT", "/profiles/a", json={"name": "b"})
    assert r.status_code == 400 and "path" in r.json()["error"]
    assert api("bob", "GET", "/clusters").json() == []
    schema = api("gus", "GET", "/clusters/schema")
    assert schema.status_code == 200 and "<xs:schema" in schema.text


def test_roles_on_cluster_routes(api: Api) -> None:
    r = api("admin", "POST", "/clusters?wait=30",
            json={"xml": XML.replace(' profile="dbp"', "")})
    assert r.json()["state"] == "succeeded", r.text
    assert api("gus", "POST", "/clusters/web/stop").status_code == 403
    assert api("gus", "DELETE", "/clusters/web").status_code == 403
    assert api("gus", "PUT", "/profiles/p", json={"name": "p"}).status_code == 403
    assert api("bob", "GET", "/clusters/web").status_code == 404  # admin's: not bob's to see
    assert api("bob", "POST", "/clusters/web/stop").status_code == 404
    assert api("nobody", "GET", "/clusters").status_code == 401
    assert api("gus", "GET", "/clusters/web").status_code == 200
