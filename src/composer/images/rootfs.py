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
from composer.images.btrfs_repro import normalize_btrfs
from composer.images.sparse import allocated_size, create_sparse
from composer.reproducible import clamp_times, seed_uuid
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
    source_date_epoch: int | None = None,
    seed: str = "",
    image_size: int | None = None,
    fs_uuid: str | None = None,
) -> None:
    """Build a sparse filesystem image `dest` holding `tree`.

    free=None: DEFAULT_FREE of room; free=0: as small as the filesystem allows.
    The label is not needed by dmsquash-live (it finds LiveOS/rootfs.img by path)
    but is kept for people who inspect or mount the image.

    With source_date_epoch the tree's times are clamped to it (this changes the
    tree) and the filesystem's UUIDs and hash seeds are derived from `seed`.

    image_size: the image's exact size in bytes (a disk partition; ext4 and btrfs), one
    line when the tree does not fit; fs_uuid: the filesystem's UUID (fstab and the boot
    loader name it), whatever the seed gives.
    """
    if fstype is RootfsType.SQUASHFS:
        raise ValueError("RootfsType.SQUASHFS has no rootfs.img: put the tree in squashfs directly")
    if not tree.is_dir():
        raise ComposerError(f"rootfs: tree {tree} is not a directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.unlink(missing_ok=True)
    repro = Repro(source_date_epoch, seed) if source_date_epoch is not None else None
    if repro is not None:
        clamp_times(tree, repro.epoch)
    size = tree_size(tree)
    if fstype is RootfsType.EROFS:
        if free:
            info("rootfs: erofs is read-only, --rootfs-size is ignored (writes need an overlayfs overlay)")
        run(erofs_argv(tree, dest, repro))
    else:
        room = DEFAULT_FREE if free is None else free
        fixed = Fixed(image_size, fs_uuid)
        if fstype is RootfsType.BTRFS:
            _make_btrfs(tree, dest, size, room, label, repro, fixed)
        elif fstype is RootfsType.EXT4:
            _make_ext4(tree, dest, size, room, label, repro, fixed)
        else:
            raise ValueError(f"unknown rootfs type {fstype}")
    info(
        f"rootfs: {fstype} {dest.name}: tree {size.blocks_bytes / MiB:.0f} MiB in {size.inodes} inodes, "
        f"image {dest.stat().st_size / MiB:.0f} MiB apparent, {allocated_size(dest) / MiB:.0f} MiB allocated"
    )


@dataclasses.dataclass(frozen=True)
class Repro:
    """What a reproducible mkfs needs: the time to use and the seed for its UUIDs."""

    epoch: int
    seed: str

    def uuid(self, role: str) -> str:
        return str(seed_uuid(self.seed, role))


@dataclasses.dataclass(frozen=True)
class Fixed:
    """What a disk partition fixes: the image's size and the filesystem's UUID (None: free)."""

    size: int | None = None
    uuid: str | None = None


def min_image_size(size: TreeSize, fstype: RootfsType) -> int:
    """About the smallest ext4 or btrfs image that holds a tree of this size."""
    if fstype is RootfsType.BTRFS:
        return _round_up(int(size.blocks_bytes * 1.1) + 128 * MiB, MiB)
    inodes = size.inodes + size.inodes // 10 + 1024
    return _round_up(int(size.blocks_bytes * 1.15) + inodes * 256 + (EXT4_JOURNAL_MB + 32) * MiB, MiB)


def _too_small(dest: Path, image_size: int, tree: Path, size: TreeSize) -> ComposerError:
    return ComposerError(
        f"{dest.name}: {image_size // MiB} MiB too small for {tree} ({size.blocks_bytes // MiB} MiB in {size.inodes} inodes)"
    )


# From 6.10.1 mkfs.btrfs --rootdir numbers inodes itself; before, it copied the host's
# st_ino, which differs in every copy of a tree. --device-uuid is from 6.6.
BTRFS_REPRODUCIBLE = (6, 10, 1)


def btrfs_progs_version() -> tuple[int, ...]:
    out = run(["mkfs.btrfs", "--version"], capture=True, quiet=True).stdout.decode()
    m = re.search(r"v(\d+(?:\.\d+)*)", out)
    return tuple(int(n) for n in m.group(1).split(".")) if m else (0,)


def btrfs_argv(tree: Path, label: str, repro: Repro | None, uuid: str | None = None) -> list[str | os.PathLike[str]]:
    # -m single: the image is one "device" inside squashfs, so DUP metadata gives no
    # redundancy, only doubles metadata in the image and in the RAM overlay.
    argv: list[str | os.PathLike[str]] = ["mkfs.btrfs", "-q", "-m", "single", "-L", label, "--rootdir", tree]
    if repro is not None:
        # The superblock's UUIDs; the rest that mkfs makes random is rewritten afterwards.
        argv += ["-U", uuid or repro.uuid("rootfs"), "--device-uuid", repro.uuid("rootfs-device")]
    elif uuid is not None:
        argv += ["-U", uuid]
    return argv


def _make_btrfs(tree: Path, dest: Path, size: TreeSize, free: int, label: str, repro: Repro | None, fixed: Fixed) -> None:
    if repro is not None and (version := btrfs_progs_version()) < BTRFS_REPRODUCIBLE:
        info(
            f"rootfs: WARNING: btrfs-progs {'.'.join(map(str, version))} copies host inode numbers, the image "
            "will not be reproducible; install 6.10.1 or later (scripts/setup-host does), or use ext4 or erofs"
        )
        argv = [*btrfs_argv(tree, label, None), "-U", fixed.uuid or repro.uuid("rootfs")]
        repro = None
    else:
        argv = btrfs_argv(tree, label, repro, fixed.uuid)
    if fixed.size is not None:
        # mkfs.btrfs --rootdir enlarges a file too small for the tree: a partition cannot grow.
        create_sparse(dest, fixed.size)
        run([*argv, dest])
        if dest.stat().st_size > fixed.size:
            raise _too_small(dest, fixed.size, tree, size)
    elif free == 0:
        dest.touch()
        run([*argv, "--shrink", dest])
    else:
        # mkfs.btrfs --rootdir enlarges a file that is too small for the tree, so this
        # estimate only needs to be right about the free room: data + ~10% metadata + chunks.
        estimate = int(size.blocks_bytes * 1.1) + 128 * MiB
        create_sparse(dest, _round_up(estimate + free, MiB))
        run([*argv, dest])
    if repro is not None:
        stats = normalize_btrfs(dest, repro.epoch, lambda role: seed_uuid(repro.seed, role))
        info(
            f"rootfs: btrfs made reproducible: {stats.blocks} tree blocks, {stats.inodes} inodes rewritten, "
            f"{stats.wiped // 1024} KiB of stale blocks zeroed"
        )
    if free and fixed.size is None:
        total, used = _btrfs_usage(dest)
        if total - used < free:
            info(f"rootfs: btrfs has {(total - used) / MiB:.0f} MiB free, less than the {free / MiB:.0f} MiB asked for")


def _btrfs_usage(img: Path) -> tuple[int, int]:
    out = run(["btrfs", "inspect-internal", "dump-super", img], capture=True).stdout.decode()
    fields = dict(re.findall(r"^(total_bytes|bytes_used)\s+(\d+)$", out, re.MULTILINE))
    return int(fields["total_bytes"]), int(fields["bytes_used"])


def ext4_argv(
    tree: Path, dest: Path, inodes: int, label: str, repro: Repro | None, uuid: str | None = None
) -> list[str | os.PathLike[str]]:
    extended = "root_owner=0:0"
    if repro is not None:
        # The htree directory hash seed is random by default and changes every directory block.
        extended += f",hash_seed={repro.uuid('rootfs-hash')}"
    return [
        "mkfs.ext4",
        "-q",
        "-F",
        "-b",
        "4096",  # mke2fs picks 1 KiB blocks for "small" images; never want that
        "-m",
        "0",  # no blocks reserved for root: everything in the runtime is root
        "-N",
        str(inodes),
        "-J",
        f"size={EXT4_JOURNAL_MB}",
        "-L",
        label,
        *(["-U", uuid or repro.uuid("rootfs")] if repro is not None else ["-U", uuid] if uuid else []),
        "-E",
        extended,
        "-d",
        tree,
        dest,
    ]


def e2fs_env(repro: Repro | None) -> dict[str, str] | None:
    """e2fsprogs 1.47.0 has no SOURCE_DATE_EPOCH; this test hook replaces its clock
    (superblock times, the root directory, lost+found, the journal, crtimes)."""
    return {"E2FSPROGS_FAKE_TIME": str(repro.epoch)} if repro is not None else None


def _make_ext4(tree: Path, dest: Path, size: TreeSize, free: int, label: str, repro: Repro | None, fixed: Fixed) -> None:
    if fixed.size is not None:
        if fixed.size < min_image_size(size, RootfsType.EXT4):
            raise _too_small(dest, fixed.size, tree, size)
        free = fixed.size - min_image_size(size, RootfsType.EXT4)
    # Inodes for the tree, 10% slack, plus mke2fs's default one per 16 KiB of free room,
    # because running out of inodes is as fatal for the runtime as running out of blocks.
    inodes = size.inodes + size.inodes // 10 + 1024 + free // (16 * 1024)
    base = int(size.blocks_bytes * 1.15) + inodes * 256 + (EXT4_JOURNAL_MB + 32) * MiB
    for attempt, factor in enumerate((1.0, 1.5)):
        image_size = fixed.size or _round_up(int(base * factor) + free, 4 * MiB)
        create_sparse(dest, image_size)
        try:
            run(ext4_argv(tree, dest, inodes, label, repro, fixed.uuid), env=e2fs_env(repro))
            break
        except CommandError as e:
            nospace = re.search(r"no space|could not allocate|not enough|too big for filesystem", e.stderr, re.IGNORECASE)
            if not nospace:
                raise
            if fixed.size is not None:
                raise _too_small(dest, fixed.size, tree, size) from None
            if attempt == 1:
                raise ComposerError(
                    f"rootfs: {image_size // MiB} MiB ext4 image too small for {tree} "
                    f"({size.blocks_bytes // MiB} MiB, {size.inodes} inodes); raise --rootfs-size"
                ) from None
    # mke2fs -d leaves / at its own defaults; give it the tree's owner and mode
    # (Fedora's / is 0555). debugfs edits the image file directly: no mount needed.
    st = os.lstat(tree)
    commands = [
        f"set_inode_field / {field} {value}"
        for field, value in (("mode", f"0{st.st_mode:o}"), ("uid", str(st.st_uid)), ("gid", str(st.st_gid)))
    ]
    if repro is not None:
        commands += ext4_time_commands(_ext4_used_inodes(dest), repro.epoch)
    script = dest.with_name(dest.name + ".debugfs")
    script.write_text("".join(c + "\n" for c in commands))
    try:
        # debugfs exits 0 even when a command fails; its errors are the stderr lines
        # other than the version banner.
        proc = run(["debugfs", "-w", "-f", script, dest], capture=True, env=e2fs_env(repro))
        errors = [ln for ln in proc.stderr.decode(errors="replace").splitlines() if ln and not ln.startswith("debugfs ")]
        if errors:
            raise ComposerError(f"rootfs: debugfs on {dest.name}: {' | '.join(errors[:3])}")
    finally:
        script.unlink(missing_ok=True)


def ext4_time_commands(inodes: list[int], epoch: int) -> list[str]:
    """debugfs commands that set atime and ctime of these inodes to epoch.

    mke2fs -d copies atime and ctime from the source tree. atime we clamp, but ctime
    is the host's "last change" time, which no system call can set.
    """
    return [f"set_inode_field <{ino}> {field} @{epoch}" for ino in inodes for field in ("atime", "ctime")]


def _ext4_used_inodes(img: Path) -> list[int]:
    """Inodes in use, from dumpe2fs's per-group "Free inodes:" ranges: the root
    directory and every inode from the first non-reserved one on."""
    out = run(["dumpe2fs", img], capture=True, quiet=True).stdout.decode()
    head = dict(re.findall(r"^(Inode count|Inodes per group|First inode):\s+(\d+)$", out, re.MULTILINE))
    total, first = int(head["Inode count"]), int(head["First inode"])
    free: set[int] = set()
    for ranges in re.findall(r"^\s+Free inodes: (.*)$", out, re.MULTILINE):
        for part in filter(None, (r.strip() for r in ranges.split(","))):
            lo, _, hi = part.partition("-")
            free.update(range(int(lo), int(hi or lo) + 1))
    return [2] + [i for i in range(first, total + 1) if i not in free]


def erofs_argv(tree: Path, dest: Path, repro: Repro | None) -> list[str | os.PathLike[str]]:
    # Uncompressed on purpose: the image goes into squashfs, which compresses it;
    # compressing twice costs CPU at boot and gains nothing.
    argv: list[str | os.PathLike[str]] = ["mkfs.erofs", "--quiet"]
    if repro is not None:
        # -T is the build time (root and files without their own time); per-file
        # mtimes are kept (already clamped), so Python's .pyc files stay valid.
        argv += [f"-U{repro.uuid('rootfs')}", f"-T{repro.epoch}"]
    return argv + [dest, tree]
