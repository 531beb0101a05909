"""Two real builds of the test product with the same SOURCE_DATE_EPOCH are byte-identical.

Build A is the session's boot.iso media (tests/conftest.py); build B is one more compose
with --no-cache. One pair of `composer boot-iso` composes (ext4 rootfs.img + osmin, lz4 squashfs)
covers LiveOS/rootfs.img (taken out of install.img with unsquashfs), install.img
(= squashfs.img), the dracut initrd, efiboot.img, the GRUB images, boot.iso and the
metadata. The big initrd is assembled from each build's parts as `composer runtime`
does. The builds use different work and output directories, and run one after the
other, so every "now" differs. btrfs-progs 6.2 cannot make a reproducible btrfs image
(see images/rootfs.py), hence --rootfs-type ext4.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from composer.outputs.manifest import sha256_file
from tests.conftest import MEDIA_EPOCH, compose_media

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
    subprocess.run(["unsquashfs", "-no-progress", "-d", str(extra / "squashfs-root"),
                    str(out / "images/install.img"), "LiveOS/rootfs.img", "LiveOS/osmin.img.gz"],
                   check=True, capture_output=True)
    from composer.config import RootfsType
    from composer.outputs.bigimage import make_big_initrd, runtime_cmdline

    make_big_initrd(out / "images/pxeboot/initrd.img", out / "images/install.img",
                    runtime_cmdline(RootfsType.EXT4), extra / "big-initrd.img", mtime=MEDIA_EPOCH)
    return base


@pytest.fixture(scope="module")
def builds(bootiso_build, testproduct_repo, tmp_path_factory) -> tuple[Path, Path]:
    # Build A is the session's boot.iso media; B installs afresh (--no-cache), so the
    # dnf/rpm install is compared too, not a copy of A's tree.
    second = compose_media(testproduct_repo, tmp_path_factory.mktemp("repro-b"), "--no-cache")
    return with_extra(bootiso_build), with_extra(second)


def files_below(base: Path) -> dict[str, Path]:
    return {p.relative_to(base).as_posix(): p for d in ("out", "extra") for p in sorted((base / d).rglob("*"))
            if p.is_file()}


def test_first_difference(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"abcdef")
    b.write_bytes(b"abcXef")
    assert first_difference(a, b) == 3
    b.write_bytes(b"abcdef")
    assert first_difference(a, b) is None
    b.write_bytes(b"abc")
    assert first_difference(a, b) == 3


def test_outputs_are_byte_identical(builds: tuple[Path, Path]) -> None:
    a, b = (files_below(x) for x in builds)
    assert sorted(a) == sorted(b), "the two builds made different files"
    for must in ("out/images/boot.iso", "out/images/install.img", "out/images/efiboot.img",
                 "out/images/pxeboot/initrd.img", "extra/squashfs-root/LiveOS/rootfs.img",
                 "extra/squashfs-root/LiveOS/osmin.img.gz", "extra/big-initrd.img"):
        assert must in a, must
    differ = []
    for rel in sorted(a):
        if sha256_file(a[rel]) != sha256_file(b[rel]):
            differ.append(f"{rel}: first difference at offset {first_difference(a[rel], b[rel])} "
                          f"(sizes {a[rel].stat().st_size} and {b[rel].stat().st_size})")
    assert not differ, "not reproducible:\n" + "\n".join(differ)
