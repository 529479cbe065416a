"""Drive a VM process whose serial console is its stdin/stdout.

The tiny guest's /init speaks a line protocol on the console (vnix.images.guest_init): a
readiness line, then for a command ``begin``, the output, ``end status=N``. The guest's tty
turns ``\\n`` into ``\\r\\n`` (termios ONLCR), which is undone here for command output.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from vnix.images.guest_init import BEGIN_MARKER, READY_PREFIX, parse_end_marker

_TAIL_LINES = 40


@dataclass
class Timings:
    """Monotonic seconds since the VM process started."""

    ready: float | None = None
    command_end: float | None = None
    exited: float | None = None

    def lines(self) -> list[str]:
        def fmt(v: float | None) -> str:
            return f"{v:.2f} s" if v is not None else "-"

        return [f"start -> readiness line  {fmt(self.ready)}",
                f"start -> command end     {fmt(self.command_end)}",
                f"start -> VM exit         {fmt(self.exited)}"]


@dataclass
class SessionResult:
    process_status: int  # the VM process's exit status (negative: killed by that signal)
    command_status: int | None  # the guest command's, from the end marker; None if not seen
    ready_line: str | None
    timings: Timings
    boot_tail: list[str] = field(default_factory=list)  # the last console lines, for errors

    def failure_hint(self) -> str:
        for line in self.boot_tail:
            if "Kernel panic" in line:
                return line.strip()
        return self.boot_tail[-1].strip() if self.boot_tail else "no console output"


def _lines(stream: BinaryIO):  # type: ignore[no-untyped-def]
    for raw in iter(stream.readline, b""):
        yield raw.replace(b"\r\n", b"\n").replace(b"\r", b"")


def run_command(argv: Sequence[str], *, out: BinaryIO | None = None,
                timeout: float | None = None) -> SessionResult:
    """Start the VM (its cmdline carries ``vnix.cmd``), stream the command's output to ``out``
    (default: our stdout) and return once the VM process has ended."""
    sink = out or sys.stdout.buffer
    start = time.monotonic()
    timings = Timings()
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    status: int | None = None
    ready: str | None = None
    in_command = False
    proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    timer = threading.Timer(timeout, proc.kill) if timeout else None
    if timer:
        timer.daemon = True
        timer.start()
    try:
        for line in _lines(proc.stdout):
            text = line.decode(errors="replace")
            if in_command:
                end = parse_end_marker(text) if text.startswith("vnix-guest: end") else None
                if end is not None:
                    status, in_command = end, False
                    timings.command_end = time.monotonic() - start
                    continue
                sink.write(line)
                sink.flush()
                continue
            tail.append(text)
            if ready is None and text.startswith(READY_PREFIX):
                ready = text.strip()
                timings.ready = time.monotonic() - start
            elif ready is not None and text.startswith(BEGIN_MARKER) and status is None:
                in_command = True
        # After the end marker the guest powers off; give it a moment, then stop it.
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        if timer:
            timer.cancel()
    timings.exited = time.monotonic() - start
    return SessionResult(proc.returncode, status, ready, timings, list(tail))


def attach(argv: Sequence[str], *, watch: bool = False) -> SessionResult:
    """Run the VM with its console on our terminal until it exits.

    Without ``watch`` the VM process inherits stdin/stdout (QEMU puts a terminal in raw mode
    itself, and Ctrl-A x reaches its mux). With ``watch`` its output is relayed through us so
    the readiness line can be timed."""
    start = time.monotonic()
    timings = Timings()
    if not watch:
        proc = subprocess.Popen(list(argv))
        try:
            proc.wait()
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
        timings.exited = time.monotonic() - start
        return SessionResult(proc.returncode, None, None, timings)
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE)
    assert proc.stdout is not None
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    try:
        ready = _relay(proc.stdout.fileno(), sys.stdout.buffer, start, timings, tail)
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    proc.wait()
    timings.exited = time.monotonic() - start
    return SessionResult(proc.returncode, None, ready, timings, list(tail))


def _relay(fd: int, sink: BinaryIO, start: float, timings: Timings, tail: deque[str]) -> str | None:
    """Copy the console to ``sink`` until EOF; returns the readiness line if one was seen."""
    ready: str | None = None
    pending = b""
    while chunk := os.read(fd, 4096):  # chunks, not lines: a shell prompt has no newline
        sink.write(chunk)
        sink.flush()
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            text = raw.decode(errors="replace").replace("\r", "")
            tail.append(text)
            if ready is None and text.startswith(READY_PREFIX):
                ready = text.strip()
                timings.ready = time.monotonic() - start
    return ready
