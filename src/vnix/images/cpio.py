"""A writer for cpio "newc" archives, the format the Linux kernel unpacks as an initramfs.

Writing the archive ourselves means device nodes (``/dev/console``) and root ownership need no
root privileges and no ``mknod``. Format (Documentation/driver-api/early-userspace/buffer-format.rst
in the kernel tree; cpio(5) "New ASCII Format")::

    header   "070701" then 13 fields of 8 ASCII hex digits:
             ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor
             namesize (with the trailing NUL) check (0 for "070701")
    name     NUL terminated, header+name padded with NULs to a multiple of 4
    data     filesize bytes (a symlink's data is its target), padded to a multiple of 4
    ...      the archive ends with an entry named "TRAILER!!!"

The kernel does not need parents before children, but ``cpio -i`` does: callers add
directories first (:meth:`CpioWriter.dir` is idempotent and :meth:`CpioWriter.parents` adds any
missing ones).
"""
from __future__ import annotations

import stat
from typing import BinaryIO

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


class CpioWriter:
    """Appends entries to a binary stream; :meth:`close` writes the trailer (and nothing else)."""

    def __init__(self, out: BinaryIO, *, mtime: int = 0) -> None:
        self._out = out
        self._ino = 1
        self._mtime = mtime  # fixed: the same inputs give byte-identical archives
        self._seen: set[str] = set()
        self._closed = False

    # -- entries -----------------------------------------------------------------------------
    def dir(self, path: str, mode: int = 0o755) -> None:
        path = self._norm(path)
        if path in self._seen:
            return
        self.parents(path)
        self._entry(path, stat.S_IFDIR | mode, b"", nlink=2)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        path = self._norm(path)
        self.parents(path)
        self._entry(path, stat.S_IFREG | mode, data)

    def symlink(self, path: str, target: str) -> None:
        path = self._norm(path)
        self.parents(path)
        self._entry(path, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        path = self._norm(path)
        self.parents(path)
        self._entry(path, stat.S_IFCHR | mode, b"", rdev=(major, minor))

    def parents(self, path: str) -> None:
        parts = self._norm(path).split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.dir("/".join(parts[:i]))

    def close(self) -> None:
        if not self._closed:
            self._entry(TRAILER, 0, b"", nlink=1, ino=0)
            self._closed = True

    def __enter__(self) -> CpioWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- encoding ----------------------------------------------------------------------------
    @staticmethod
    def _norm(path: str) -> str:
        norm = "/".join(p for p in path.split("/") if p not in ("", "."))
        if not norm or ".." in norm.split("/"):
            raise ValueError(f"bad archive path {path!r}")
        return norm

    def _entry(self, name: str, mode: int, data: bytes, *, nlink: int = 1,
               rdev: tuple[int, int] = (0, 0), ino: int | None = None) -> None:
        if self._closed:
            raise ValueError("archive already closed")
        if name != TRAILER:
            if name in self._seen:
                raise ValueError(f"duplicate archive entry {name!r}")
            self._seen.add(name)
        encoded = name.encode() + b"\0"
        if ino is None:
            ino, self._ino = self._ino, self._ino + 1
        fields = (ino, mode, 0, 0, nlink, self._mtime, len(data), 0, 0, rdev[0], rdev[1],
                  len(encoded), 0)
        header = MAGIC + b"".join(b"%08X" % f for f in fields)
        self._out.write(header + encoded + b"\0" * _pad4(len(header) + len(encoded)))
        self._out.write(data + b"\0" * _pad4(len(data)))
