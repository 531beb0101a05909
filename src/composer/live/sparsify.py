"""`composer sparsify IMG`: zero a filesystem image's free blocks, then turn zero runs into holes.

Also the small image helpers the other LiveOS tools share (filesystem type, in-use
check, sparse prefix copy).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
from pathlib import Path

from composer.images.sparse import allocated_size, apparent_size, data_ranges
from composer.run import ComposerError, info, run

EXT_TYPES = ("ext2", "ext3", "ext4")


def fs_type(img: Path) -> str:
    """Filesystem type by content (blkid -p probes the file itself, no cache): '' if unknown."""
    proc = run(["blkid", "-p", "-o", "value", "-s", "TYPE", img], capture=True, check=False, quiet=True)
    if proc.returncode not in (0, 2):  # 2: nothing recognised
        raise ComposerError(f"blkid cannot probe {img}: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout.decode().strip()


def loop_devices_for(img: Path) -> list[str]:
    """Loop devices backed by `img`: a mounted image or a running live system's overlay has one."""
    out = run(["losetup", "-n", "-O", "NAME", "-j", img.resolve()], capture=True, check=False, quiet=True).stdout
    return out.decode().split()


def refuse_if_in_use(img: Path, what: str) -> None:
    loops = loop_devices_for(img)
    if loops:
        raise ComposerError(f"{what} {img} is in use by {', '.join(loops)} (mounted or a running live system); detach it first")


def copy_prefix_sparse(src: Path, dst: Path, length: int, *, follow_symlinks: bool = True) -> None:
    """Make `dst`, a new file, a `length`-byte copy of src's start, holes kept as holes.
    follow_symlinks=False: a link at `src` is refused (a medium's overlay is never followed)."""
    sfd = os.open(src, os.O_RDONLY | (0 if follow_symlinks else os.O_NOFOLLOW))
    try:
        ssize = os.fstat(sfd).st_size
        # Exclusive: never a file that is already there, nor what a link there points at.
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            for start, end in data_ranges(sfd, min(ssize, length)):
                pos = start
                while pos < end:
                    n = 0
                    try:
                        n = os.copy_file_range(sfd, dfd, min(8 << 20, end - pos), pos, pos)
                    except OSError as e:
                        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                            raise
                    if n == 0:
                        data = os.pread(sfd, min(8 << 20, end - pos), pos)
                        if not data:
                            raise OSError(errno.EIO, f"{src}: unexpected end of file at {pos}")
                        n = os.pwrite(dfd, data, pos)
                    pos += n
            os.ftruncate(dfd, length)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def ext_needs_check(img: Path) -> str | None:
    """Why zeroing free blocks by the bitmaps would be unsafe now, or None."""
    out = run(["dumpe2fs", "-h", img], capture=True, quiet=True).stdout.decode(errors="replace")
    state = re.search(r"^Filesystem state:\s*(.*)$", out, re.MULTILINE)
    features = re.search(r"^Filesystem features:\s*(.*)$", out, re.MULTILINE)
    if features and "needs_recovery" in features.group(1).split():
        return "its journal needs recovery"
    if state and state.group(1).strip() != "clean":
        return f"its state is '{state.group(1).strip()}'"
    return None


@dataclasses.dataclass(frozen=True)
class SparsifyResult:
    fstype: str
    apparent: int
    allocated_before: int
    allocated_after: int
    zeroed_free_blocks: bool


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def sparsify(img: Path) -> SparsifyResult:
    if os.path.islink(img):
        # zerofree and fallocate would change what the link points at: composer never writes through a link.
        raise ComposerError(
            f"sparsify: {img} is a symbolic link (to {os.readlink(img)}): composer never writes "
            "through a link; give the image itself"
        )
    if not img.exists():
        raise ComposerError(f"sparsify: {img}: no such file")
    if not img.is_file():
        raise ComposerError(f"sparsify: {img} is not a regular file")
    if not os.access(img, os.R_OK | os.W_OK):
        # Holes are punched in place: the image must be writable by us.
        raise ComposerError(f"sparsify: {img}: not writable (permission denied)")
    refuse_if_in_use(img, "image")
    fstype = fs_type(img)
    before = allocated_size(img)
    info(f"sparsify: {img}: {fstype or 'unknown content'}, {human(apparent_size(img))} apparent, {human(before)} allocated")
    zeroed = False
    if fstype in EXT_TYPES:
        reason = ext_needs_check(img)
        if reason:
            raise ComposerError(f"sparsify: {img}: {reason}; run `e2fsck -f {img}` first (free-block bitmaps may be stale)")
        run(["zerofree", img])  # refuses by itself if the filesystem is mounted
        zeroed = True
    else:
        info(f"sparsify: no free-block zeroing for {fstype or 'this content'}; only existing zero runs become holes")
    # --dig-holes only deallocates blocks that already read as zeros: content is unchanged.
    run(["fallocate", "--dig-holes", img])
    after = allocated_size(img)
    info(f"sparsify: {img}: {human(apparent_size(img))} apparent, allocated {human(before)} -> {human(after)}")
    return SparsifyResult(fstype, apparent_size(img), before, after, zeroed)
