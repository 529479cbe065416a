"""The one command line that starts a VMM process; every launcher (``vnix run``, the native
hypervisor driver, the test kit, the benchmarks) builds it here.

::

    PYTHON -I -S -c "<bootstrap>" VMM-ARGS...

* ``-I`` (isolated): the caller's ``PYTHON*`` variables do not reach the VMM. One of them,
  ``PYTHONDONTWRITEBYTECODE`` (set in many CI and container images), otherwise makes every VMM
  start compile vnix from source (tens of milliseconds); isolation also keeps a user's
  ``PYTHONPATH`` from swapping modules under a process that holds a VM. ``-I`` also implies
  ``-P``: the current directory is not on ``sys.path``.
* ``-S``: no ``site`` import, so no ``.pth`` processing and no site customisation at start-up.
  The bootstrap puts what ``site`` would have given the VMM on ``sys.path`` itself: the directory
  vnix is imported from (first) and this environment's site-packages (last), so a module the
  VMM imports lazily from a third-party package still resolves.

The bootstrap then calls :func:`vnix.vmm.__main__.entry`, exactly what ``python -m vnix.vmm``
runs (without ``runpy``). Exit statuses: :mod:`vnix.vmm.exitcodes`.
"""
from __future__ import annotations

import os
import sys
from typing import Sequence


def _import_roots() -> list[str]:
    import sysconfig

    import vnix

    vnix_root = os.path.dirname(os.path.dirname(os.path.abspath(vnix.__file__)))
    roots = [vnix_root]
    for key in ("purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path and path not in roots and os.path.isdir(path):
            roots.append(path)
    return roots


def bootstrap_code() -> str:
    """The ``-c`` program: set ``sys.path`` as described above, then run the VMM."""
    root, *site_dirs = _import_roots()
    return (
        f"import sys;sys.path.insert(0,{root!r});sys.path.extend({site_dirs!r});"
        "from vnix.vmm.__main__ import entry;entry()"
    )


def vmm_argv(args: Sequence[str], *, python: str | None = None) -> list[str]:
    """The argv that runs ``python -m vnix.vmm ARGS`` the fast way.

    ``python`` defaults to this interpreter; another interpreter gets the plain
    ``-m vnix.vmm`` form, since this one's paths mean nothing to it.
    """
    if python is not None and os.path.abspath(python) != os.path.abspath(sys.executable):
        return [python, "-m", "vnix.vmm", *args]
    return [sys.executable, "-I", "-S", "-c", bootstrap_code(), *args]
