"""The RAM budget: what an initrd takes once unpacked, the floor predicted from it, and
the budget a split boot's initrd carries for the initramfs's RAM check."""

import dataclasses
import io
import lzma
import struct
from pathlib import Path

import pytest

from composer.images.cpio import CpioEntry, read_newc, write_newc
from composer.outputs import ram
from composer.outputs.bigimage import make_big_initrd


def _cpio(entries) -> bytes:
    buf = io.BytesIO()
    write_newc(buf, entries)
    return buf.getvalue()


def _initrd(tmp_path, *, squashfs: bool = False):
    """An xz-compressed initramfs (3 files, 2 dirs) with, for a big initrd, an
    uncompressed cpio with squashfs.img appended."""
    inner = _cpio(
        [
            CpioEntry.directory("usr"),
            CpioEntry.directory("usr/bin"),
            CpioEntry.file("usr/bin/a", b"x" * 5000),
            CpioEntry.file("usr/bin/b", b"y" * 10),
            CpioEntry.file("init", b"#!/bin/sh\n"),
        ]
    )
    data = lzma.compress(inner, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    data += b"\0" * (-len(data) % 4)
    if squashfs:
        data += _cpio([CpioEntry.file("squashfs.img", b"s" * (3 * 4096 + 1))])
    p = tmp_path / ("big.img" if squashfs else "small.img")
    p.write_bytes(data)
    return p


def _bzimage(tmp_path, init_size: int):
    head = bytearray(0x300)
    head[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", head, 0x206, 0x020F)
    struct.pack_into("<I", head, 0x260, init_size)
    p = tmp_path / "vmlinuz"
    p.write_bytes(bytes(head))
    return p


def test_unpacked_ram_counts_pages_and_inodes(tmp_path):
    small = _initrd(tmp_path)
    # a: 2 pages, b and init: 1 page each; 5 members with an inode each
    assert ram.unpacked_ram(small) == 4 * 4096 + 5 * ram.INODE_BYTES
    big = _initrd(tmp_path, squashfs=True)
    assert ram.unpacked_ram(big) == 4 * 4096 + 5 * ram.INODE_BYTES + 4 * 4096 + ram.INODE_BYTES
    assert ram.carries_squashfs(big) and not ram.carries_squashfs(small)


def test_big_initrd_ram_is_its_initramfs_plus_what_was_appended(tmp_path):
    """The runtime counts the initramfs beside mksquashfs and only the appended archive
    afterwards (make_big_initrd's offset): the sum must be the whole count."""
    initramfs = _initrd(tmp_path)
    squash = tmp_path / "squashfs.img"
    squash.write_bytes(b"s" * (3 * 4096 + 1))
    big = tmp_path / "initrd.img"
    tail = make_big_initrd(initramfs, squash, "root=live:CDLABEL=x", big)
    assert tail == initramfs.stat().st_size + (-initramfs.stat().st_size % 4)
    whole = ram.unpacked_ram(big)
    assert whole == ram.unpacked_ram(initramfs) + ram.unpacked_ram(big, start=tail)
    assert ram.unpacked_ram(big, start=tail) == 4 * 4096 + 4096 + 3 * ram.INODE_BYTES  # squashfs.img, etc/cmdline, etc
    kernel = _bzimage(tmp_path, 60 << 20)
    assert ram.predict("big-initrd", kernel, big, unpacked=whole) == ram.predict("big-initrd", kernel, big)
    assert ram.predict_big_initrd(kernel, big, initramfs_unpacked=ram.unpacked_ram(initramfs), appended_at=tail) == ram.predict(
        "big-initrd", kernel, big
    )


def test_kernel_init_size_from_the_bzimage_header(tmp_path):
    assert ram.kernel_init_size(_bzimage(tmp_path, 50 << 20)) == 50 << 20
    other = tmp_path / "Image"
    other.write_bytes(b"\0" * 4096)  # not an x86 bzImage: a safe default
    assert ram.kernel_init_size(other) == 64 << 20


def test_predict_adds_the_parts_and_the_page_structs(tmp_path):
    kernel = _bzimage(tmp_path, 60 << 20)
    initrd = _initrd(tmp_path, squashfs=True)
    b = ram.predict("big-initrd", kernel, initrd)
    usable, stop = ram.ALLOWANCE_MB["big-initrd"]
    parts = 60 + initrd.stat().st_size / 2**20 + ram.unpacked_ram(initrd) / 2**20 + usable
    assert b.floor_mb == -(-parts * 64 // 63)
    # the physical limit: the same parts, no allowance
    assert b.limit_mb == -(-(parts - usable) * 64 // 63) == ram.machine_mb(parts - b.allowance_mb)
    assert b.floor_mb - b.limit_mb in (usable, usable + 1)  # the allowance and its page structs
    assert b.stop_mb == ram.machine_mb(parts - usable + stop)
    assert b.squashfs_mb == 0  # inside the initrd, counted there
    squash = tmp_path / "install.img"
    squash.write_bytes(b"\0" * (8 << 20))
    split = ram.predict("netboot-split", kernel, _initrd(tmp_path), squash)
    media = ram.predict("media", kernel, _initrd(tmp_path))
    assert split.squashfs_mb == 8.0 and split.limit_mb > media.limit_mb and split.stop_mb > media.stop_mb
    # install.img downloaded into RAM is part of the split tree's limit, not of the NBD tree's
    nbd = ram.predict("netboot-nbd", kernel, _initrd(tmp_path), squash)
    assert nbd.squashfs_mb == 0 and split.limit_mb - nbd.limit_mb in (8, 9)
    assert split.as_dict()["limit_mb"] == split.limit_mb  # in manifest.json and netboot.json
    # the usable floor of media lies above the least RAM it reaches the marker in
    assert media.limit_mb < media.stop_mb < media.floor_mb and split.as_dict()["stop_mb"] == split.stop_mb
    with pytest.raises(ValueError):
        ram.predict("floppy", kernel, initrd)


def test_with_memory_check_appends_an_aligned_cpio_the_budget_reads_back(tmp_path):
    initrd = _initrd(tmp_path)
    dest = tmp_path / "out" / "initrd.img"
    budget = dataclasses.replace(ram.predict("media", _bzimage(tmp_path, 60 << 20), initrd), floor_mb=176, stop_mb=150)
    ram.with_memory_check(initrd, dest, budget, mtime=1700000000)
    assert dest.read_bytes().startswith(initrd.read_bytes())
    segments = read_newc(dest)
    assert [s.kind for s in segments] == ["xz", "cpio"] and segments[-1].offset % 4 == 0
    assert ram.carried_budget(dest) == 176 and ram.carried_budget(initrd) is None
    assert ram.carried_stop(dest) == 150 and ram.carried_stop(initrd) is None
    assert not (tmp_path / "out" / "initrd.img.tmp").exists()


def test_min_memory_line_sets_prediction_beside_measurement():
    from composer.verify import Floors, fatal_reason, min_memory_line

    floors = Floors(224, 160, 512, 52.4, 1.5, [])
    usable = "min-memory: 224 MB usable, 160 MB reached (step 16 MB; usable: the marker within 1.5x the 52 s at 512 MB)"
    assert min_memory_line(floors, 16, None) == usable
    line = min_memory_line(floors, 16, (231, "predicted for a big-initrd"))
    assert line == usable + "; composer's budget 231 MB (predicted for a big-initrd), +3% of usable"
    # the initramfs's RAM check ends a boot check at once
    assert fatal_reason("[ 3.1] composer: not enough memory: this machine has 144 MiB of RAM, ...")


MEMCHECK = Path(__file__).resolve().parents[2] / "src/composer/data/share/dracut/modules.d/90composer/memcheck.sh"
# /proc/iomem of a BIOS machine with -m 160 (System RAM: 639 KiB + 159 MiB - 128 KiB: 159 MiB;
# the check allows 8 MiB for what firmware keeps)
IOMEM_160 = """00000000-00000fff : Reserved
00001000-0009fbff : System RAM
0009fc00-0009ffff : Reserved
000f0000-000fffff : Reserved
  000f0000-000fffff : System ROM
00100000-09fdffff : System RAM
  01000000-01ffffff : Kernel code
09fe0000-09ffffff : Reserved
b0000000-bfffffff : PCI MMCONFIG 0000 [bus 00-ff]
"""


def _memcheck(tmp_path, cmdline_value, stop_value=""):
    """Run the hook under sh as dracut would source it (getarg & co. stubbed; `sleep`
    ends the run, since a refusing hook never returns)."""
    import subprocess

    (tmp_path / "iomem").write_text(IOMEM_160)
    stubs = f"""
getarg() {{
    case "$1" in
        rd.composer.memory=) [ -n "{cmdline_value}" ] && echo "{cmdline_value}" ;;
        rd.composer.memory.stop=) [ -n "{stop_value}" ] && echo "{stop_value}" ;;
    esac
}}
getargbool() {{ return 1; }}
sleep() {{ echo STOPPED; exit 0; }}
composer_iomem={tmp_path / "iomem"} composer_kmsg={tmp_path / "kmsg"}
. {MEMCHECK}
echo CONTINUED
"""
    out = subprocess.run(["sh", "-c", stubs], capture_output=True, text=True, timeout=30, check=False).stdout
    kmsg = (tmp_path / "kmsg").read_text() if (tmp_path / "kmsg").exists() else ""
    return out.split(), kmsg


@pytest.mark.parametrize(
    "need,stops", [("", False), ("0", False), ("160", False), ("167", False), ("168", True), ("224", True), ("lots", False)]
)
def test_memcheck_hook_stops_below_the_budget(tmp_path, need, stops):
    out, kmsg = _memcheck(tmp_path, need)
    if stops:
        assert out == ["STOPPED"]
        assert kmsg == (
            f"<2>composer: not enough memory: this machine has 159 MiB of RAM, this system needs {need} MiB to boot; stopping.\n"
        )
    else:
        assert out == ["CONTINUED"] and kmsg == ""


@pytest.mark.parametrize(
    "need,stop,outcome",
    [("224", "160", "warns"), ("224", "168", "stops"), ("224", "167", "warns"), ("167", "150", "quiet"), ("0", "300", "quiet"),
     ("224", "x", "stops")],
)  # fmt: skip
def test_memcheck_hook_warns_between_stop_and_budget(tmp_path, need, stop, outcome):
    """Below the budget (the usable floor) and above the stop (the least RAM it boots in) the
    hook says the boot will be slow and goes on; below the stop it stops, naming the stop."""
    out, kmsg = _memcheck(tmp_path, need, stop)
    if outcome == "warns":
        assert out == ["CONTINUED"]
        assert (
            kmsg == "<3>composer: little memory: this machine has 159 MiB of RAM, "
            f"this system boots slowly below {need} MiB; going on.\n"
        )
    elif outcome == "stops":
        named = stop if stop.isdigit() else need  # a stop that is not a number: the budget stops
        assert out == ["STOPPED"] and f"this system needs {named} MiB to boot; stopping." in kmsg
    else:
        assert out == ["CONTINUED"] and kmsg == ""
