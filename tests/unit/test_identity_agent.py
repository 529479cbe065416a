"""The tiny Linux image's clone identity agent: /sbin/vnix-identity, from
vnix/images/guest/vnix_identity.c.

No Linux guest runs on this host's native VMM and QEMU has no vhost-vsock here, so the binary is
tested directly: built as the image build builds it, run with ``--unix PATH`` instead of vsock,
inside ``unshare --uts --net`` with a veth pair whose one end is named eth0 (the host kernel may
lack the dummy link type; the veth's other end, peer0, shows the gratuitous ARP). Nothing of the
host's own host name or interfaces may change.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vnix.images import tiny
from vnix.images.guest_init import IDENTITY_NOTE, IDENTITY_PORT, INIT_SCRIPT
from vnix.node.snapshots import IDENTITY, READY_LINES

ANSWER = re.compile(r"identity (\S+) (\d+)\n")


@pytest.fixture(scope="module")
def agent_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed (the image build compiles the agent with it)")
    out = tmp_path_factory.mktemp("agent") / "vnix-identity"
    tiny.build_identity_agent(out)  # as `vnix image build tiny` does: gcc -static -Os
    return out


class NsAgent:
    def __init__(self, proc: subprocess.Popen[bytes], sock: Path, log: Path) -> None:
        self.proc, self.sock, self.log = proc, sock, log

    def ask(self, data: bytes, *, shut_wr: bool = True) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(self.sock))
            s.sendall(data)
            if shut_wr:
                s.shutdown(socket.SHUT_WR)
            return s.makefile("rb").readline().decode()

    def ns(self, kind: str, *argv: str) -> str:
        return subprocess.run(["nsenter", "-t", str(self.proc.pid), f"-{kind}", *argv],
                              capture_output=True, text=True, check=True, timeout=20).stdout

    def hostname(self) -> str:
        return self.ns("u", "hostname").strip()

    def eth0_addrs(self) -> list[str]:
        out = self.ns("n", "ip", "-4", "-o", "addr", "show", "dev", "eth0")
        return [ln.split()[3] for ln in out.splitlines()]

    def default_route(self) -> str:
        return self.ns("n", "ip", "-4", "route", "show", "default").strip()


def _host_state() -> tuple[str, str, str]:
    ip = shutil.which("ip") or "ip"
    links = subprocess.run([ip, "-o", "link"], capture_output=True, text=True).stdout
    addrs = subprocess.run([ip, "-o", "addr"], capture_output=True, text=True).stdout
    # link lines carry counters that move; names and addresses do not
    names = "\n".join(sorted(ln.split(":")[1].strip() for ln in links.splitlines()))
    return socket.gethostname(), names, "\n".join(sorted(addrs.splitlines()))


def _start(agent_bin: Path, d: Path) -> NsAgent:
    sock, log = d / "id.sock", d / "console.log"
    setup = ("ip link add eth0 type veth peer name peer0 && ip link set peer0 up && "
             "ip link set eth0 up && ip addr add 10.77.0.5/24 dev eth0 && "
             "ip route add default via 10.77.0.1 && hostname golden && "
             f"exec {agent_bin} --unix {sock}")
    with log.open("wb") as out:
        proc = subprocess.Popen(["unshare", "--uts", "--net", "sh", "-c", setup], stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"agent did not listen: {log.read_text()}")
        time.sleep(0.02)
    return NsAgent(proc, sock, log)


@pytest.fixture
def ns_agent(agent_bin: Path, tmp_path: Path) -> Iterator[NsAgent]:
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("unshare", "nsenter", "ip")):
        pytest.skip("needs root, unshare, nsenter and ip (util-linux, iproute2)")
    before = _host_state()
    agent = _start(agent_bin, tmp_path)
    yield agent
    agent.proc.kill()
    agent.proc.wait(5)
    assert _host_state() == before, "the host's own host name or interfaces changed"


def test_identity_sets_host_name_address_and_answers(ns_agent: NsAgent) -> None:
    assert ns_agent.hostname() == "golden" and ns_agent.eth0_addrs() == ["10.77.0.5/24"]
    m = ANSWER.fullmatch(ns_agent.ask(b"name=clone-1 addr=10.77.0.9/24 seed=42\n"))
    assert m and m.group(1) == "clone-1" and int(m.group(2)) < 2**64
    assert ns_agent.hostname() == "clone-1"
    assert ns_agent.eth0_addrs() == ["10.77.0.9/24"]
    assert "via 10.77.0.1 dev eth0" in ns_agent.default_route()  # kept: the subnet reaches it

    line = b"name=Clone.2 addr=10.78.1.3/16 seed=18446744073709551615\n"  # seed: 2**64 - 1
    m = ANSWER.fullmatch(ns_agent.ask(line))
    assert m and m.group(1) == "Clone.2"
    assert ns_agent.hostname() == "Clone.2"
    assert ns_agent.eth0_addrs() == ["10.78.1.3/16"]  # the old address is gone

    m = ANSWER.fullmatch(ns_agent.ask(b"name=c3 addr=none seed=0\n"))
    assert m and ns_agent.hostname() == "c3"
    assert ns_agent.eth0_addrs() == ["10.78.1.3/16"]  # none: the address stays
    console = ns_agent.log.read_text().splitlines()
    assert console == ["vnix-guest: identity clone-1 10.77.0.9/24",
                       "vnix-guest: identity Clone.2 10.78.1.3/16",
                       "vnix-guest: identity c3 none"]


def test_gratuitous_arp_announces_the_new_address(ns_agent: NsAgent) -> None:
    capture = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW,socket.htons(0x0806))\n"
        "s.bind(('peer0',0)); s.settimeout(8); print('ready',flush=True)\n"
        "while True:\n"
        "    f=s.recv(100); a=f[14:]\n"
        "    if a[6:8]==b'\\x00\\x01' and a[14:18]==a[24:28]==socket.inet_aton('10.77.0.33'):\n"
        "        print('announce', f[:6].hex(), a[8:14].hex(), flush=True); break\n")
    cap = subprocess.Popen(["nsenter", "-t", str(ns_agent.proc.pid), "-n", sys.executable, "-c",
                            capture], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert cap.stdout is not None and cap.stdout.readline().strip() == "ready"
    assert ANSWER.fullmatch(ns_agent.ask(b"name=arp addr=10.77.0.33/24 seed=7\n"))
    out, err = cap.communicate(timeout=10)
    assert out.startswith("announce ffffffffffff "), err  # broadcast, from eth0's MAC
    link = ns_agent.ns("n", "ip", "-o", "link", "show", "dev", "eth0")  # (not /sys: the host's)
    mac = re.search(r"link/ether (\S+)", link)
    assert mac and out.split()[2] == mac.group(1).replace(":", "")


def test_two_identities_and_two_agents_draw_different_numbers(ns_agent: NsAgent, agent_bin: Path,
                                                              tmp_path: Path) -> None:
    line = b"name=same addr=none seed=12345\n"
    first = ANSWER.fullmatch(ns_agent.ask(line))
    second = ANSWER.fullmatch(ns_agent.ask(line))
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other = _start(agent_bin, other_dir)
    try:
        third = ANSWER.fullmatch(other.ask(line))
    finally:
        other.proc.kill()
        other.proc.wait(5)
    assert first and second and third
    assert len({first.group(2), second.group(2), third.group(2)}) == 3


MALFORMED = [
    (b"x" * 600, "too long"),
    (b"name=a addr=none seed=1" + b" " * 600 + b"\n", "too long"),
    (b"name=a_b addr=none seed=1\n", "bad name"),
    (b"name=a/b addr=none seed=1\n", "bad name"),
    (b"name= addr=none seed=1\n", "bad name"),
    (b"name=" + b"a" * 64 + b" addr=none seed=1\n", "bad name"),
    (b"name=a addr=300.1.1.1/24 seed=1\n", "bad addr"),
    (b"name=a addr=10.0.0.1 seed=1\n", "bad addr"),
    (b"name=a addr=10.0.0.1/33 seed=1\n", "bad addr"),
    (b"name=a addr=10.0.1/24 seed=1\n", "bad addr"),
    (b"name=a addr=10.0.0.1/024 seed=1\n", "bad addr"),
    (b"name=a addr=::1/64 seed=1\n", "bad addr"),
    (b"name=a addr=none seed=-1\n", "bad seed"),
    (b"name=a addr=none seed=0x10\n", "bad seed"),
    (b"name=a addr=none seed=18446744073709551616\n", "bad seed"),
    (b"name=a addr=none seed=\n", "bad seed"),
    (b"name=a addr=none\n", "missing seed"),
    (b"addr=none seed=1\n", "missing name"),
    (b"name=a seed=1\n", "missing addr"),
    (b"\n", "missing name"),
    (b"name=a name=b addr=none seed=1\n", "twice"),
    (b"name=a addr=none seed=1 gw=10.0.0.1\n", "unknown field"),
    (b"name=a addr=none seed=1 junk\n", "without '='"),
    (b"name=a\taddr=none seed=1\n", "control"),
    (b"name=a\x00 addr=none seed=1\n", "NUL"),
    ("name=ä addr=none seed=1\n".encode(), "non-ASCII"),
    (b"name=a addr=none seed=1", "before a newline"),
    (b"", "before a newline"),
]


def test_malformed_lines_are_refused_and_the_agent_serves_on(ns_agent: NsAgent) -> None:
    for data, reason in MALFORMED:
        answer = ns_agent.ask(data)
        assert answer.startswith("error ") and answer.endswith("\n"), (data, answer)
        assert reason in answer, (data, answer)
    assert ns_agent.hostname() == "golden" and ns_agent.eth0_addrs() == ["10.77.0.5/24"]
    assert ns_agent.log.read_text() == ""  # no identity taken
    # a peer that goes away mid-line, and one that never writes and closes: still serving
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(ns_agent.sock))
        s.sendall(b"name=half")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(ns_agent.sock))
    assert ANSWER.fullmatch(ns_agent.ask(b"name=after addr=10.77.0.6/24 seed=3\n"))
    assert ns_agent.hostname() == "after" and ns_agent.eth0_addrs() == ["10.77.0.6/24"]
    # what follows the newline is ignored
    assert ANSWER.fullmatch(ns_agent.ask(b"name=x1 addr=none seed=3\ntrailing junk"))


def test_agent_usage_and_a_failed_listen(agent_bin: Path, tmp_path: Path) -> None:
    bad = subprocess.run([str(agent_bin), "--port", "0"], capture_output=True, text=True,
                         timeout=10)
    assert bad.returncode == 2 and "usage" in bad.stderr
    gone = subprocess.run([str(agent_bin), "--daemon", "--unix", str(tmp_path / "no/such/dir/s")],
                          capture_output=True, text=True, timeout=10)
    assert gone.returncode == 1 and "cannot listen" in gone.stderr  # /init then says nothing


def test_daemon_returns_once_listening(agent_bin: Path, tmp_path: Path) -> None:
    sock = tmp_path / "d.sock"
    # (its output not on pipes: the serving child keeps them, as it keeps /init's console)
    res = subprocess.run([str(agent_bin), "--daemon", "--unix", str(sock)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)
    assert res.returncode == 0 and sock.exists()  # the socket is there when the parent returns
    pids = subprocess.run(["pgrep", "-f", f"vnix-identity --daemon --unix {sock}"],
                          capture_output=True, text=True).stdout.split()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(sock))
            s.sendall(b"name=bad_name addr=none seed=1\n")  # refused: changes nothing here
            assert s.makefile("rb").readline().startswith(b"error bad name")
    finally:
        for pid in pids:
            os.kill(int(pid), 9)


# -- the image's /init and the node agent's regex --------------------------------------------

def _ready_fragment() -> str:
    start = INIT_SCRIPT.index("IDENTITY=\n")
    end = INIT_SCRIPT.index("\n", INIT_SCRIPT.index('echo "vnix-guest: ready'))
    return INIT_SCRIPT[start:end + 1]


@pytest.mark.parametrize("vsock,agent_rc,announced", [(True, 0, True), (False, 0, False),
                                                       (True, 1, False)])
def test_init_starts_the_agent_before_its_ready_line(tmp_path: Path, vsock: bool, agent_rc: int,
                                                     announced: bool) -> None:
    fake, dev, calls = tmp_path / "vnix-identity", tmp_path / "vsock", tmp_path / "calls"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\nexit {agent_rc}\n")
    fake.chmod(0o755)
    if vsock:
        dev.touch()
    script = _ready_fragment().replace("/sbin/vnix-identity", str(fake)).replace("/dev/vsock",
                                                                                   str(dev))
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=20,
                         check=True).stdout.splitlines()
    assert len(out) == 1 and out[0].startswith(READY_LINES[0])
    assert re.fullmatch(r"vnix-guest: ready \(kernel \S+, \d+ cpus, \d+ MiB, root initramfs\)"
                        r"(; waiting for identity on port 5000)?", out[0])
    ran = calls.read_text() if calls.exists() else ""
    assert ran == (f"--daemon --port {IDENTITY_PORT}\n" if vsock else "")  # no vsock: not run
    m = IDENTITY.search(out[0])
    assert bool(m) == announced
    if m:
        assert int(m.group(1)) == IDENTITY_PORT == 5000
        assert out[0].endswith(f"{IDENTITY_NOTE}{IDENTITY_PORT}")
    else:
        assert "identity" not in out[0]


def test_identity_regex_reads_both_guests() -> None:
    tiny_line = ("vnix-guest: ready (kernel 6.1.0-56-amd64, 1 cpus, 480 MiB, root initramfs)"
                 f"{IDENTITY_NOTE}{IDENTITY_PORT}")
    m = IDENTITY.search(tiny_line)
    assert m and int(m.group(1)) == 5000
    m = IDENTITY.search("waiting for identity on port 5123")  # clone_identity.c's line
    assert m and int(m.group(1)) == 5123
    assert IDENTITY.search("vnix-guest: ready (kernel 6.1.0-56-amd64, 1 cpus, 480 MiB, "
                           "root initramfs)") is None


def test_initramfs_carries_the_agent(tmp_path: Path, agent_bin: Path) -> None:
    if shutil.which("cpio") is None:
        pytest.skip("needs the cpio tool")
    out = tmp_path / "initrd.cpio"
    tiny._write_initramfs(out, b"#!busybox", ["bin/sh"], [], tiny.arches.X86_64,
                          agent_bin.read_bytes())
    listing = subprocess.run(["cpio", "-itv"], stdin=out.open("rb"), capture_output=True,
                             text=True, check=True).stdout
    line = next(ln for ln in listing.splitlines() if ln.endswith(" sbin/vnix-identity"))
    assert line.startswith("-rwxr-xr-x") and str(agent_bin.stat().st_size) in line.split()


@pytest.mark.parametrize("gcc_stderr", [
    None,
    "/usr/bin/ld: cannot find -lc: No such file or directory",
    "x.c:1:10: fatal error: stdio.h: No such file or directory",
])
def test_image_build_names_the_missing_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               gcc_stderr: str | None) -> None:
    fake = tmp_path / "gcc"
    fake.write_text(f"#!/bin/sh\necho '{gcc_stderr}' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(tiny.shutil, "which",
                        lambda name: None if gcc_stderr is None else str(fake))
    with pytest.raises(tiny.ImageError) as err:
        tiny.build_identity_agent(tmp_path / "out")
    msg = str(err.value)
    assert "\n" not in msg and "libc6-dev" in msg
    assert ("gcc not found" in msg) == (gcc_stderr is None)
