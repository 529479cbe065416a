"""A lab of hosts on one machine: PostgreSQL in a temp dir, hosts as network namespaces.

Used by the multi-host tests and benchmarks (test helpers ship with the code, STYLE.md #18).
Everything it makes it removes again, each step tried even if another fails::

    with Postgres() as pg, HostLab(3) as lab:
        pg.url                              postgresql+psycopg://postgres@127.0.0.1:PORT/vnix
        lab.gateway                         198.19.200.1 (the root namespace, on bridge vnlab<id>)
        lab.hosts[0].ns, .address           vnlab<id>h0, 198.19.200.10
        lab.spawn(0, [argv...])             a process inside host 0's namespace
        lab.kill(0)                         SIGKILL every process started in host 0

Underlay: one bridge in the root namespace, a veth pair per host (``vnlab<id>h<i>`` in the
root, ``eth0`` in the host's namespace), addresses from 198.18.0.0/15 (RFC 2544's test range),
MTU 1550 so that a VXLAN overlay keeps a 1500-byte MTU for the guests.
PostgreSQL: Debian's server binaries, ``initdb``/``pg_ctl`` run as the ``postgres`` user into
a temp dir, listening on 127.0.0.1 and the lab's gateway on a free port, trust auth.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from vnix.errors import VnixError

log = logging.getLogger(__name__)
UNDERLAY_MTU = 1550


class LabError(VnixError):
    pass


def _run(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {out.stderr.strip() or out.returncode}")
    return out


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _cleanup(steps: list[tuple[str, object]]) -> None:
    for what, fn in reversed(steps):
        try:
            fn()  # type: ignore[operator]
        except Exception as exc:  # every step is tried (STYLE.md #13)
            log.warning("lab cleanup: %s: %s", what, exc)


def pg_bindir() -> Path | None:
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "pg_ctl").exists():
            return d
    return None


class Postgres:
    """A throwaway PostgreSQL server (needs root to switch to the ``postgres`` user)."""

    def __init__(self, listen: tuple[str, ...] = ("127.0.0.1",), db: str = "vnix") -> None:
        self.listen = listen
        self.db = db
        self.port = free_port()
        self.dir: Path | None = None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{self.db}"

    def __enter__(self) -> Postgres:
        bindir = pg_bindir()
        if bindir is None:
            raise LabError("PostgreSQL is not installed (apt-get install postgresql)")
        self.dir = Path(tempfile.mkdtemp(prefix="vnix-pg-"))
        os.chmod(self.dir, 0o755)
        data = self.dir / "data"
        shutil.chown(self.dir, "postgres", "postgres")
        su = ("runuser", "-u", "postgres", "--")
        try:
            _run(*su, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                 "-E", "UTF8", "--no-sync", timeout=120)
            opts = (f"-p {self.port} -k {self.dir} -c listen_addresses='{','.join(self.listen)}'"
                    " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
                    " -c max_connections=200")
            _run(*su, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(self.dir / "log"),
                 "-o", opts, "-w", "-t", "60", "start", timeout=90)
            _run(*su, str(bindir / "createdb"), "-h", str(self.dir), "-p", str(self.port),
                 self.db)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        bindir = pg_bindir()
        if self.dir is None:
            return
        if bindir and (self.dir / "data" / "postmaster.pid").exists():
            _run("runuser", "-u", "postgres", "--", str(bindir / "pg_ctl"), "-D",
                 str(self.dir / "data"), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None


@dataclass
class LabHost:
    index: int
    ns: str
    veth: str
    address: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)


class HostLab:
    """``n`` hosts as network namespaces on one underlay bridge."""

    def __init__(self, n: int, subnet: str = "198.19.200", tag: str | None = None) -> None:
        self.n = n
        self.subnet = subnet
        self.tag = tag or uuid.uuid4().hex[:4]
        self.bridge = f"vnlab{self.tag}"
        self.gateway = f"{subnet}.1"
        self.hosts: list[LabHost] = []
        self._undo: list[tuple[str, object]] = []

    def __enter__(self) -> HostLab:
        try:
            _run("ip", "link", "add", self.bridge, "mtu", str(UNDERLAY_MTU), "type", "bridge")
            self._undo.append((f"delete {self.bridge}",
                               lambda: _run("ip", "link", "del", self.bridge, check=False)))
            _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            for i in range(self.n):
                self._add_host(i)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _add_host(self, i: int) -> None:
        ns, veth = f"vnlab{self.tag}h{i}", f"vnlab{self.tag}v{i}"
        _run("ip", "netns", "add", ns)
        self._undo.append((f"delete namespace {ns}",
                           lambda: _run("ip", "netns", "del", ns, check=False)))
        _run("ip", "link", "add", veth, "mtu", str(UNDERLAY_MTU), "type", "veth", "peer",
             "name", "eth0", "mtu", str(UNDERLAY_MTU), "netns", ns)
        self._undo.append((f"delete {veth}", lambda: _run("ip", "link", "del", veth,
                                                          check=False)))
        _run("ip", "link", "set", veth, "master", self.bridge, "up")
        address = f"{self.subnet}.{10 + i}"
        _run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "-n", ns, "route", "add", "default", "via", self.gateway)
        self.hosts.append(LabHost(i, ns, veth, address))

    def spawn(self, i: int, argv: list[str], log_file: Path | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` in host ``i``'s namespace (its own process group)."""
        out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
        p = subprocess.Popen(["ip", "netns", "exec", self.hosts[i].ns, *argv], stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True,
                             env={**os.environ, **(env or {})})
        self.hosts[i].procs.append(p)
        return p

    def start_agent(self, i: int, data_dir: Path, token: str, driver: str = "qemu",
                    port: int = 8470, timeout: float = 60.0) -> str:
        """``vnix agent`` in host ``i``'s namespace on its address; returns its URL once it
        answers. Its output goes to ``<data_dir>.log``."""
        import sys

        import httpx

        h = self.hosts[i]
        url = f"http://{h.address}:{port}"
        log_file = data_dir.with_name(data_dir.name + ".log")
        self.spawn(i, [sys.executable, "-m", "vnix", "agent", "--listen", f"{h.address}:{port}",
                       "--token", token, "--data-dir", str(data_dir), "--driver", driver],
                   log_file=log_file)
        deadline = time.monotonic() + timeout
        while True:
            try:
                r = httpx.get(f"{url}/host", headers={"Authorization": f"Bearer {token}"},
                              timeout=2)
                if r.status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                tail = log_file.read_text()[-1500:] if log_file.exists() else ""
                raise LabError(f"the agent of {h.ns} did not answer at {url}: {tail}")
            time.sleep(0.2)

    def kill(self, i: int) -> None:
        """SIGKILL what was started in host ``i`` (the process groups, so children too)."""
        for p in self.hosts[i].procs:
            _killpg(p, signal.SIGKILL)
        self.hosts[i].procs.clear()

    def ns_pids(self, i: int) -> list[int]:
        out = _run("ip", "netns", "pids", self.hosts[i].ns, check=False)
        return [int(x) for x in out.stdout.split()]

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        for h in self.hosts:
            for p in h.procs:
                _killpg(p, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for h in self.hosts:
            for p in h.procs:
                try:
                    p.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    _killpg(p, signal.SIGKILL)
            for pid in self.ns_pids(h.index):  # VMs the agents left running in the namespace
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        _cleanup(self._undo)
        self._undo.clear()


def _killpg(p: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
