"""Reproducible builds: seeds, clamped times, the tools' reproducibility options, and
small real images built twice from trees made at different times."""

import hashlib
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from composer.config import Compression, RootfsType
from composer.dracut import dracut_argv
from composer.images.cpio import CpioEntry, read_newc, write_newc
from composer.images.efiboot import make_efiboot, mkfs_fat_argv, mtools_env
from composer.images.iso import iso_date, xorriso_argv
from composer.images.rootfs import (
    BTRFS_REPRODUCIBLE,
    Repro,
    btrfs_argv,
    btrfs_progs_version,
    erofs_argv,
    ext4_argv,
    ext4_time_commands,
    make_rootfs,
)
from composer.images.squashfs import make_squashfs, squashfs_env
from composer.outputs.bigimage import make_big_initrd
from composer.reproducible import build_seed, clamp_times, fat_serial, normalize_tree, seed_uuid

EPOCH = 1700000000
SEED = build_seed("TestProduct", "1", "x86_64", EPOCH)
REPRO = Repro(EPOCH, SEED)


def needs(*tools: str) -> pytest.MarkDecorator:
    missing = [t for t in tools if shutil.which(t) is None]
    return pytest.mark.skipif(bool(missing), reason=f"not installed: {missing}")


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def make_tree(root: Path) -> Path:
    """A small tree whose files get "now" times, inode numbers and ctimes of their own."""
    (root / "etc").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "etc/os-release").write_text("NAME=Test\n")
    (root / "usr/bin/tool").write_bytes(bytes(range(256)) * 4096)
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-alias")
    (root / "usr/bin/sh").symlink_to("tool")
    old = root / "etc/old"
    old.write_text("from a package\n")
    os.utime(old, (EPOCH - 1000, EPOCH - 1000))
    return root


def test_seeds_are_stable_and_distinct() -> None:
    assert seed_uuid(SEED, "rootfs") == seed_uuid(SEED, "rootfs")
    assert seed_uuid(SEED, "rootfs") != seed_uuid(SEED, "rootfs-hash")
    assert seed_uuid(SEED, "rootfs") != seed_uuid(build_seed("TestProduct", "2", "x86_64", EPOCH), "rootfs")
    assert len(fat_serial(SEED)) == 8 and int(fat_serial(SEED), 16) >= 0


def test_clamp_times(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t")
    clamp_times(tree, EPOCH)
    for p in [tree, *tree.rglob("*")]:
        st = p.lstat()
        assert st.st_mtime_ns % 10**9 == 0 and st.st_mtime <= EPOCH, p
        if not p.is_dir():  # rglob has just read (and so re-dated) the directories
            assert st.st_atime_ns == st.st_mtime_ns, p
    assert (tree / "usr/bin/tool").stat().st_mtime == EPOCH
    assert (tree / "etc/old").stat().st_mtime == EPOCH - 1000  # older times are kept
    assert os.readlink(tree / "usr/bin/sh") == "tool"
    assert (tree / "usr/bin/sh").lstat().st_mtime == EPOCH


def test_normalize_tree(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t")
    (tree / "var/lib/dnf").mkdir(parents=True)
    for name in ("history.sqlite", "history.sqlite-wal", "history.sqlite-shm"):
        (tree / "var/lib/dnf" / name).write_text("x")
    normalize_tree(tree)
    assert list((tree / "var/lib/dnf").iterdir()) == []
    assert (tree / "etc/os-release").is_file()
    # dnf's logs and package cache no longer leak into the tree at all: test_dnf.py
    # test_dnf_cache_and_logs_stay_on_the_host.


def test_mkfs_argv_reproducibility_options(tmp_path: Path) -> None:
    t, d = Path("tree"), Path("img")
    ext4 = [os.fspath(a) for a in ext4_argv(t, d, 100, "Anaconda", REPRO)]
    assert ext4[ext4.index("-U") + 1] == str(seed_uuid(SEED, "rootfs"))
    assert f"hash_seed={seed_uuid(SEED, 'rootfs-hash')}" in ext4[ext4.index("-E") + 1]
    assert "-U" not in ext4_argv(t, d, 100, "Anaconda", None)
    assert "hash_seed" not in str(ext4_argv(t, d, 100, "Anaconda", None))
    btrfs = [os.fspath(a) for a in btrfs_argv(t, "Anaconda", REPRO)]
    assert btrfs[btrfs.index("-U") + 1] == str(seed_uuid(SEED, "rootfs"))
    assert btrfs[btrfs.index("--device-uuid") + 1] == str(seed_uuid(SEED, "rootfs-device"))
    assert "-U" not in btrfs_argv(t, "Anaconda", None) and "--device-uuid" not in btrfs_argv(t, "Anaconda", None)
    erofs = [os.fspath(a) for a in erofs_argv(t, d, REPRO)]
    assert f"-T{EPOCH}" in erofs and f"-U{seed_uuid(SEED, 'rootfs')}" in erofs
    assert ext4_time_commands([2, 12], EPOCH) == [
        f"set_inode_field <2> atime @{EPOCH}",
        f"set_inode_field <2> ctime @{EPOCH}",
        f"set_inode_field <12> atime @{EPOCH}",
        f"set_inode_field <12> ctime @{EPOCH}",
    ]


def test_squashfs_env_lets_the_option_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert squashfs_env(EPOCH) is None  # the time options are on the command line instead
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "5")
    assert squashfs_env(EPOCH) == {"SOURCE_DATE_EPOCH": str(EPOCH)}
    assert squashfs_env(None) is None


def test_dracut_argv_reproducible() -> None:
    assert "--reproducible" in dracut_argv("6.1", "/o", RootfsType.EXT4, [], reproducible=True)
    assert "--reproducible" not in dracut_argv("6.1", "/o", RootfsType.EXT4, [])


def test_fat_and_mtools_options() -> None:
    argv = mkfs_fat_argv(Path("e.img"), 1024, "efiboot", serial="1a2b3c4d")
    # -i must come after --invariant, which would otherwise set its own serial
    assert argv.index("-i") > argv.index("--invariant") and argv[argv.index("-i") + 1] == "1a2b3c4d"
    assert "--invariant" not in mkfs_fat_argv(Path("e.img"), 1024, "efiboot")
    assert mtools_env(EPOCH)["SOURCE_DATE_EPOCH"] == str(EPOCH)
    assert "SOURCE_DATE_EPOCH" not in mtools_env(None)


def test_xorriso_argv_dates_and_guid(tmp_path: Path) -> None:
    assert iso_date(EPOCH) == "2023111422132000"
    argv = xorriso_argv(tmp_path / "o.iso", "V", [], bios=None, efiboot=tmp_path / "e.img", source_date_epoch=EPOCH, seed=SEED)
    assert "--modification-date=2023111422132000" in argv
    assert argv[argv.index("--set_all_file_dates") + 1] == "2023111422132000"
    assert argv[argv.index("--gpt_disk_guid") + 1] == str(seed_uuid(SEED, "iso-gpt"))
    plain = xorriso_argv(tmp_path / "o.iso", "V", [], bios=None, efiboot=tmp_path / "e.img")
    assert not any(a.startswith("--modification-date") for a in plain)


def test_big_initrd_cpio_order_and_mtimes(tmp_path: Path) -> None:
    initramfs = tmp_path / "initramfs.img"
    with initramfs.open("wb") as f:
        write_newc(f, [CpioEntry.file("init", b"#!/bin/sh\n", 0o755)])
        f.write(b"\0\0\0")  # not 4-aligned: make_big_initrd pads
    squashfs = tmp_path / "squashfs.img"
    squashfs.write_bytes(b"hsqs" + b"\0" * 100)
    outs = []
    for n in (1, 2):
        os.utime(squashfs)  # a different "now" each time must not matter
        out = tmp_path / f"initrd{n}.img"
        make_big_initrd(initramfs, squashfs, "root=live:/squashfs.img", out, mtime=EPOCH)
        outs.append(out)
        time.sleep(0.01)
    assert sha256(outs[0]) == sha256(outs[1])
    cpio = read_newc(outs[0])[-1]
    names = [m.name for m in cpio.members]
    assert names == sorted(names) == ["etc", "etc/cmdline", "squashfs.img"]
    assert {m.mtime for m in cpio.members} == {EPOCH}


def _two_trees(tmp_path: Path) -> tuple[Path, Path]:
    """The same tree twice, the second made later (other inode numbers, ctimes, atimes)."""
    a = make_tree(tmp_path / "a")
    time.sleep(1.1)  # whole seconds: the filesystems store seconds
    b = make_tree(tmp_path / "b")
    return a, b


@pytest.mark.parametrize(
    "fstype, tools",
    [
        (RootfsType.EXT4, ("mkfs.ext4", "debugfs", "dumpe2fs")),
        (RootfsType.EROFS, ("mkfs.erofs",)),
        (RootfsType.BTRFS, ("mkfs.btrfs", "btrfs")),
    ],
)
def test_rootfs_images_are_reproducible(tmp_path: Path, fstype: RootfsType, tools: tuple[str, ...]) -> None:
    if missing := [t for t in tools if shutil.which(t) is None]:
        pytest.skip(f"not installed: {missing}")
    if fstype is RootfsType.BTRFS and btrfs_progs_version() < BTRFS_REPRODUCIBLE:
        pytest.skip("btrfs-progs older than 6.10.1 copies host inode numbers")
    a, b = _two_trees(tmp_path)
    make_rootfs(a, tmp_path / "a.img", fstype, free=16 << 20, source_date_epoch=EPOCH, seed=SEED)
    time.sleep(1.1)
    make_rootfs(b, tmp_path / "b.img", fstype, free=16 << 20, source_date_epoch=EPOCH, seed=SEED)
    assert sha256(tmp_path / "a.img") == sha256(tmp_path / "b.img")


@needs("mkfs.ext4", "debugfs", "dumpe2fs", "e2fsck")
def test_reproducible_ext4_is_clean(tmp_path: Path) -> None:
    import subprocess

    tree = make_tree(tmp_path / "t")
    img = tmp_path / "r.img"
    make_rootfs(tree, img, RootfsType.EXT4, free=16 << 20, source_date_epoch=EPOCH, seed=SEED)
    subprocess.run(["e2fsck", "-fn", img], check=True, capture_output=True)
    stat = subprocess.run(["debugfs", "-R", "stat /usr/bin/tool", img], capture_output=True, text=True).stdout
    assert stat.count("0x6553f100") >= 3  # ctime, atime, mtime (and crtime) at the epoch


def make_rich_tree(root: Path) -> Path:
    """Enough files for many tree blocks (so mkfs leaves stale ones behind), with hard
    links, symlinks, xattrs, sparse and empty files, a FIFO, odd modes and owners."""
    make_tree(root)
    for d in range(40):
        sub = root / f"d{d:02}" / "sub"
        sub.mkdir(parents=True)
        for f in range(40):
            p = sub / f"f{f:02}"
            p.write_bytes(bytes([d, f]) * (f * 97 % 3000))
            p.chmod((0o644, 0o755, 0o600, 0o4755, 0o1777)[f % 5])
            if f % 7 == 0:
                os.link(p, sub / f"hl{f:02}")
            if f % 9 == 0:
                (sub / f"sl{f:02}").symlink_to(p.name)
            if f % 11 == 0:
                os.setxattr(p, "user.test", b"v" * (f + 1))
                os.chown(p, 1000 + f, 2000 + d)
    with (root / "sparse").open("wb") as f:
        f.truncate(8 << 20)
        f.seek(4 << 20)
        f.write(b"x" * 5000)
    (root / "empty").touch()
    os.mkfifo(root / "fifo")
    root.chmod(0o555)
    return root


@needs("mkfs.btrfs", "btrfs")
@pytest.mark.parametrize("free", [0, 64 << 20])
def test_btrfs_is_reproducible_and_checks(tmp_path: Path, free: int) -> None:
    """Two trees made at different times in different directories (other host inode
    numbers, ctimes, atimes), mkfs'd at different times: the same bytes, a clean
    `btrfs check`, and the UUIDs and times from the seed and the epoch."""
    import subprocess

    if btrfs_progs_version() < BTRFS_REPRODUCIBLE:
        pytest.skip("btrfs-progs older than 6.10.1 copies host inode numbers")
    a = make_rich_tree(tmp_path / "a")
    time.sleep(1.1)
    b = make_rich_tree(tmp_path / "elsewhere" / "b")
    imgs = []
    for n, tree in enumerate((a, b)):
        img = tmp_path / f"{n}.img"
        make_rootfs(tree, img, RootfsType.BTRFS, free=free, source_date_epoch=EPOCH, seed=SEED)
        imgs.append(img)
        time.sleep(1.1)
    assert sha256(imgs[0]) == sha256(imgs[1])
    check = subprocess.run(["btrfs", "check", imgs[0]], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    dump = subprocess.run(["btrfs", "inspect-internal", "dump-tree", imgs[0]], capture_output=True, text=True, check=True).stdout
    assert f"chunk uuid {seed_uuid(SEED, 'rootfs-chunk-tree')}" in dump
    assert f"uuid {seed_uuid(SEED, 'rootfs-subvol-5')}" in dump
    times = {int(t) for t in re.findall(r"^\s+[ac]time (\d+)\.", dump, re.MULTILINE)}
    assert times == {0, EPOCH}  # 0: the times of root items of trees that are no subvolume


@needs("mksquashfs")
def test_squashfs_of_tree_is_reproducible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    a, b = _two_trees(tmp_path)
    make_squashfs(a, tmp_path / "a.img", Compression.LZ4, source_date_epoch=EPOCH)
    make_squashfs(b, tmp_path / "b.img", Compression.LZ4, source_date_epoch=EPOCH)
    assert sha256(tmp_path / "a.img") == sha256(tmp_path / "b.img")


@needs("mkfs.fat", "mmd", "mcopy")
def test_efiboot_is_reproducible(tmp_path: Path) -> None:
    outs = []
    for n in (1, 2):
        src = tmp_path / f"src{n}"
        (src / "EFI/BOOT").mkdir(parents=True)
        (src / "EFI/BOOT/BOOTX64.EFI").write_bytes(b"MZ" + b"\0" * 5000)
        (src / "EFI/BOOT/grub.cfg").write_text("set timeout=1\n")
        files = [(p, p.relative_to(src).as_posix()) for p in sorted(src.rglob("*")) if p.is_file()]
        outs.append(make_efiboot(files, tmp_path / f"efiboot{n}.img", source_date_epoch=EPOCH, seed=SEED))
        time.sleep(2.1)  # FAT times have a 2 s resolution
    assert sha256(outs[0]) == sha256(outs[1])
