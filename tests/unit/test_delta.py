"""Minimized install delta: created and applied without device-mapper, checked with e2fsck and a ro mount.

The same delta over the same origin through the kernel's dm-snapshot is for the guest
tests (this host has no device-mapper).
"""

import argparse
import contextlib
import gzip
import os
import random
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from composer.cli import live as live_cli
from composer.images.sparse import create_sparse
from composer.live.delta import apply_delta, create_delta, ext_fs_size
from composer.live.dmsnap import CowFormatError, CowStore
from composer.live.overlay import compare_trees
from composer.run import ComposerError

MiB = 1 << 20


def sh(*argv, **kw):
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True, **kw)


@contextlib.contextmanager
def mounted(img: Path, mnt: Path, *, ro: bool = True):
    """Loop-mount img; the mount and the loop device are always torn down."""
    dev = sh("losetup", "--find", "--show", *(["-r"] if ro else []), img).stdout.decode().strip()
    try:
        mnt.mkdir(exist_ok=True)
        sh("mount", *(["-o", "ro"] if ro else []), dev, mnt)
        try:
            yield mnt
        finally:
            sh("umount", mnt)
    finally:
        sh("losetup", "-d", dev)


def make_tree(root: Path, seed: int = 3) -> Path:
    rng = random.Random(seed)
    (root / "etc").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "var/log").mkdir(parents=True)
    (root / "etc/hostname").write_text("live\n")
    for i in range(40):
        (root / "usr/bin" / f"tool{i}").write_bytes(rng.randbytes(rng.randrange(1, 200_000)))
    (root / "usr/bin/big").write_bytes(rng.randbytes(6 * MiB))
    (root / "var/log/old.log").write_bytes(rng.randbytes(3 * MiB))
    os.symlink("../usr/bin/tool1", root / "etc/link")
    os.chmod(root / "usr/bin/tool2", 0o4755)
    return root


@pytest.fixture
def ext4_image(tmp_path):
    """A 64 MiB ext4 rootfs.img in 16 MiB groups (so minimizing moves metadata), then aged."""
    tree = make_tree(tmp_path / "tree")
    img = tmp_path / "rootfs.img"
    create_sparse(img, 64 * MiB)
    sh("mkfs.ext4", "-q", "-F", "-b", "4096", "-g", "4096", "-m", "0", "-J", "size=4", "-L", "Anaconda", "-d", tree, img)
    blob = tmp_path / "blob"
    blob.write_bytes(random.Random(9).randbytes(2 * MiB))
    # debugfs edits the file directly: the new data lands after the deleted log's blocks.
    sh("debugfs", "-w", "-R", "rm /var/log/old.log", img)
    sh("debugfs", "-w", "-R", "mkdir /srv", img)
    sh("debugfs", "-w", "-R", f"write {blob} /srv/new.log", img)
    sh("e2fsck", "-fy", img)
    return img


def test_delta_create_apply_gives_clean_minimized_fs_with_same_files(ext4_image, tmp_path, capsys):
    delta = tmp_path / "osmin.img.gz"
    before = ext4_image.read_bytes()
    info = create_delta(ext4_image, delta)
    assert ext4_image.read_bytes() == before  # the origin is never touched
    assert info.minimized_size < info.origin_size
    raw = gzip.decompress(delta.read_bytes())
    assert len(raw) == info.raw_size
    store = CowStore.read(_write(tmp_path / "osmin.img", raw), origin_size=info.origin_size)
    assert len(store.exceptions) == info.chunks > 0
    with capsys.disabled():
        print(
            f"\n  delta for a {info.origin_size // MiB} MiB ext4 (minimized to {info.minimized_size / MiB:.1f} MiB): "
            f"{info.chunks} chunks, raw {info.raw_size} bytes, gz {info.gz_size} bytes"
        )
    assert info.gz_size < 64 * 1024

    out = tmp_path / "minimal.img"
    size = apply_delta(ext4_image, delta, out)
    assert size == info.minimized_size == out.stat().st_size
    with open(out, "rb") as f:
        f.seek(1024)
        assert ext_fs_size(f.read(1024)) == size
    sh("e2fsck", "-fn", out)
    with mounted(ext4_image, tmp_path / "a") as a, mounted(out, tmp_path / "b") as b:
        assert compare_trees(a, b) == []
    # The raw (uncompressed) store is accepted too.
    out2 = tmp_path / "minimal2.img"
    apply_delta(ext4_image, tmp_path / "osmin.img", out2)
    sh("cmp", out, out2)


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def test_delta_with_bigger_chunks_via_cli(ext4_image, tmp_path):
    parser = argparse.ArgumentParser()
    live_cli.register(parser.add_subparsers(dest="command", required=True))
    delta = tmp_path / "osmin16k.img.gz"
    args = parser.parse_args(["delta", "create", str(ext4_image), "-o", str(delta), "--chunk-size", "16K"])
    assert args.func(args) == 0
    assert CowStore.read(_write(tmp_path / "raw", gzip.decompress(delta.read_bytes()))).chunk_sectors == 32
    out = tmp_path / "min.img"
    args = parser.parse_args(["delta", "apply", str(ext4_image), str(delta), "-o", str(out)])
    assert args.func(args) == 0
    sh("e2fsck", "-fn", out)


def test_delta_refuses_btrfs_clearly(tmp_path):
    img = tmp_path / "btrfs.img"
    create_sparse(img, 128 * MiB)
    sh("mkfs.btrfs", "-q", img)
    with pytest.raises(ComposerError, match="btrfs rootfs.img is not supported: shrinking btrfs needs the filesystem mounted"):
        create_delta(img, tmp_path / "osmin.img.gz")
    assert not (tmp_path / "osmin.img.gz").exists()


def test_delta_apply_errors_change_nothing(ext4_image, tmp_path):
    delta = tmp_path / "osmin.img.gz"
    create_delta(ext4_image, delta)
    out = tmp_path / "minimal.img"
    # A corrupt delta: bad magic.
    bad = tmp_path / "bad.gz"
    raw = bytearray(gzip.decompress(delta.read_bytes()))
    raw[0:4] = b"XXXX"
    bad.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(CowFormatError, match="magic"):
        apply_delta(ext4_image, bad, out)
    # Truncated gzip.
    bad.write_bytes(delta.read_bytes()[:20])
    with pytest.raises(ComposerError, match="decompress"):
        apply_delta(ext4_image, bad, out)
    # The wrong origin: exceptions lie beyond a small file.
    small = tmp_path / "small.img"
    create_sparse(small, 1 * MiB)
    with pytest.raises(ComposerError):
        apply_delta(small, delta, out)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".composer")] == []


def test_delta_is_reproducible_with_source_date_epoch(tmp_path):
    """Two creates a second apart give the same osmin.img.gz when the e2fsprogs clock is fixed."""
    import time

    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "data").write_bytes(bytes(range(256)) * 4096)
    img = tmp_path / "rootfs.img"
    subprocess.run(["truncate", "-s", "64M", str(img)], check=True)
    seed = "11111111-2222-3333-4444-555555555555"
    subprocess.run(
        ["mkfs.ext4", "-q", "-U", seed, "-E", f"hash_seed={seed}", "-d", str(tree), str(img)],
        check=True,
        env={**os.environ, "E2FSPROGS_FAKE_TIME": "1700000000"},
    )
    create_delta(img, tmp_path / "a.gz", source_date_epoch=1700000000)
    time.sleep(1.1)
    create_delta(img, tmp_path / "b.gz", source_date_epoch=1700000000)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


# --- issue 20: bounded inputs, no writes through links ---


def _wchar() -> int:
    """Bytes this process has written so far (every write(2), to any file)."""
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("wchar:")).split()[1])


def _bomb(store: bytes, zeros: int) -> bytes:
    """One gzip member: the store, then `zeros` bytes of zeros (about 1/1000 of that compressed)."""
    co = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [co.compress(store)]
    block = bytes(1 << 20)
    out += [co.compress(block) for _ in range(zeros >> 20)]
    return b"".join(out) + co.flush()


def test_delta_apply_decompresses_only_what_the_store_needs(ext4_image, tmp_path):
    """A gzip bomb as the delta: the old apply decompressed all of it (1.5 GB for a 1.5 MB file) first."""
    delta = tmp_path / "osmin.img.gz"
    create_delta(ext4_image, delta)
    store = gzip.decompress(delta.read_bytes())
    bomb = tmp_path / "bomb.gz"
    bomb.write_bytes(_bomb(store, 512 * MiB))
    assert bomb.stat().st_size < MiB
    w0 = _wchar()
    apply_delta(ext4_image, delta, tmp_path / "plain.img", fsck=False)
    w1 = _wchar()
    apply_delta(ext4_image, bomb, tmp_path / "bomb.img", fsck=False)
    w2 = _wchar()
    assert (tmp_path / "bomb.img").read_bytes() == (tmp_path / "plain.img").read_bytes()
    assert w2 - w1 < (w1 - w0) + MiB, f"wrote {w2 - w1} bytes for the bomb, {w1 - w0} for the delta"
    # Zeros alone: refused after reading the header, not after 512 MiB.
    bomb.write_bytes(_bomb(b"", 512 * MiB))
    with pytest.raises(CowFormatError, match="its header is all zeros"):
        apply_delta(ext4_image, bomb, tmp_path / "zeros.img")
    assert _wchar() - w2 < MiB


def _store_bytes(tmp_path: Path, chunk_sectors: int, excs, name: str) -> bytes:
    CowStore.write(tmp_path / name, chunk_sectors, excs)
    return (tmp_path / name).read_bytes()


def test_delta_apply_refuses_declared_sizes_the_origin_cannot_justify(ext4_image, tmp_path):
    # Chunks larger than the origin (64 MiB): 1 GiB chunks would be 2 GiB decompressed before the table.
    hdr = struct.pack("<IIII", 0x70416E53, 1, 1, 1 << 21)
    big = tmp_path / "bigchunk.gz"
    big.write_bytes(_bomb(hdr, 64 * MiB))
    with pytest.raises(CowFormatError, match=r"bigchunk.gz: chunk size 2097152 sectors .* larger than the origin"):
        apply_delta(ext4_image, big, tmp_path / "out.img")
    # A table pointing at a data chunk far past what a store over 64 MiB can need.
    table = struct.pack("<QQ", 3, 10**7)
    far = tmp_path / "far.gz"
    far.write_bytes(_bomb(struct.pack("<IIII", 0x70416E53, 1, 1, 8).ljust(4096, b"\0") + table, 64 * MiB))
    before = _wchar()
    with pytest.raises(CowFormatError, match=r"far.gz: exception 0 .* data chunk beyond the \d+ chunks a store"):
        apply_delta(ext4_image, far, tmp_path / "out.img")
    assert _wchar() - before < MiB
    assert not (tmp_path / "out.img").exists()
    with pytest.raises(ComposerError, match="--chunk-size 262144 sectors: larger than the origin"):
        create_delta(ext4_image, tmp_path / "o.gz", chunk_sectors=1 << 18)


@pytest.mark.parametrize("action", ["create", "apply"])
def test_delta_never_writes_through_a_link(ext4_image, tmp_path, action):
    """`delta create` wrote `.NAME.partial-PID` beside the output: a link planted there made root write its
    target; a link at -o itself was resolved and its target replaced."""
    delta = tmp_path / "osmin.img.gz"
    create_delta(ext4_image, delta)
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    out = tmp_path / ("new.img.gz" if action == "create" else "min.img")
    for pid in range(os.getpid() - 5, os.getpid() + 5):  # this process's pid and its neighbours'
        (tmp_path / f".{out.name}.partial-{pid}").symlink_to(victim)
    run = (lambda o: create_delta(ext4_image, o)) if action == "create" else (lambda o: apply_delta(ext4_image, delta, o))
    run(out)
    assert victim.read_text() == "root's file\n" and out.is_file() and not out.is_symlink()
    link = tmp_path / "link"
    link.symlink_to(victim)
    with pytest.raises(ComposerError, match=f"-o {link} is a symbolic link .*never writes through a link"):
        run(link)
    assert victim.read_text() == "root's file\n" and link.is_symlink()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".composer")] == []
