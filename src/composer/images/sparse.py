"""Sparse files: create with truncate, copy hole-preserving, report apparent vs allocated size.

Raw filesystem images are mostly free space. Writing zeros would cost disk, page cache
and (inside squashfs) nothing but time; holes cost nothing anywhere.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

_CHUNK = 8 << 20


def create_sparse(path: Path, size: int) -> None:
    """Make `path` a file of `size` bytes that allocates no blocks (replaces an existing file)."""
    if size < 0:
        raise ValueError(f"negative size {size}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def apparent_size(path: Path) -> int:
    return os.stat(path).st_size


def allocated_size(path: Path) -> int:
    """Bytes of disk actually used (st_blocks is in 512-byte units whatever the fs block size)."""
    return os.stat(path).st_blocks * 512


def data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    """(start, end) of each data region, found with SEEK_DATA/SEEK_HOLE.

    Filesystems without hole support report the whole file as one data region,
    which is still correct, just not sparse.
    """
    ranges: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data after pos: the rest is a hole
                break
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        end = min(end, size)
        if start >= end:
            break
        ranges.append((start, end))
        pos = end
    return ranges


def _copy_range(src: int, dst: int, start: int, end: int) -> None:
    pos = start
    while pos < end:
        count = min(_CHUNK, end - pos)
        try:
            # copy_file_range stays in the kernel and may even reflink on btrfs/xfs.
            n = os.copy_file_range(src, dst, count, pos, pos)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            n = 0
        if n == 0:  # unsupported here (or cross-fs on old kernels): plain pread/pwrite
            data = os.pread(src, count, pos)
            if not data:
                raise OSError(errno.EIO, f"unexpected end of file at {pos}")
            view = memoryview(data)
            while view:
                w = os.pwrite(dst, view, pos)
                view = view[w:]
                pos += w
            continue
        pos += n


def copy_sparse(src: Path, dst: Path) -> None:
    """Copy src to dst, keeping holes as holes. dst is written under a fresh name beside
    it (unpredictable, created exclusively: nothing planted there is written through),
    then renamed."""
    sfd = os.open(src, os.O_RDONLY)
    try:
        st = os.fstat(sfd)
        dfd, name = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.")
        tmp = Path(name)
        try:
            os.fchmod(dfd, st.st_mode & 0o7777)
            for start, end in data_ranges(sfd, st.st_size):
                _copy_range(sfd, dfd, start, end)
            os.ftruncate(dfd, st.st_size)  # a trailing hole only exists through the size
        except BaseException:
            os.close(dfd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(dfd)
    finally:
        os.close(sfd)
    os.replace(tmp, dst)


def copy_into(src: Path, dst: Path, offset: int) -> None:
    """Write src into the existing file dst at `offset` (a partition in a disk image),
    leaving dst's holes where src has holes."""
    sfd = os.open(src, os.O_RDONLY)
    try:
        dfd = os.open(dst, os.O_WRONLY)
        try:
            for start, end in data_ranges(sfd, os.fstat(sfd).st_size):
                pos = start
                while pos < end:
                    data = os.pread(sfd, min(_CHUNK, end - pos), pos)
                    if not data:
                        raise OSError(errno.EIO, f"unexpected end of {src} at {pos}")
                    view = memoryview(data)
                    while view:
                        w = os.pwrite(dfd, view, offset + pos)
                        view = view[w:]
                        pos += w
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)
