"""Serial consoles of running guests: relaying them to a terminal and reading results from them.

``vnix.console.session`` runs a VM process (QEMU or the native VMM) whose serial console is its
stdin/stdout and either relays it to the user's terminal (:func:`attach`) or runs one command in
the tiny guest and returns its output and exit status (:func:`run_command`).
"""
from __future__ import annotations
