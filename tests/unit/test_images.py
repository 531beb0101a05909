"""rootfs.img / squashfs / big initrd / manifest, with the real (fast) mkfs tools on tiny trees."""

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from composer.config import Compression, RootfsType
from composer.images.cpio import read_newc
from composer.images.rootfs import DEFAULT_FREE, make_rootfs, tree_size
from composer.images.sparse import allocated_size, apparent_size
from composer.images.squashfs import compression_args, make_squashfs, squashfs_argv
from composer.outputs.bigimage import make_big_initrd, runtime_cmdline
from composer.outputs.manifest import write_manifest
from composer.run import ComposerError

MiB = 1 << 20


def needs(*tools: str) -> pytest.MarkDecorator:
    missing = [t for t in tools if shutil.which(t) is None]
    return pytest.mark.skipif(bool(missing), reason=f"not installed: {missing}")


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    t = tmp_path / "tree"
    (t / "etc").mkdir(parents=True)
    (t / "usr/bin").mkdir(parents=True)
    (t / "var/empty").mkdir(parents=True)
    (t / "etc/os-release").write_text("NAME=Test\n")
    (t / "usr/bin/tool").write_bytes(os.urandom(2 * MiB))
    os.link(t / "usr/bin/tool", t / "usr/bin/tool-alias")
    (t / "usr/bin/tool").chmod(0o755)
    os.symlink("usr/bin", t / "bin")
    for i in range(50):
        (t / "etc" / f"f{i}.conf").write_text(f"value={i}\n")
    t.chmod(0o555)  # like Fedora's /
    return t


def test_tree_size_counts_hardlinks_once(tree: Path) -> None:
    s = tree_size(tree)
    assert 2 * MiB <= s.blocks_bytes < 3 * MiB
    assert 2 * MiB <= s.apparent_bytes < 3 * MiB
    # / etc usr usr/bin var var/empty, os-release, tool (once), bin, 50 confs
    assert s.inodes == 6 + 1 + 1 + 1 + 50


@needs("mkfs.btrfs", "btrfs")
def test_btrfs_with_free_room(tree: Path, tmp_path: Path) -> None:
    img = tmp_path / "LiveOS/rootfs.img"
    make_rootfs(tree, img, RootfsType.BTRFS, free=300 * MiB)
    assert allocated_size(img) < apparent_size(img) // 4  # still sparse
    out = subprocess.run(["btrfs", "inspect-internal", "dump-super", img], capture_output=True, text=True, check=True).stdout
    total = int(re.search(r"^total_bytes\s+(\d+)", out, re.MULTILINE).group(1))
    used = int(re.search(r"^bytes_used\s+(\d+)", out, re.MULTILINE).group(1))
    assert total - used >= 300 * MiB
    assert re.search(r"^label\s+Anaconda$", out, re.MULTILINE)
    # hard link kept: 2 MiB of data once, not twice
    assert used < 4 * MiB
    check = subprocess.run(["btrfs", "check", img], check=False, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


@needs("mkfs.btrfs")
def test_btrfs_shrink_and_default(tree: Path, tmp_path: Path) -> None:
    small = tmp_path / "small.img"
    make_rootfs(tree, small, RootfsType.BTRFS, free=0)
    default = tmp_path / "default.img"
    make_rootfs(tree, default, RootfsType.BTRFS, free=None)
    assert apparent_size(small) < apparent_size(default)
    assert apparent_size(default) >= DEFAULT_FREE
    assert allocated_size(default) < 64 * MiB


@needs("mkfs.ext4", "dumpe2fs", "debugfs", "e2fsck")
def test_ext4(tree: Path, tmp_path: Path) -> None:
    img = tmp_path / "rootfs.img"
    make_rootfs(tree, img, RootfsType.EXT4, free=200 * MiB, label="Runtime")
    assert allocated_size(img) < apparent_size(img) // 4
    hdr = subprocess.run(["dumpe2fs", "-h", img], capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"^([^:]+):\s+(.*)$", hdr, re.MULTILINE))
    assert fields["Filesystem volume name"] == "Runtime"
    assert fields["Block size"] == "4096"
    assert int(fields["Free blocks"]) * 4096 >= 200 * MiB
    assert int(fields["Free inodes"]) > 10000  # room for the runtime's new files
    assert fields["Reserved block count"] == "0"
    assert fields["Total journal size"] == "4096k"
    root = subprocess.run(["debugfs", "-R", "stat /", img], capture_output=True, text=True, check=True).stdout
    assert re.search(r"Mode:\s+0555", root)
    ls = subprocess.run(["debugfs", "-R", "ls -l /usr/bin", img], capture_output=True, text=True, check=True).stdout
    inos = {line.split()[-1]: line.split()[0] for line in ls.splitlines() if "tool" in line}
    assert inos["tool"] == inos["tool-alias"]  # hard link kept
    fsck = subprocess.run(["e2fsck", "-fn", img], check=False, capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout


@needs("mkfs.erofs")
def test_erofs_ignores_free(tree: Path, tmp_path: Path) -> None:
    img = tmp_path / "rootfs.img"
    make_rootfs(tree, img, RootfsType.EROFS, free=100 * MiB)
    assert img.read_bytes()[1024:1028] == bytes.fromhex("e2e1f5e0")  # EROFS_SUPER_MAGIC_V1, LE
    assert apparent_size(img) < 4 * MiB


def test_rootfs_errors(tmp_path: Path) -> None:
    with pytest.raises(ComposerError):
        make_rootfs(tmp_path / "missing", tmp_path / "x.img", RootfsType.EXT4, free=None)
    with pytest.raises(ValueError):
        make_rootfs(tmp_path, tmp_path / "x.img", RootfsType.SQUASHFS, free=None)


def test_compression_args() -> None:
    assert compression_args(Compression.XZ, arch="x86_64") == ["-comp", "xz"]  # no BCJ by default: see squashfs.py
    assert compression_args(Compression.XZ, arch="x86_64", bcj=True) == ["-comp", "xz", "-Xbcj", "x86"]
    assert compression_args(Compression.XZ, arch="aarch64") == ["-comp", "xz"]
    assert compression_args(Compression.ZSTD) == ["-comp", "zstd", "-Xcompression-level", "19"]
    assert compression_args(Compression.ZSTD, level=3)[-1] == "3"
    assert compression_args(Compression.LZ4) == ["-comp", "lz4", "-Xhc"]
    with pytest.raises(ComposerError):
        compression_args(Compression.ZSTD, level=30)


def test_squashfs_argv_times(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    argv = squashfs_argv(Path("src"), Path("d.img"), Compression.LZ4, processors=2, source_date_epoch=1700000000)
    assert argv[:3] == ["mksquashfs", "src", "d.img"]
    assert "-noappend" in argv and "-all-root" not in argv
    assert argv[argv.index("-processors") + 1] == "2"
    assert argv[argv.index("-mkfs-time") + 1] == "1700000000" and "-all-time" not in argv
    assert "-all-time" in squashfs_argv(Path("s"), Path("d"), Compression.XZ, source_date_epoch=1, all_time=True)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "5")  # mksquashfs refuses both at once
    assert "-mkfs-time" not in squashfs_argv(Path("s"), Path("d"), Compression.XZ, source_date_epoch=1)


@needs("mksquashfs", "unsquashfs", "mkfs.btrfs")
def test_squashfs_of_liveos(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    src = tmp_path / "squash"
    make_rootfs(tree, src / "LiveOS/rootfs.img", RootfsType.BTRFS, free=None)
    out = tmp_path / "out/squashfs.img"
    make_squashfs(src, out, Compression.ZSTD, level=3, source_date_epoch=1700000000, all_time=True)
    listing = subprocess.run(["unsquashfs", "-lls", out], capture_output=True, text=True, check=True).stdout
    assert "squashfs-root/LiveOS/rootfs.img" in listing
    assert "2023-11-14" in listing  # -all-time
    # the 1 GiB of free room is sparse, so the squashfs stays small
    assert out.stat().st_size < 8 * MiB
    stats = subprocess.run(["unsquashfs", "-s", out], capture_output=True, text=True, check=True).stdout
    assert "zstd" in stats and "Block size 1048576" in stats
    assert not (tmp_path / "out/squashfs.img.tmp").exists()


@needs("mksquashfs", "unsquashfs")
def test_squashfs_of_tree_keeps_owners(tree: Path, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    os.chown(tree / "etc/f1.conf", 123, 456)
    out = tmp_path / "install.img"
    make_squashfs(tree, out, Compression.LZ4)
    listing = subprocess.run(["unsquashfs", "-lln", out], capture_output=True, text=True, check=True).stdout
    assert re.search(r"123/456 .* squashfs-root/etc/f1.conf", listing)
    assert re.search(r"^lrwxrwxrwx .* squashfs-root/bin -> usr/bin", listing, re.MULTILINE)


def test_runtime_cmdline() -> None:
    assert runtime_cmdline(RootfsType.BTRFS) == runtime_cmdline(RootfsType.EXT4) == "root=live:/squashfs.img rd.live.image"
    assert (
        runtime_cmdline(RootfsType.EROFS, extra=["quiet"])
        == runtime_cmdline(RootfsType.SQUASHFS, extra=["quiet"])
        == "root=live:/squashfs.img rd.live.image rd.live.overlay.overlayfs=1 quiet"
    )


@needs("cpio", "gzip")
def test_big_initrd(tmp_path: Path) -> None:
    src = tmp_path / "initramfs-root"
    (src / "etc").mkdir(parents=True)
    (src / "init").write_text("#!/bin/sh\n")
    (src / "etc/initrd-release").write_text("x=1\n")
    listing = b"init\netc\netc/initrd-release\n"
    raw = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], input=listing, cwd=src, capture_output=True, check=True).stdout
    initramfs = tmp_path / "initramfs.img"
    data = gzip.compress(raw)
    initramfs.write_bytes(data + b"abc"[: 3 if len(data) % 4 != 1 else 2])  # length not a multiple of 4: forces padding
    assert initramfs.stat().st_size % 4 != 0
    squashfs = tmp_path / "squashfs.img"
    squashfs.write_bytes(os.urandom(1 << 20) + b"xyz")
    dest = tmp_path / "pxe/initrd.img"
    make_big_initrd(initramfs, squashfs, "root=live:/squashfs.img rd.live.image", dest)

    blob = dest.read_bytes()
    n = initramfs.stat().st_size
    assert blob[:n] == initramfs.read_bytes()
    tail = n + (-n % 4)
    assert blob[n:tail] == b"\0" * (tail - n)
    assert blob[tail : tail + 6] == b"070701"
    names = subprocess.run(["cpio", "-t", "--quiet"], input=blob[tail:], capture_output=True, check=True).stdout
    assert names.decode().split() == ["etc", "etc/cmdline", "squashfs.img"]
    x = tmp_path / "x"
    x.mkdir()
    subprocess.run(["cpio", "-i", "-d", "--quiet"], input=blob[tail:], cwd=x, check=True)
    assert (x / "etc/cmdline").read_text() == "root=live:/squashfs.img rd.live.image\n"
    assert (x / "squashfs.img").read_bytes() == squashfs.read_bytes()
    assert (x / "squashfs.img").stat().st_mode & 0o777 == 0o644
    assert not dest.with_name("initrd.img.tmp").exists()


@needs("cpio", "gzip")
def test_big_initrd_read_newc(tmp_path: Path) -> None:
    src = tmp_path / "r"
    src.mkdir()
    (src / "init").write_text("#!/bin/sh\n")
    raw = subprocess.run(
        ["cpio", "-o", "-H", "newc", "--quiet"], input=b"init\n", cwd=src, capture_output=True, check=True
    ).stdout
    initramfs = tmp_path / "initramfs.img"
    initramfs.write_bytes(gzip.compress(raw))
    squashfs = tmp_path / "squashfs.img"
    squashfs.write_bytes(b"q" * 4097)
    dest = tmp_path / "initrd.img"
    make_big_initrd(initramfs, squashfs, "root=live:/squashfs.img", dest)
    segs = read_newc(dest)
    assert [s.kind for s in segs] == ["gzip", "cpio"]
    assert {m.name: m.size for m in segs[1].members} == {"etc": 0, "etc/cmdline": 24, "squashfs.img": 4097}


def test_big_initrd_missing_input(tmp_path: Path) -> None:
    with pytest.raises(ComposerError):
        make_big_initrd(tmp_path / "no", tmp_path / "no2", "x", tmp_path / "out")


def test_manifest(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "images/pxeboot").mkdir(parents=True)
    (out / "images/pxeboot/vmlinuz").write_bytes(b"kernel")
    (out / "images/install.img").write_bytes(b"")
    os.symlink("pxeboot/vmlinuz", out / "images/vmlinuz")
    with (out / "sparse.img").open("wb") as f:
        f.truncate(50 * MiB)
    (out / "manifest.json").write_text("old")
    path = write_manifest(out, ["zlib-1.2-1.x86_64", "bash-5.2-1.x86_64", "bash-5.2-1.x86_64"], {"product": "T"})
    doc = json.loads(path.read_text())
    assert doc["product"] == "T"
    assert doc["packages"] == ["bash-5.2-1.x86_64", "zlib-1.2-1.x86_64"]
    files = {r["path"]: r for r in doc["files"]}
    assert list(files) == sorted(files) == ["images/install.img", "images/pxeboot/vmlinuz", "images/vmlinuz", "sparse.img"]
    assert files["images/pxeboot/vmlinuz"]["sha256"] == hashlib.sha256(b"kernel").hexdigest()
    assert files["images/pxeboot/vmlinuz"]["size"] == 6
    assert files["images/vmlinuz"] == {"path": "images/vmlinuz", "symlink": "pxeboot/vmlinuz"}
    assert files["sparse.img"]["size"] == 50 * MiB
    assert files["sparse.img"]["allocated"] < MiB
    first = path.read_bytes()
    write_manifest(out, ["bash-5.2-1.x86_64", "zlib-1.2-1.x86_64"], {"product": "T"})
    assert path.read_bytes() == first  # deterministic
    with pytest.raises(ValueError):
        write_manifest(out, [], {"files": 1})
