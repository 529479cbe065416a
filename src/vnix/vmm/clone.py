"""Copy-on-write clones: many VMs from one snapshot, SnowFlock-style, through a warm clone server.

``python -m vnix.vmm.clone --snapshot PATH --sock SOCK [--prefork K]`` is the server. A clone's
unique memory has to stay small (issue 4: <= 8 MiB per idle clone) and a Python VMM process alone
holds ~10 MiB of private heap, so clones are not separate ``python -m vnix.vmm --restore``
processes but ``fork()``\\ s of one process that has already imported the VMM and loaded the
snapshot, forked *before* their request comes (a fork costs the server 2-2.5 ms, and the child's
first steps more, with every page it writes copied):

1. the server imports the VMM, loads and checks the snapshot once (header, state, extents),
   ``gc.freeze()``\\ s what it built (a collection in a child would write to every object header
   and unshare the pages), listens on SOCK, forks K idle children (default 2) and prints
   ``ready`` on stdout. Each idle child, at SCHED_IDLE, does what no clone's overrides change
   (:func:`vnix.vmm.snapshot.restore.prepare_vm`: opens /dev/kvm, creates its KVM VM, maps guest
   RAM MAP_PRIVATE from the snapshot file (pages come in on demand from the page cache, shared by
   every clone until one writes them) into slots without dirty logging, TSS, irqchip, PIT, its
   vCPUs with their registers), says ``ready`` on its own SOCK_SEQPACKET socketpair to the
   server, and if no request came in the next 50 ms, rehearses a whole restore into a throwaway
   VM with no outside effect (:func:`vnix.vmm.snapshot.restore.rehearse`, ~8 ms: the ~600 pages
   the restore path writes are copied then, not on the request; a burst's children are taken
   before and skip it). Then it blocks reading the socketpair (EOF there: the server is gone,
   the child exits);
2. the client connects and sends one JSON line, a :class:`CloneSpec` (name, vsock CID and
   socket, its own disks (a qcow2 overlay each) and nets (tap, MAC), serial log, and the
   optional API socket, serial socket and stats JSON file of a VMM process);
3. the server reads it (that instant, CLOCK_MONOTONIC, is the request time) and sends the
   oldest ready child one message, ``"<request time> <the JSON line>"``, with the client's
   connection attached (SCM_RIGHTS), and puts it (every thread) back to SCHED_OTHER; no fork
   on this path. If no child is ready yet (a loaded host gives SCHED_IDLE little time), the
   oldest one gets it; if none is left, one is forked now. The server closes its copy of the
   connection, forks replacements until K are idle again
   (stopping as soon as another request waits) and takes the next request. With ``--prefork 0``
   the server forks a child for each request instead, which does step 1's preparation itself.
   The child redirects its stdout (the serial console) to the log and restores the rest with the
   clone's overrides (devices, vCPUs, irqchip/PIT state, device state, clock);
4. once the child's boot vCPU is in KVM_RUN it binds the spec's serial socket, if any (COM1
   served there as a VMM's ``--serial unix:PATH`` does, :meth:`vnix.vmm.console.Console.listen`:
   each client gets the output from then on, what any client sends goes to the UART, the log
   keeps it all; its accept thread starts after the answer), answers on the connection with one
   JSON line ``{"pid": N, "restore_ms": T}`` (T: from the request read in step 3 to the vCPU
   running) and closes it, or ``{"error": "..."}`` and exits.

A child ends like a VMM process: its exit status as in :mod:`vnix.vmm.exitcodes`, and on the
way out what ``python -m vnix.vmm`` does (:func:`vnix.vmm.finish.finish`: its sockets closed and
removed, the stop's reason on stderr, the stats JSON with ``exit_status`` and ``exit_reason``
written when the spec names a file, as ``--stats-json`` does). The server does not wait for it
(SIGCHLD ignored: the kernel reaps it). :class:`CloneServer` starts a server and asks it for
clones; :func:`send_identity` gives a restored guest its identity over vsock (the host side of
Firecracker's ``CONNECT <port>`` scheme, see the ``clone_identity`` guest).
"""
from __future__ import annotations

import gc
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

from vnix.vmm import VmmError

MAX_REQUEST = 64 * 1024
READY = b"ready"  # an idle child to the server, once prepared
REHEARSE_AFTER = 0.05  # s: an idle child with no request by then rehearses a restore (~8 ms)
DEFAULT_PREFORK = 2  # idle children kept ready (--prefork K)


class CloneError(VmmError):
    """A clone could not be made (the server's one-line reason)."""


@dataclass
class CloneSpec:
    """One clone's identity on the host side. ``disks``/``nets`` are ``--disk``/``--net``
    strings and replace the snapshot's (as many of each). ``serial_log`` gets COM1's output
    (and the child's stderr); ``serial_sock``, ``api_sock`` and ``stats_json`` are what a VMM
    process's ``--serial unix:PATH``, ``--api-sock`` and ``--stats-json`` are."""

    name: str
    serial_log: str
    vsock_uds: str | None = None
    cid: int | None = None
    disks: list[str] = field(default_factory=list)
    nets: list[str] = field(default_factory=list)
    api_sock: str | None = None
    serial_sock: str | None = None
    stats_json: str | None = None


# -- the server ----------------------------------------------------------------------------------
def _set_policy(policy: int) -> None:
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))
    except OSError:  # SCHED_IDLE -> SCHED_OTHER needs RLIMIT_NICE room without privilege
        pass


def _pool_child(ctrl: socket.socket, snap: object, rehearse: bool) -> None:
    """In an idle pre-forked child (step 1): prepare what no spec changes, say ``ready`` on
    ``ctrl``; if no request came within :data:`REHEARSE_AFTER` s, rehearse a restore (unless
    forked for a waiting request); then wait for one spec and the client's connection there
    (step 3). Never returns."""
    from vnix.vmm.snapshot.restore import prepare_vm, rehearse as rehearse_restore

    prepared = None
    failed: Exception | None = None
    _set_policy(os.SCHED_IDLE)  # a burst's clones run first; this one waits its turn anyway
    try:
        prepared = prepare_vm(snap, memory_backing="private-mmap", dirty_log=False)  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 - told to the client that gets this child
        failed = exc
    try:
        ctrl.send(READY)
    except OSError:
        pass  # the server handed us a request before we were ready and closed its end: read it
    if rehearse and prepared is not None and not select.select([ctrl], [], [], REHEARSE_AFTER)[0]:
        try:  # an optimization: whatever goes wrong in it, the request is still served
            rehearse_restore(snap, memory_backing="private-mmap", defer=prepared.deferred)  # type: ignore[arg-type]
            _rehearse_request(snap)
        except Exception as exc:  # noqa: BLE001
            print(f"vnix-clone: restore rehearsal failed: {exc!r}", file=sys.stderr, flush=True)
    try:
        msg, fds, _, _ = socket.recv_fds(ctrl, 2 * MAX_REQUEST + 64, 1)
    except OSError:
        os._exit(0)
    ctrl.close()
    if not fds:  # the server is gone (EOF) or stops the pool
        os._exit(0)
    _set_policy(os.SCHED_OTHER)
    conn = socket.socket(fileno=fds[0])
    try:
        head, _, line = msg.partition(b" ")
        t_request = float(head)
        spec = CloneSpec(**json.loads(line))
    except (ValueError, TypeError) as exc:
        failed = exc
        spec, t_request = None, time.monotonic()  # type: ignore[assignment]
    if failed is not None:
        try:
            conn.sendall(json.dumps({"error": f"{type(failed).__name__}: {failed}"}).encode() + b"\n")
        except OSError:
            pass
        os._exit(70)
    _child(conn, spec, snap, t_request, prepared)


def _overrides(spec: CloneSpec) -> object:
    """What a spec changes of the snapshot's machine (:class:`SnapshotOverrides`)."""
    from vnix.vmm.config import VsockConfig, parse_disk, parse_net
    from vnix.vmm.snapshot.restore import SnapshotOverrides

    vsock = VsockConfig(cid=spec.cid, uds=spec.vsock_uds) if spec.vsock_uds is not None and spec.cid else None
    return SnapshotOverrides(disks=[parse_disk(d) for d in spec.disks] or None,
                             nets=[parse_net(n) for n in spec.nets] or None, vsock=vsock)


def _rehearse_request(snap: object) -> None:
    """The request's own steps before its restore, on a spec shaped like the snapshot's machine
    (JSON decoding, :class:`CloneSpec`, parsing its disks and nets; nothing opened): the pages
    they write are copied in the idle child too, as :func:`vnix.vmm.snapshot.restore.rehearse`
    does for the restore."""
    from vnix.vmm.stats import Stats

    cfg = snap.config  # type: ignore[attr-defined]
    spec = CloneSpec(name="rehearsal", serial_log=os.devnull, vsock_uds="/nonexistent/vsock", cid=3,
                     disks=[f"{d.path},format={d.format}" for d in cfg.disks],
                     nets=[f"tap,name=vnxrehearsal,mac={n.mac}" if n.mac else "tap,name=vnxrehearsal" for n in cfg.nets],
                     serial_sock="/nonexistent/serial", stats_json="/nonexistent/stats.json")
    try:
        _overrides(CloneSpec(**json.loads(json.dumps(asdict(spec)) + "\n")))
        Stats(time.monotonic())
    except (ValueError, TypeError, VmmError):
        pass


def _child(conn: socket.socket, spec: CloneSpec, snap: object, t_request: float, prepared: object = None) -> None:
    """In the child that got the request: restore, answer, run. Never returns."""
    from vnix.vmm.finish import finish
    from vnix.vmm.machine import Machine
    from vnix.vmm.snapshot.restore import restore_machine
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
        overrides = _overrides(spec)
        machine = restore_machine(Machine, snap, stats, memory_backing="private-mmap",  # type: ignore[arg-type]
                                  overrides=overrides, dirty_log=False, prepared=prepared)  # type: ignore[arg-type]
        if spec.api_sock is not None:
            from vnix.vmm.api import serve

            serve(machine, spec.api_sock)

        def running() -> None:
            ms = (time.monotonic() - t_request) * 1000
            if spec.serial_sock is not None:  # as the VMM's --serial unix:PATH, set up once the vCPU
                try:  # runs (0.1-0.2 ms in a fresh child, its pages copied) and before the answer:
                    machine.console.listen(spec.serial_sock)  # the socket is there when we answer
                except OSError as exc:  # the VM stops (VMM_FAILURE), the client gets the reason
                    conn.sendall(json.dumps({"error": f"serial socket {spec.serial_sock}: {exc}"}).encode() + b"\n")
                    raise
            conn.sendall(json.dumps({"pid": os.getpid(), "restore_ms": round(ms, 3)}).encode() + b"\n")
            conn.close()
            machine.console.accept_clients()  # its thread started after the answer (clients wait in the backlog)
            if prepared is not None:
                prepared.run_deferred()  # type: ignore[attr-defined]  # the rehearsal's VM destroyed, off the clock

        gc.enable()
        stop = machine.run(on_running=running)
        status = stop.status
        finish(machine, stop, stats, stats_json=spec.stats_json)
    except Exception as exc:  # noqa: BLE001 - the client gets the reason, the child ends
        try:
            conn.sendall(json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode() + b"\n")
        except OSError:
            pass
    finally:
        sys.stdout.flush()
        os._exit(status)


class _Idle:
    __slots__ = ("pid", "ctrl", "ready")

    def __init__(self, pid: int, ctrl: socket.socket) -> None:
        self.pid, self.ctrl, self.ready = pid, ctrl, False


class _Pool:
    """The server's pre-forked children, oldest first; ``ready`` once a child said so (its
    rehearsal and preparation done)."""

    def __init__(self, snap: object, lsock: socket.socket, size: int) -> None:
        self.snap, self.lsock, self.size = snap, lsock, size
        self.idle: list[_Idle] = []

    def fork(self, rehearse: bool = True) -> None:
        """``rehearse``: False for a child forked because a request waits (the rehearsal would
        delay that request by more than it saves)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            ours.close()
            self.lsock.close()
            for other in self.idle:  # another child's control socket: its EOF is the server's exit
                other.ctrl.close()
            _pool_child(theirs, self.snap, rehearse)
        theirs.close()
        self.idle.append(_Idle(pid, ours))

    def fill(self) -> None:
        """Fork children until ``size`` are idle, stopping as soon as a request waits."""
        while len(self.idle) < self.size:
            if select.select([self.lsock], [], [], 0)[0]:
                return
            self.fork()

    def _poll(self) -> None:
        """Read the children's ``ready`` messages; forget the children that died (EOF)."""
        waiting = [c.ctrl for c in self.idle if not c.ready]
        readable = select.select(waiting, [], [], 0)[0] if waiting else []
        for child in list(self.idle):
            if child.ctrl in readable:
                try:
                    msg = child.ctrl.recv(16)
                except OSError:
                    msg = b""
                if msg == READY:
                    child.ready = True
                else:
                    child.ctrl.close()
                    self.idle.remove(child)

    def _take(self) -> _Idle:
        """The oldest ready child, else the oldest, else a new one (no rehearsal); put back to
        normal priority, so what it has left of its preparation or rehearsal is not left to
        idle time."""
        self._poll()
        for child in self.idle:
            if child.ready:
                self.idle.remove(child)
                break
        else:
            if not self.idle:
                self.fork(rehearse=False)
            child = self.idle.pop(0)
        try:  # every thread: the rehearsal's device threads, joined before it ends, are SCHED_IDLE too
            tids = [int(t) for t in os.listdir(f"/proc/{child.pid}/task")]
        except OSError:
            tids = [child.pid]
        for tid in tids:
            try:
                os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
            except OSError:
                pass
        return child

    def hand(self, message: bytes, conn: socket.socket) -> bool:
        """Give a request to an idle child (forking one if none is idle); False if none took it."""
        for _ in range(self.size + 1):
            child = self._take()
            try:
                socket.send_fds(child.ctrl, [message], [conn.fileno()])
                return True
            except OSError:  # the child died while idle
                continue
            finally:
                child.ctrl.close()
        return False


def serve(snapshot_path: str, sock_path: str, prefork: int = DEFAULT_PREFORK) -> None:
    """Steps 1-3 of the protocol above, until SIGTERM."""
    import vnix.vmm.api  # noqa: F401 - warm: every child may serve it
    import vnix.vmm.finish  # noqa: F401
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
    pool = _Pool(snap, lsock, max(prefork, 0))
    for _ in range(pool.size):
        pool.fork()
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
        if pool.size:
            if not pool.hand(f"{t_request!r} ".encode() + buf, conn):
                try:
                    conn.sendall(json.dumps({"error": "no clone process could take the request"}).encode() + b"\n")
                except OSError:
                    pass
            conn.close()
            pool.fill()
            continue
        pid = os.fork()
        if pid == 0:
            lsock.close()
            _child(conn, spec, snap, t_request)
        conn.close()


# -- the client ----------------------------------------------------------------------------------
class CloneServer:
    """A clone server process for one snapshot (started here, stopped by :meth:`close`)."""

    def __init__(self, snapshot: str, sock: str, log: str | None = None, prefork: int = DEFAULT_PREFORK) -> None:
        self.sock = sock
        out = open(log, "wb") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", "vnix.vmm.clone", "--snapshot", snapshot, "--sock", sock,
                                      "--prefork", str(prefork)],
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
    prefork = opts.pop("--prefork", str(DEFAULT_PREFORK))
    if set(opts) != {"--snapshot", "--sock"} or len(args) % 2 or not prefork.isdigit():
        print("usage: python -m vnix.vmm.clone --snapshot PATH --sock SOCK [--prefork K]", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    try:
        serve(opts["--snapshot"], opts["--sock"], int(prefork))
    except VmmError as exc:
        print(f"vnix-clone: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
