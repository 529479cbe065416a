"""Copy-on-write clones: many VMs from one snapshot, SnowFlock-style, through a warm clone server.

``python -m vnix.vmm.clone --snapshot PATH --sock SOCK`` is the server. A clone's unique memory
has to stay small (issue 4: <= 8 MiB per idle clone) and a Python VMM process alone holds ~10 MiB
of private heap, so clones are not separate ``python -m vnix.vmm --restore`` processes but
``fork()``\\ s of one process that has already imported the VMM and loaded the snapshot:

1. the server imports the VMM, loads and checks the snapshot once (header, state, extents),
   ``gc.freeze()``\\ s what it built (a collection in a child would write to every object header
   and unshare the pages), listens on SOCK and prints ``ready`` on stdout;
2. the client connects and sends one JSON line, a :class:`CloneSpec` (name, vsock CID and
   socket, its own disks (a qcow2 overlay each) and nets (tap, MAC), serial log, API socket);
3. the server ``fork()``\\ s; the parent closes its copy of the connection and waits for the
   next one; the child redirects its stdout (the serial console) to the log, creates its own KVM
   VM and maps guest RAM MAP_PRIVATE from the snapshot file (pages come in on demand from the
   page cache, shared by every clone until one writes them), without dirty logging;
4. once the child's boot vCPU is in KVM_RUN it answers on the connection with one JSON line
   ``{"pid": N, "restore_ms": T}`` (T: from the request read to the vCPU running) and closes it,
   or ``{"error": "..."}`` and exits.

A child ends like a VMM process (its exit status as in :mod:`vnix.vmm.exitcodes`); the server
does not wait for it (SIGCHLD ignored: the kernel reaps it). :class:`CloneServer` starts a server
and asks it for clones; :func:`send_identity` gives a restored guest its identity over vsock
(the host side of Firecracker's ``CONNECT <port>`` scheme, see the ``clone_identity`` guest).
"""
from __future__ import annotations

import gc
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

from vnix.vmm import VmmError

MAX_REQUEST = 64 * 1024


class CloneError(VmmError):
    """A clone could not be made (the server's one-line reason)."""


@dataclass
class CloneSpec:
    """One clone's identity on the host side. ``disks``/``nets`` are ``--disk``/``--net``
    strings and replace the snapshot's (as many of each)."""

    name: str
    serial_log: str
    vsock_uds: str | None = None
    cid: int | None = None
    disks: list[str] = field(default_factory=list)
    nets: list[str] = field(default_factory=list)
    api_sock: str | None = None


# -- the server ----------------------------------------------------------------------------------
def _child(conn: socket.socket, spec: CloneSpec, snap: object, t_request: float) -> None:
    """In the forked child: restore, answer, run. Never returns."""
    from vnix.vmm.config import VsockConfig, parse_disk, parse_net
    from vnix.vmm.machine import Machine
    from vnix.vmm.snapshot.restore import SnapshotOverrides, restore_machine
    from vnix.vmm.stats import Stats

    status = 70
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        log = os.open(spec.serial_log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(log)
        os.close(null)
        stats = Stats(t_request)
        vsock = VsockConfig(cid=spec.cid, uds=spec.vsock_uds) if spec.vsock_uds is not None and spec.cid else None
        overrides = SnapshotOverrides(disks=[parse_disk(d) for d in spec.disks] or None,
                                      nets=[parse_net(n) for n in spec.nets] or None, vsock=vsock)
        machine = restore_machine(Machine, snap, stats, memory_backing="private-mmap",  # type: ignore[arg-type]
                                  overrides=overrides, dirty_log=False)
        if spec.api_sock is not None:
            from vnix.vmm.api import serve

            serve(machine, spec.api_sock)

        def running() -> None:
            ms = (time.monotonic() - t_request) * 1000
            conn.sendall(json.dumps({"pid": os.getpid(), "restore_ms": round(ms, 3)}).encode() + b"\n")
            conn.close()

        gc.enable()
        stop = machine.run(on_running=running)
        status = stop.status
        if getattr(machine, "pci", None) is not None:
            machine.pci.close()
    except Exception as exc:  # noqa: BLE001 - the client gets the reason, the child ends
        try:
            conn.sendall(json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode() + b"\n")
        except OSError:
            pass
    finally:
        sys.stdout.flush()
        os._exit(status)


def serve(snapshot_path: str, sock_path: str) -> None:
    """Steps 1-3 of the protocol above, until SIGTERM."""
    import vnix.vmm.api  # noqa: F401 - warm: every child may serve it
    import vnix.vmm.machine  # noqa: F401
    import vnix.vmm.snapshot.restore  # noqa: F401
    from vnix.vmm.snapshot.load import load_snapshot

    snap = load_snapshot(snapshot_path, verify_memory=True)  # checked once, for every clone
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        os.unlink(sock_path)
    except FileNotFoundError:
        pass
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(sock_path)
    lsock.listen(256)
    gc.collect()
    gc.freeze()
    gc.disable()
    print("ready", flush=True)
    while True:
        conn, _ = lsock.accept()
        t_request = 0.0
        try:
            buf = b""
            while not buf.endswith(b"\n") and len(buf) < MAX_REQUEST:
                chunk = conn.recv(MAX_REQUEST)
                if not chunk:
                    break
                buf += chunk
            t_request = time.monotonic()
            spec = CloneSpec(**json.loads(buf))
        except (OSError, ValueError, TypeError) as exc:
            try:
                conn.sendall(json.dumps({"error": f"bad request: {exc}"}).encode() + b"\n")
            except OSError:
                pass
            conn.close()
            continue
        pid = os.fork()
        if pid == 0:
            lsock.close()
            _child(conn, spec, snap, t_request)
        conn.close()


# -- the client ----------------------------------------------------------------------------------
class CloneServer:
    """A clone server process for one snapshot (started here, stopped by :meth:`close`)."""

    def __init__(self, snapshot: str, sock: str, log: str | None = None) -> None:
        self.sock = sock
        out = open(log, "wb") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", "vnix.vmm.clone", "--snapshot", snapshot, "--sock", sock],
                                     stdout=subprocess.PIPE, stderr=out, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != b"ready":
            self.proc.wait(10)
            raise CloneError(f"the clone server did not start (status {self.proc.returncode})")

    def clone(self, spec: CloneSpec, timeout: float = 30.0) -> dict[str, object]:
        """Ask for one clone; returns ``{"pid", "restore_ms"}`` once it runs."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(self.sock)
            s.sendall(json.dumps(asdict(spec)).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
        finally:
            s.close()
        try:
            answer = json.loads(buf)
        except ValueError:
            raise CloneError(f"clone {spec.name}: no answer from the clone server") from None
        if "error" in answer:
            raise CloneError(f"clone {spec.name}: {answer['error']}")
        return answer  # type: ignore[no-any-return]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def send_identity(uds: str, port: int, line: str, timeout: float = 10.0) -> str:
    """CONNECT to the guest's vsock ``port`` through the VMM's socket, send ``line`` and return
    the guest's one-line answer."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(uds)
        s.sendall(f"CONNECT {port}\n".encode())
        f = s.makefile("rb")
        ok = f.readline()
        if not ok.startswith(b"OK"):
            raise CloneError(f"vsock CONNECT {port} through {uds}: {ok.decode(errors='replace').strip()}")
        s.sendall(line.encode() + b"\n")
        return f.readline().decode(errors="replace").strip()
    finally:
        s.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    opts = dict(zip(args[::2], args[1::2]))
    if set(opts) != {"--snapshot", "--sock"}:
        print("usage: python -m vnix.vmm.clone --snapshot PATH --sock SOCK", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    try:
        serve(opts["--snapshot"], opts["--sock"])
    except VmmError as exc:
        print(f"vnix-clone: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
