"""Two real builds of the test product with the same SOURCE_DATE_EPOCH are byte-identical.

Build A is the session's boot.iso media (tests/conftest.py, root, installed afresh);
build B is the same `composer boot-iso` made by an ordinary user in test_rootless.py,
from a tree that user installed afresh in its own cache, in other work and output
directories, minutes later: every "now", the user, the paths and the dnf install differ.
One pair of composes (ext4 rootfs.img + osmin, lz4 squashfs) covers LiveOS/rootfs.img
(taken out of install.img with unsquashfs), install.img (= squashfs.img), the dracut
initrd, efiboot.img, the GRUB images, boot.iso and the metadata; the big initrd is
assembled from each build's parts as `composer runtime` does. (A second root build there
would cost one more compose in CI for nothing the user's build does not check.)

The default path (btrfs rootfs.img, xz) is compared here: two `composer boot-iso` with
every default but the epoch, each with its own work, cache and output directories, one
after the other. btrfs-progs 6.10.1 or later is needed (scripts/setup-host installs it);
images/rootfs.py and images/btrfs_repro.py make its image reproducible.

This module also holds the comparison helpers and their own test.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import MEDIA_EPOCH, composer

pytestmark = pytest.mark.slow


def first_difference(a: Path, b: Path) -> int | None:
    """Offset of the first byte where a and b differ (the shorter length if one is a
    prefix of the other), or None when they are identical."""
    offset = 0
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            ca, cb = fa.read(1 << 20), fb.read(1 << 20)
            if ca != cb:
                n = min(len(ca), len(cb))
                return offset + next((i for i in range(n) if ca[i] != cb[i]), n)
            if not ca:
                return None
            offset += len(ca)


def with_extra(base: Path) -> Path:
    """Add the parts the media do not ship as files of their own: rootfs.img and a big initrd."""
    extra = base / "extra"
    if extra.exists():
        return base
    extra.mkdir()
    out = base / "out"
    subprocess.run(
        [
            "unsquashfs",
            "-no-progress",
            "-d",
            str(extra / "squashfs-root"),
            str(out / "images/install.img"),
            "LiveOS/rootfs.img",
            "LiveOS/osmin.img.gz",
        ],
        check=True,
        capture_output=True,
    )
    from composer.config import RootfsType
    from composer.outputs.bigimage import make_big_initrd, runtime_cmdline

    make_big_initrd(
        out / "images/pxeboot/initrd.img",
        out / "images/install.img",
        runtime_cmdline(RootfsType.EXT4),
        extra / "big-initrd.img",
        mtime=MEDIA_EPOCH,
    )
    return base


def files_below(base: Path) -> dict[str, Path]:
    return {p.relative_to(base).as_posix(): p for d in ("out", "extra") for p in sorted((base / d).rglob("*")) if p.is_file()}


def test_first_difference(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"abcdef")
    b.write_bytes(b"abcXef")
    assert first_difference(a, b) == 3
    b.write_bytes(b"abcdef")
    assert first_difference(a, b) is None
    b.write_bytes(b"abc")
    assert first_difference(a, b) == 3


def test_default_path_is_reproducible(testproduct_repo: Path, tmp_path: Path) -> None:
    outs = []
    for name in ("a", "b"):
        base = tmp_path / name
        (base / "work").mkdir(parents=True)
        composer(
            "--logfile",
            str(base / "build.log"),
            "boot-iso",
            "--product",
            "TestProduct",
            "--version",
            "1",
            "--source",
            f"file://{testproduct_repo}",
            "--nogpgcheck",
            "--cachedir",
            str(base / "cache"),
            "--source-date-epoch",
            str(MEDIA_EPOCH),
            "--workdir",
            str(base / "work"),
            str(base / "out"),
        )
        outs.append(base / "out")
    a, b = outs
    # The default path: LiveOS/rootfs.img in install.img is btrfs (its superblock's magic at 64 KiB + 64).
    cat = subprocess.Popen(["unsquashfs", "-cat", str(a / "images/install.img"), "LiveOS/rootfs.img"], stdout=subprocess.PIPE)
    assert cat.stdout is not None
    head = cat.stdout.read(0x10048)  # not the whole (sparse, 1.4 GB apparent) image
    cat.kill()
    cat.wait()
    assert head[0x10040:0x10048] == b"_BHRfS_M", "rootfs.img is not btrfs"
    differ = [
        f"{rel}: first difference at offset {offset}"
        for rel in ("images/install.img", "images/pxeboot/initrd.img", "images/boot.iso")
        if (offset := first_difference(a / rel, b / rel)) is not None
    ]
    assert not differ, differ
