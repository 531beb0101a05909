"""The RAM a boot needs, predicted at build time from the parts of the output.

Measured under qemu (TCG, q35) with `composer verify --min-memory`. The peak of a
boot that unpacks the runtime into RAM is at the end of unpacking the initrd: the
kernel still holds the initrd as loaded (freed only once everything is unpacked) and
the unpacked files sit in the rootfs (ramfs). So:

    big initrd:    kernel + initrd as loaded + initramfs unpacked + squashfs.img copy
    media (CD):    kernel + small initrd + initramfs unpacked, then the initramfs runs
                   (udev, systemd, mount) while it still holds its files
    netboot split: as media, and livenet downloads install.img into RAM

"kernel" is what the kernel keeps for itself: its image as the bzImage header states
it (init_size), its page structs (1/64 of RAM), and a measured allowance for what it
allocates while booting. The working allowance of each kind is measured too (the
constants below, from `composer verify --min-memory` on the test product); the
figures are rounded up to whole MiB. The same parts without the allowance are the
physical limit of the output (RamBudget.limit_mb): what no machine can go below.
"""

from __future__ import annotations

import dataclasses
import lzma
import math
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

from composer.images.cpio import HEADER_LEN, MAGIC, TRAILER, CpioEntry, read_newc, write_newc
from composer.run import info

MIB = 1 << 20
PAGE = 4096
# Kernel memory for one ramfs inode + dentry (an unpacked file or directory).
INODE_BYTES = 1024

KINDS = ("big-initrd", "media", "netboot-split", "netboot-nbd")
# Allowances (MiB) on top of the parts, two per kind: (usable, stop). What the kernel
# allocates while it boots (slab, page tables, per-CPU areas, watermarks) and, for media
# and split netboot, what the boot needs once the initramfs runs (udev, systemd, the
# runtime's page cache). "usable" puts the budget (floor_mb) at the usable floor: the
# least RAM whose boot reaches the marker within 1.5x its time at 512 MB. "stop" puts
# stop_mb at the reached floor, the least RAM that reaches the marker at all: below it a
# split initrd stops with one line, between the two it says the boot will be slow.
# Fitted on the test product with `make bench` (TCG, 2026-12-07):
# - big-initrd: reached 224 on four big initrds of 71, 62, 61 and 59 MiB (floors 304,
#   >224, <=224, >208 MB): the stop allowance lies in (11.2, 17.1]; usable 240 (99 s
#   against 70 s at 512, 2026-12-07) with 201 MB of parts: usable allowance 40 (budget 242).
# - media (boot.iso, BIOS CD, 96 MB of parts): usable 208, reached 160 (144: OOM kill of
#   modprobe): below 208 the runtime's pages, read back from the CD, thrash.
# - netboot-split (174 MB of parts, install.img in RAM): usable 240; reached not bisected
#   (the stop kept at media's, which the boots of the bench met).
# - netboot-nbd (115 MB of parts): usable 192 (lz4, 2026-12-05): its page cache refills
#   from the loopback server faster than from the emulated CD; the stop kept at media's.
ALLOWANCE_MB = {"big-initrd": (40, 16), "media": (110, 56), "netboot-split": (64, 56), "netboot-nbd": (76, 56)}


@dataclasses.dataclass(frozen=True)
class RamBudget:
    """The predicted RAM floor of one output, with the parts it is made of (MiB)."""

    kind: str
    kernel_mb: float  # the kernel image (bzImage init_size) + page structs
    initrd_mb: float  # the initrd as the boot loader loads it
    unpacked_mb: float  # its files once unpacked into the rootfs (pages + inodes)
    squashfs_mb: float  # the runtime image copied into RAM (0 when read from a medium)
    allowance_mb: float
    floor_mb: int  # the budget: the usable floor
    # The physical limit: the parts alone, no allowance (and the page structs of that much
    # RAM). No machine below it can hold what the boot holds at its peak.
    limit_mb: int
    # The predicted reached floor: below it the boot does not reach the marker at all.
    stop_mb: int

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        parts = [f"kernel {self.kernel_mb:.0f}", f"initrd {self.initrd_mb:.0f}", f"unpacked {self.unpacked_mb:.0f}"]
        if self.squashfs_mb:
            parts.append(f"squashfs {self.squashfs_mb:.0f}")
        parts.append(f"allowance {self.allowance_mb:.0f}")
        return f"{self.floor_mb} MB ({' + '.join(parts)})"


def kernel_init_size(vmlinuz: Path) -> int:
    """Bytes the kernel needs to boot, from the x86 bzImage header (init_size, boot
    protocol 2.10+); 64 MiB if the image is not an x86 bzImage we can read."""
    with vmlinuz.open("rb") as f:
        head = f.read(0x270)
    if len(head) >= 0x264 and head[0x202:0x206] == b"HdrS" and struct.unpack_from("<H", head, 0x206)[0] >= 0x020A:
        return struct.unpack_from("<I", head, 0x260)[0]
    return 64 * MIB


def _decompress(data: bytes, kind: str) -> bytes:
    if kind == "xz":
        return lzma.decompress(data, format=lzma.FORMAT_XZ)
    if kind == "gzip":
        return zlib.decompress(data, wbits=31)
    tool = {"zstd": ["zstd", "-dc"], "lz4": ["lz4", "-dc"], "bzip2": ["bzip2", "-dc"]}.get(kind)
    if tool is None or shutil.which(tool[0]) is None:
        raise ValueError(f"cannot read a {kind}-compressed initramfs here")
    return subprocess.run(tool, input=data, capture_output=True, check=True).stdout


def _cpio_ram(data: bytes) -> int:
    """RAM of the files of an uncompressed newc stream (maybe several archives) once
    unpacked into a ramfs: data rounded up to pages, plus an inode per member."""
    total, pos = 0, 0
    while pos + HEADER_LEN <= len(data):
        if data[pos : pos + 6] not in (MAGIC, b"070702"):
            if data[pos : pos + 4] == b"\0\0\0\0":
                pos += 4  # padding between archives
                continue
            break
        size, namesize = int(data[pos + 54 : pos + 62], 16), int(data[pos + 94 : pos + 102], 16)
        name = data[pos + HEADER_LEN : pos + HEADER_LEN + namesize].rstrip(b"\0").decode(errors="replace")
        start = pos + HEADER_LEN + namesize
        start += -start % 4
        pos = start + size + (-(start + size) % 4)
        if name != TRAILER:
            total += INODE_BYTES + math.ceil(size / PAGE) * PAGE
    return total


def unpacked_ram(initrd: Path, *, start: int = 0) -> int:
    """Bytes the files of an initrd (any concatenation of cpio archives, compressed
    or not) take in RAM once the kernel has unpacked them; from offset `start` on
    (where an archive begins), e.g. only what was appended to a known initramfs."""
    total = 0
    with initrd.open("rb") as f:
        for seg in read_newc(initrd, start):
            if seg.kind == "cpio":
                total += sum(INODE_BYTES + math.ceil(m.size / PAGE) * PAGE for m in seg.members)
            else:
                f.seek(seg.offset)
                total += _cpio_ram(_decompress(f.read(seg.end - seg.offset), seg.kind))
    return total


def predict(kind: str, vmlinuz: Path, initrd: Path, squashfs: Path | None = None, *, unpacked: int | None = None) -> RamBudget:
    """The RAM floor of booting vmlinuz + initrd as `kind` (see KINDS). For
    "netboot-split", squashfs is the install.img livenet downloads into RAM; the big
    initrd carries its squashfs inside (counted in the initrd and the unpacked files).
    unpacked: unpacked_ram(initrd), when the caller has counted it already."""
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}")
    kernel = kernel_init_size(vmlinuz) / MIB
    initrd_mb = initrd.stat().st_size / MIB
    unpacked_mb = (unpacked_ram(initrd) if unpacked is None else unpacked) / MIB
    squash = squashfs.stat().st_size / MIB if kind == "netboot-split" and squashfs is not None else 0.0
    usable, stop = ALLOWANCE_MB[kind]
    parts = kernel + initrd_mb + unpacked_mb + squash
    floor = machine_mb(parts + usable)
    return RamBudget(
        kind,
        kernel_mb=round(kernel + floor / 64, 1),
        initrd_mb=round(initrd_mb, 1),
        unpacked_mb=round(unpacked_mb, 1),
        squashfs_mb=round(squash, 1),
        allowance_mb=float(usable),
        floor_mb=floor,
        limit_mb=machine_mb(parts),
        stop_mb=machine_mb(parts + stop),
    )


def machine_mb(mib: float) -> int:
    """The RAM (whole MiB) of a machine that still has `mib` MiB once the kernel's page
    structs are taken: they take 1/64 of all RAM (64 bytes per 4 KiB page)."""
    return math.ceil(mib * 64 / 63)


def predict_big_initrd(vmlinuz: Path, initrd: Path, *, initramfs_unpacked: int, appended_at: int) -> RamBudget:
    """predict("big-initrd") for an initrd make_big_initrd wrote: its initramfs already
    counted (initramfs_unpacked), only the archive appended at `appended_at` is read."""
    return predict("big-initrd", vmlinuz, initrd, unpacked=initramfs_unpacked + unpacked_ram(initrd, start=appended_at))


# The initrds composer ships for split boots carry their budget and stop for the
# composer-memcheck dracut module (share/dracut/modules.d): dracut reads
# etc/cmdline.d/*.conf before the kernel command line, so `rd.composer.memory=0`
# given at boot still turns the check off.
MEMCHECK_ARG = "rd.composer.memory"
MEMCHECK_STOP_ARG = "rd.composer.memory.stop"
MEMCHECK_CONF = "etc/cmdline.d/90-composer-memory.conf"


def with_memory_check(initramfs: Path, dest: Path, budget: RamBudget, *, mtime: int = 0) -> None:
    """dest = initramfs + an uncompressed cpio with etc/cmdline.d/…:
    rd.composer.memory=FLOOR rd.composer.memory.stop=STOP.

    Written as dest.tmp and renamed, so dest is never half-written."""
    tmp = dest.with_name(dest.name + ".tmp")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tmp.open("wb") as out, initramfs.open("rb") as src:
            shutil.copyfileobj(src, out, MIB)
            out.write(b"\0" * (-out.tell() % 4))  # each archive starts 4-byte aligned
            write_newc(
                out,
                [
                    CpioEntry.directory("etc", 0o755, mtime=mtime),
                    CpioEntry.directory("etc/cmdline.d", 0o755, mtime=mtime),
                    CpioEntry.file(MEMCHECK_CONF, memcheck_line(budget).encode(), 0o644, mtime=mtime),
                ],
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def memcheck_line(budget: RamBudget) -> str:
    return f"{MEMCHECK_ARG}={budget.floor_mb} {MEMCHECK_STOP_ARG}={budget.stop_mb}\n"


def carried_memcheck(initrd: Path) -> dict[str, int]:
    """The rd.composer.memory* values an initrd carries (with_memory_check)."""
    found: dict[str, int] = {}
    for seg in read_newc(initrd):
        for m in seg.members:
            if m.name.lstrip("./") == MEMCHECK_CONF:
                with initrd.open("rb") as f:
                    f.seek(m.data_offset)
                    text = f.read(m.size).decode(errors="replace")
                for word in text.split():
                    key, _, value = word.partition("=")
                    if key in (MEMCHECK_ARG, MEMCHECK_STOP_ARG) and value.isdigit():
                        found[key] = int(value)
    return found


def carried_budget(initrd: Path) -> int | None:
    """The budget (usable floor, MiB) an initrd carries, if any."""
    return carried_memcheck(initrd).get(MEMCHECK_ARG)


def carried_stop(initrd: Path) -> int | None:
    """The RAM (MiB) below which an initrd stops, if it carries a check."""
    found = carried_memcheck(initrd)
    return found.get(MEMCHECK_STOP_ARG, found.get(MEMCHECK_ARG))


def carries_squashfs(initrd: Path) -> bool:
    """Is this a big initrd (the runtime's squashfs.img inside)?"""
    return any(
        m.name.lstrip("./").endswith(".img") and "/" not in m.name.lstrip("./") for seg in read_newc(initrd) for m in seg.members
    )


def manifest_record(budgets: dict[str, RamBudget]) -> dict[str, dict[str, object]]:
    """{kernel version: the budget and its parts} for manifest.json."""
    return {kver: b.as_dict() for kver, b in budgets.items()}


def summary_record(budgets: dict[str, RamBudget]) -> dict[str, int]:
    """{kernel version: floor in MB} for the summary line; also says it on the log."""
    for kver, b in budgets.items():
        info(f"RAM: {b.kind} of kernel {kver} needs {b.summary()}; it boots, slowly, down to {b.stop_mb} MB")
    return {kver: b.floor_mb for kver, b in budgets.items()}
