"""Parse a guest's serial output into its report.

The format (guests/testkit/lib/report.c)::

    TESTKIT BEGIN <name>
    ready: <name>                  first line, the benchmark's readiness mark
    <key>: <value>                 facts both VMMs must agree on
    check <what>: ok               a self-check that passed
    check <what>: FAIL (<why>)     one that failed
    TESTKIT END <name>
    <key>: <value>                 after END: measurements (timings), never compared

Serial output may carry ``\\r`` and, under QEMU, firmware noise before BEGIN; both are ignored.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_CHECK_RE = re.compile(r"^check (?P<what>.+?): (?P<result>ok|FAIL)(?: \((?P<why>.*)\))?$")


@dataclass(frozen=True)
class GuestReport:
    name: str | None  # from the BEGIN line; None when there was none
    complete: bool  # BEGIN and END both seen
    lines: list[str] = field(default_factory=list)  # every line between BEGIN and END
    checks: dict[str, bool] = field(default_factory=dict)  # what -> passed
    failures: list[str] = field(default_factory=list)  # "what (why)" of each failed check
    extras: dict[str, str] = field(default_factory=dict)  # key: value lines after END

    @property
    def facts(self) -> dict[str, str]:
        """The ``key: value`` lines of the report (checks excluded)."""
        out: dict[str, str] = {}
        for line in self.lines:
            if line.startswith("check "):
                continue
            key, sep, value = line.partition(": ")
            if sep:
                out[key] = value
        return out


def parse_output(text: str) -> GuestReport:
    name: str | None = None
    lines: list[str] = []
    checks: dict[str, bool] = {}
    failures: list[str] = []
    extras: dict[str, str] = {}
    state = "before"
    for raw in text.splitlines():
        line = raw.rstrip("\r").rstrip()
        if state == "before":
            idx = line.find("TESTKIT BEGIN ")
            if idx >= 0:
                name = line[idx + len("TESTKIT BEGIN "):].strip()
                state = "in"
        elif state == "in":
            if line == f"TESTKIT END {name}":
                state = "after"
                continue
            lines.append(line)
            m = _CHECK_RE.match(line)
            if m:
                ok = m.group("result") == "ok"
                checks[m.group("what")] = ok
                if not ok:
                    failures.append(f"{m.group('what')} ({m.group('why') or ''})")
        else:
            key, sep, value = line.partition(": ")
            if sep:
                extras[key] = value
    return GuestReport(name, state == "after", lines, checks, failures, extras)
