"""TREE -> LiveOS/rootfs.img without loop devices or mounts.

Every mkfs here fills the filesystem from a directory (btrfs --rootdir, ext4 -d,
mkfs.erofs), so builds work in containers, mock and toolbox, where lorax needs loops.

`free` is room for the runtime's writes. dmsquash-live puts a copy-on-write overlay
over rootfs.img, but the *filesystem inside* still needs free blocks and inodes for
every file the runtime creates (logs, anaconda's state, installed updates). The image
is sparse and its free space compresses to nothing in squashfs, so generous free room
costs neither disk nor RAM: only blocks actually written land in the overlay.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from pathlib import Path

from composer.config import RootfsType
from composer.images.sparse import allocated_size, create_sparse
from composer.run import CommandError, ComposerError, info, run

MiB = 1 << 20
GiB = 1 << 30
# Default free room when --rootfs-size is not given; lorax's default image is 2 GiB total.
DEFAULT_FREE = 1 * GiB
# ext4 journal: 4 MiB (the minimum). A journal keeps a persistent overlay consistent
# across power loss, but with the default RAM overlay every journal block written
# becomes a COW chunk in RAM, so it must stay small (default would be 32-64 MiB).
EXT4_JOURNAL_MB = 4


@dataclasses.dataclass(frozen=True)
class TreeSize:
    blocks_bytes: int  # sum of st_blocks*512, hard links counted once
    apparent_bytes: int
    inodes: int


def tree_size(tree: Path) -> TreeSize:
    """Walk the tree without following symlinks; count each hard-linked inode once."""
    seen: set[tuple[int, int]] = set()
    blocks = apparent = inodes = 0
    stack = [os.fspath(tree)]
    st = os.lstat(tree)
    blocks, apparent, inodes = st.st_blocks * 512, st.st_size, 1
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)
                if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                inodes += 1
                blocks += st.st_blocks * 512
                apparent += st.st_size
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
    return TreeSize(blocks, apparent, inodes)


def _round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


def make_rootfs(
    tree: Path,
    dest: Path,
    fstype: RootfsType,
    *,
    free: int | None,
    label: str = "Anaconda",
) -> None:
    """Build a sparse filesystem image `dest` holding `tree`.

    free=None: DEFAULT_FREE of room; free=0: as small as the filesystem allows.
    The label is not needed by dmsquash-live (it finds LiveOS/rootfs.img by path)
    but is kept for people who inspect or mount the image.
    """
    if fstype is RootfsType.SQUASHFS:
        raise ValueError("RootfsType.SQUASHFS has no rootfs.img: put the tree in squashfs directly")
    if not tree.is_dir():
        raise ComposerError(f"rootfs: tree {tree} is not a directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.unlink(missing_ok=True)
    size = tree_size(tree)
    if fstype is RootfsType.EROFS:
        if free:
            info("rootfs: erofs is read-only, --rootfs-size is ignored (writes need an overlayfs overlay)")
        _make_erofs(tree, dest)
    else:
        room = DEFAULT_FREE if free is None else free
        if fstype is RootfsType.BTRFS:
            _make_btrfs(tree, dest, size, room, label)
        elif fstype is RootfsType.EXT4:
            _make_ext4(tree, dest, size, room, label)
        else:
            raise ValueError(f"unknown rootfs type {fstype}")
    info(
        f"rootfs: {fstype} {dest.name}: tree {size.blocks_bytes / MiB:.0f} MiB in {size.inodes} inodes, "
        f"image {dest.stat().st_size / MiB:.0f} MiB apparent, {allocated_size(dest) / MiB:.0f} MiB allocated"
    )


def _make_btrfs(tree: Path, dest: Path, size: TreeSize, free: int, label: str) -> None:
    # -m single: the image is one "device" inside squashfs, so DUP metadata gives no
    # redundancy, only doubles metadata in the image and in the RAM overlay.
    argv: list[str | os.PathLike[str]] = ["mkfs.btrfs", "-q", "-m", "single", "-L", label, "--rootdir", tree]
    if free == 0:
        dest.touch()
        run([*argv, "--shrink", dest])
        return
    # mkfs.btrfs --rootdir enlarges a file that is too small for the tree, so this
    # estimate only needs to be right about the free room: data + ~10% metadata + chunks.
    estimate = int(size.blocks_bytes * 1.1) + 128 * MiB
    create_sparse(dest, _round_up(estimate + free, MiB))
    run([*argv, dest])
    total, used = _btrfs_usage(dest)
    if total - used < free:
        info(f"rootfs: btrfs has {(total - used) / MiB:.0f} MiB free, less than the {free / MiB:.0f} MiB asked for")


def _btrfs_usage(img: Path) -> tuple[int, int]:
    out = run(["btrfs", "inspect-internal", "dump-super", img], capture=True).stdout.decode()
    fields = dict(re.findall(r"^(total_bytes|bytes_used)\s+(\d+)$", out, re.MULTILINE))
    return int(fields["total_bytes"]), int(fields["bytes_used"])


def _make_ext4(tree: Path, dest: Path, size: TreeSize, free: int, label: str) -> None:
    # Inodes for the tree, 10% slack, plus mke2fs's default one per 16 KiB of free room,
    # because running out of inodes is as fatal for the runtime as running out of blocks.
    inodes = size.inodes + size.inodes // 10 + 1024 + free // (16 * 1024)
    base = int(size.blocks_bytes * 1.15) + inodes * 256 + (EXT4_JOURNAL_MB + 32) * MiB
    for attempt, factor in enumerate((1.0, 1.5)):
        image_size = _round_up(int(base * factor) + free, 4 * MiB)
        create_sparse(dest, image_size)
        argv: list[str | os.PathLike[str]] = [
            "mkfs.ext4", "-q", "-F",
            "-b", "4096",  # mke2fs picks 1 KiB blocks for "small" images; never want that
            "-m", "0",  # no blocks reserved for root: everything in the runtime is root
            "-N", str(inodes),
            "-J", f"size={EXT4_JOURNAL_MB}",
            "-L", label,
            "-E", "root_owner=0:0",
            "-d", tree, dest,
        ]
        try:
            run(argv)
            break
        except CommandError as e:
            nospace = re.search(r"no space|could not allocate|not enough", e.stderr, re.IGNORECASE)
            if not nospace:
                raise
            if attempt == 1:
                raise ComposerError(
                    f"rootfs: {image_size // MiB} MiB ext4 image too small for {tree} "
                    f"({size.blocks_bytes // MiB} MiB, {size.inodes} inodes); raise --rootfs-size"
                ) from None
    # mke2fs -d leaves / at its own defaults; give it the tree's owner and mode
    # (Fedora's / is 0555). debugfs edits the image file directly: no mount needed.
    st = os.lstat(tree)
    for field, value in (("mode", f"0{st.st_mode:o}"), ("uid", str(st.st_uid)), ("gid", str(st.st_gid))):
        run(["debugfs", "-w", "-R", f"set_inode_field / {field} {value}", dest], quiet=True)


def _make_erofs(tree: Path, dest: Path) -> None:
    # Uncompressed on purpose: the image goes into squashfs, which compresses it;
    # compressing twice costs CPU at boot and gains nothing.
    run(["mkfs.erofs", "--quiet", dest, tree])
