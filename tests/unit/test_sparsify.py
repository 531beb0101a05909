"""composer sparsify: fewer allocated blocks, content identical apart from zeroed free blocks."""

import argparse
import random
import subprocess
from pathlib import Path

import pytest

from composer.cli import live as live_cli
from composer.images.sparse import allocated_size, copy_sparse, create_sparse
from composer.live.sparsify import sparsify
from composer.run import ComposerError

MiB = 1 << 20


def sh(*argv):
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True)


SUPERBLOCK_WTIME = set(range(1024 + 0x30, 1024 + 0x34))  # s_wtime
SUPERBLOCK_CSUM = set(range(1024 + 0x3FC, 1024 + 0x400))  # s_checksum


def differing_offsets(a: Path, b: Path) -> set[int]:
    proc = subprocess.run(["cmp", "-l", str(a), str(b)], capture_output=True, text=True, check=False)
    assert proc.returncode in (0, 1), proc.stderr
    return {int(line.split()[0]) - 1 for line in proc.stdout.splitlines()}  # cmp counts from 1


@pytest.fixture
def dirty_ext4(tmp_path) -> Path:
    """ext4 whose free blocks still hold a deleted file's random data."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "keep").write_bytes(random.Random(1).randbytes(1 * MiB))
    (tree / "gone").write_bytes(random.Random(2).randbytes(8 * MiB))
    img = tmp_path / "fs.img"
    create_sparse(img, 32 * MiB)
    sh("mkfs.ext4", "-q", "-F", "-b", "4096", "-d", tree, img)
    sh("debugfs", "-w", "-R", "rm /gone", img)
    return img


def test_sparsify_ext4_equals_zerofree_copy_and_frees_blocks(dirty_ext4, tmp_path, capsys):
    reference = tmp_path / "reference.img"
    copy_sparse(dirty_ext4, reference)
    sh("zerofree", reference)
    before = allocated_size(dirty_ext4)
    r = sparsify(dirty_ext4)
    after = allocated_size(dirty_ext4)
    with capsys.disabled():
        print(f"\n  sparsify: allocated {before / MiB:.1f} MiB -> {after / MiB:.1f} MiB (apparent {r.apparent / MiB:.0f} MiB)")
    assert r.zeroed_free_blocks and r.fstype == "ext4"
    assert (r.allocated_before, r.allocated_after) == (before, after)
    assert after < before - 7 * MiB  # the deleted 8 MiB file's blocks are gone
    # Byte-identical to a zerofree'd copy, except the superblock's last-write time and its
    # checksum: libext2fs stamps s_wtime when it closes the image, so two runs a second apart differ.
    assert differing_offsets(dirty_ext4, reference) <= SUPERBLOCK_WTIME | SUPERBLOCK_CSUM
    sh("e2fsck", "-fn", dirty_ext4)


def test_sparsify_zero_runs_in_unknown_content_via_cli(tmp_path):
    img = tmp_path / "blob.img"
    rng = random.Random(5)
    with open(img, "wb") as f:
        for _ in range(8):
            f.write(rng.randbytes(256 * 1024))
            f.write(bytes(1 * MiB))  # written zeros: allocated until dug out
    copy = tmp_path / "copy.img"
    sh("cp", "--sparse=never", img, copy)
    before = allocated_size(img)
    parser = argparse.ArgumentParser()
    live_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sparsify", str(img)])
    assert args.func(args) == 0
    assert allocated_size(img) <= before - 7 * MiB
    sh("cmp", img, copy)


def test_sparsify_refuses_an_image_in_use(dirty_ext4):
    dev = sh("losetup", "--find", "--show", "-r", dirty_ext4).stdout.decode().strip()
    try:
        before = dirty_ext4.read_bytes()
        with pytest.raises(ComposerError, match=f"in use by {dev}"):
            sparsify(dirty_ext4)
        assert dirty_ext4.read_bytes() == before
    finally:
        sh("losetup", "-d", dev)


def test_sparsify_refuses_a_non_file(tmp_path):
    with pytest.raises(ComposerError, match="not a regular file"):
        sparsify(tmp_path)
