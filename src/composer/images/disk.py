"""A partitioned raw disk image (`composer livemedia --make-disk`), without loop devices,
mounts or root.

The layout comes from the kickstart's `part` lines (and `reqpart`); the table is a GPT
written by sfdisk into the image file; each filesystem is made by its tool's
directory-to-image mode on a file of the partition's size (mkfs.ext4 -d, mkfs.btrfs
--rootdir, mkfs.fat + mtools, mkswap) and copied into the disk at the partition's offset,
holes kept. GRUB goes in as grub-install would put it, by hand: for BIOS, core.img in
the BIOS boot partition and boot.img in the MBR with core.img's sector patched in (GRUB's
boot.S and diskboot.S offsets); for UEFI, a GRUB EFI binary as \\EFI\\BOOT\\BOOTX64.EFI on
the EFI system partition. Both find the partition holding /boot by its filesystem UUID.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import struct
from collections.abc import Mapping
from pathlib import Path

from composer.images.sparse import copy_into, create_sparse
from composer.kickstart.system import Disk, Part
from composer.run import ComposerError, info, run

MiB = 1 << 20
SECTOR = 512
ALIGN = MiB  # every partition starts on a MiB boundary, the first at 1 MiB (sector 2048)
GPT_TAIL = MiB  # room for the backup GPT at the end
# GPT partition type GUIDs (the UEFI specification's and the Discoverable Partitions Specification's).
TYPE_GUIDS = {
    "biosboot": "21686148-6449-6E6F-744E-656564454649",
    "efi": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
    "swap": "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
    "root": "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",  # x86-64 root
    "data": "0FC63DAF-8483-4772-8E79-3D69D8477DE4",  # Linux filesystem
}
# Filesystems a data partition can be made in from a directory (no mount).
DATA_FSTYPES = ("ext4", "btrfs")
EFI_FSTYPES = ("efi", "vfat")
# What reqpart adds on x86_64, as anaconda does for a disk that boots by BIOS and UEFI (MiB).
REQPART_SIZES = {"biosboot": 1, "/boot/efi": 200, "/boot": 1024}
MIN_SIZES = {"biosboot": 1, "efi": 16, "swap": 1}  # MiB
# Mount points that are the running system's, never a partition.
NOT_MOUNTPOINTS = ("/proc", "/sys", "/dev", "/run")
# GRUB's boot.img: the 440 bytes of code before the disk signature and partition table,
# and where in them the LBA of core.img's first sector goes (boot.S, GRUB_BOOT_MACHINE_KERNEL_SECTOR).
BOOT_CODE_SIZE = 440
BOOT_KERNEL_SECTOR = 0x5C
# core.img's first sector (diskboot.img) ends with a blocklist: the LBA of the rest of
# core.img is at 0x200 - 12 (diskboot.S, firstlist).
CORE_BLOCKLIST_START = 0x200 - 12


def depth(mountpoint: str) -> int:
    """How deep a mount point is: / 0, /boot 1, /boot/efi 2."""
    return 0 if mountpoint == "/" else mountpoint.count("/")


@dataclasses.dataclass(frozen=True)
class Partition:
    number: int  # 1-based, as sfdisk and GRUB's (,gptN) count
    mountpoint: str  # "/", "/boot", "/boot/efi", "swap", "biosboot"
    role: str  # "biosboot", "efi", "swap", "data"
    fstype: str  # "ext4", "btrfs", "vfat", "swap", "" (biosboot)
    size: int  # bytes, a multiple of ALIGN
    start: int = 0  # bytes from the start of the disk
    grow: bool = False
    label: str = ""
    origin: str = ""  # "kickstart LINE" or "reqpart"

    @property
    def type_guid(self) -> str:
        return TYPE_GUIDS["root" if self.mountpoint == "/" else self.role]

    @property
    def name(self) -> str:
        return self.mountpoint if self.role != "data" else (self.label or self.mountpoint)


@dataclasses.dataclass(frozen=True)
class DiskLayout:
    partitions: tuple[Partition, ...]
    size: int  # bytes
    notes: tuple[str, ...] = ()  # what composer added (one info line)

    def get(self, mountpoint: str) -> Partition | None:
        return next((p for p in self.partitions if p.mountpoint == mountpoint), None)

    def data(self) -> list[Partition]:
        """The filesystems made from the tree, deepest mount point first."""
        return sorted((p for p in self.partitions if p.role == "data"), key=lambda p: -depth(p.mountpoint))

    @property
    def boot(self) -> Partition:
        """The partition holding /boot (kernels, grub.cfg)."""
        found = self.get("/boot") or self.get("/")
        assert found is not None
        return found


def _role(part: Part, where: str) -> tuple[str, str]:
    """(role, fstype) of a `part` line, or one line saying why it cannot be made."""
    mp, fstype = part.mountpoint, part.fstype.lower()
    if mp == "biosboot" or fstype == "biosboot":
        if mp != "biosboot" or fstype not in ("", "biosboot"):
            raise ComposerError(f"{where}: part {mp} --fstype={fstype}: a BIOS boot partition is `part biosboot`")
        return "biosboot", ""
    if mp == "swap" or fstype == "swap":
        if mp != "swap" or fstype not in ("", "swap"):
            raise ComposerError(f"{where}: part {mp} --fstype={fstype}: swap is `part swap`")
        return "swap", "swap"
    if mp == "/boot/efi" or fstype in EFI_FSTYPES:
        if mp != "/boot/efi" or fstype not in (*EFI_FSTYPES, ""):
            raise ComposerError(f"{where}: part {mp} --fstype={fstype}: the EFI system partition is /boot/efi")
        return "efi", "vfat"
    if not mp.startswith("/"):
        raise ComposerError(f"{where}: part {mp}: RAID, LVM and btrfs volumes: not supported by --make-disk")
    if posixpath.normpath(mp) != mp or mp.startswith("//") or any(mp == d or mp.startswith(d + "/") for d in NOT_MOUNTPOINTS):
        raise ComposerError(f"{where}: part {mp}: not a mount point --make-disk can fill")
    fstype = fstype or "ext4"
    if fstype not in DATA_FSTYPES:
        raise ComposerError(
            f"{where}: part {mp} --fstype={fstype}: --make-disk makes {', '.join(DATA_FSTYPES)} "
            "(filled from a directory by mkfs, no mount), vfat at /boot/efi, swap, biosboot"
        )
    return "data", fstype


def _from_part(part: Part, path: str) -> Partition:
    where = f"kickstart {path}:{part.lineno}" if part.lineno else f"kickstart {path}"
    if part.unsupported:
        raise ComposerError(f"{where}: part {part.mountpoint} {part.unsupported[0]}: not supported by --make-disk (one new disk)")
    role, fstype = _role(part, where)
    if part.size_mib is None and not part.grow:
        raise ComposerError(f"{where}: part {part.mountpoint}: give --size (MiB) or --grow")
    size = part.size_mib or 0
    least = MIN_SIZES.get(role, 1)
    if size < least and not (part.grow and role == "data"):
        raise ComposerError(f"{where}: part {part.mountpoint} --size={size}: too small, at least {least} MiB")
    if part.grow and role != "data":
        raise ComposerError(f"{where}: part {part.mountpoint} --grow: only a filesystem from the tree can grow here")
    return Partition(0, part.mountpoint, role, fstype, size * MiB, grow=part.grow, label=part.label, origin=where)


def plan_disk(disk: Disk, path: str) -> DiskLayout:
    """The partition table from `part`/`reqpart` (`path`: the kickstart, for messages).

    GPT, 1 MiB aligned: the BIOS boot and EFI system partitions first (added as reqpart
    adds them when the kickstart has none, both: the disk boots by BIOS and by UEFI),
    then /boot, then the kickstart's partitions in its order."""
    if disk.disklabel not in ("", "gpt"):
        raise ComposerError(f"kickstart {path}: clearpart --disklabel={disk.disklabel}: --make-disk makes GPT disks only")
    parts: list[Partition] = []
    for part in disk.parts:
        p = _from_part(part, path)
        if any(q.mountpoint == p.mountpoint for q in parts):
            raise ComposerError(f"{p.origin}: part {p.mountpoint}: given twice")
        parts.append(p)
    if not any(p.mountpoint == "/" for p in parts):
        raise ComposerError(f"kickstart {path}: no `part /`: --make-disk needs the root partition's size and type")
    notes: list[str] = []
    wanted = [("biosboot", "biosboot", ""), ("/boot/efi", "efi", "vfat")]
    if disk.reqpart_boot:
        wanted.append(("/boot", "data", "ext4"))
    for mp, role, fstype in wanted:
        if not any(p.mountpoint == mp for p in parts):
            parts.append(Partition(0, mp, role, fstype, REQPART_SIZES[mp] * MiB, origin="reqpart"))
            if not disk.reqpart:
                notes.append(f"{mp} ({REQPART_SIZES[mp]} MiB)")
    order = {"biosboot": 0, "/boot/efi": 1, "/boot": 2}
    parts.sort(key=lambda p: order.get(p.mountpoint, 3))  # stable: the kickstart's order after
    return place(parts, tuple(notes))


def place(parts: list[Partition], notes: tuple[str, ...] = ()) -> DiskLayout:
    """Number the partitions and lay them out one after the other from 1 MiB."""
    placed, offset = [], ALIGN
    for i, p in enumerate(parts, 1):
        size = -(-p.size // ALIGN) * ALIGN
        placed.append(dataclasses.replace(p, number=i, start=offset, size=size))
        offset += size
    return DiskLayout(tuple(placed), offset + GPT_TAIL, notes)


def fit(layout: DiskLayout, needs: Mapping[str, int]) -> DiskLayout:
    """The layout with each --grow filesystem as large as its contents need (`needs`: bytes
    by mount point); a fixed size that is too small is one line saying how much is needed."""
    parts = []
    for p in layout.partitions:
        need = needs.get(p.mountpoint, 0)
        if p.grow:
            p = dataclasses.replace(p, size=max(p.size, need))
        elif need > p.size:
            raise ComposerError(
                f"{p.origin}: part {p.mountpoint} --size={p.size // MiB}: too small for what goes there "
                f"(about {-(-need // MiB)} MiB as {p.fstype}); raise --size or add --grow"
            )
        parts.append(p)
    return place(parts, layout.notes)


def sfdisk_script(layout: DiskLayout, disk_guid: str, part_guids: Mapping[int, str]) -> str:
    lines = ["label: gpt", f"label-id: {disk_guid}", "unit: sectors", f"first-lba: {ALIGN // SECTOR}"]
    for p in layout.partitions:
        lines.append(
            f"start={p.start // SECTOR}, size={p.size // SECTOR}, type={p.type_guid}, uuid={part_guids[p.number]}, "
            f'name="{p.name}"'
        )
    return "\n".join(lines) + "\n"


def write_table(disk: Path, layout: DiskLayout, disk_guid: str, part_guids: Mapping[int, str]) -> None:
    """A sparse file of the disk's size with sfdisk's GPT (and protective MBR) in it."""
    create_sparse(disk, layout.size)
    script = sfdisk_script(layout, disk_guid, part_guids)
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", os.fspath(disk)], input=script.encode())


def put_partition(disk: Path, part: Partition, image: Path) -> None:
    """The filesystem image into its partition (holes stay holes)."""
    size = image.stat().st_size
    if size > part.size:
        raise ComposerError(
            f"disk: the {part.mountpoint} image ({size // MiB} MiB) is larger than its partition ({part.size // MiB} MiB)"
        )
    copy_into(image, disk, part.start)


def install_bios_boot(disk: Path, boot_img: Path, core_img: Path, biosboot: Partition) -> None:
    """GRUB for BIOS as grub-install puts it on a GPT disk: core.img at the start of the
    BIOS boot partition, its first sector told where the rest is, and boot.img's code in
    the MBR told where core.img is (the protective MBR's partition entries stay)."""
    core = core_img.read_bytes()
    boot = boot_img.read_bytes()
    if len(core) > biosboot.size:
        raise ComposerError(
            f"disk: GRUB's core.img ({len(core)} bytes) does not fit the BIOS boot partition ({biosboot.size // MiB} MiB)"
        )
    if len(boot) != SECTOR:
        raise ComposerError(f"disk: {boot_img} is {len(boot)} bytes, not GRUB's 512-byte boot.img")
    lba = biosboot.start // SECTOR
    patched = bytearray(core)
    patched[CORE_BLOCKLIST_START : CORE_BLOCKLIST_START + 8] = struct.pack("<Q", lba + 1)
    mbr = bytearray(boot[:BOOT_CODE_SIZE])
    mbr[BOOT_KERNEL_SECTOR : BOOT_KERNEL_SECTOR + 8] = struct.pack("<Q", lba)
    fd = os.open(disk, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes(patched), biosboot.start)
        os.pwrite(fd, bytes(mbr), 0)
    finally:
        os.close(fd)
    info(f"disk: GRUB i386-pc core.img ({len(core) // 1024} KiB) at sector {lba}, boot.img in the MBR")


def fat_uuid(serial: str) -> str:
    """The UUID= blkid and fstab give a FAT volume with this serial (8 hex digits)."""
    return f"{serial[:4]}-{serial[4:]}".upper()


def fstab(layout: DiskLayout, uuids: Mapping[int, str]) -> str:
    """/etc/fstab of the disk: every partition by its filesystem UUID, as anaconda writes it."""
    lines = ["# made by composer livemedia --make-disk: the disk's partitions by filesystem UUID"]
    for p in sorted(layout.partitions, key=lambda p: (p.role == "swap", depth(p.mountpoint), p.mountpoint)):
        if p.role == "biosboot":
            continue
        if p.role == "swap":
            lines.append(f"UUID={uuids[p.number]} none swap defaults 0 0")
        elif p.role == "efi":
            lines.append(f"UUID={uuids[p.number]} /boot/efi vfat umask=0077,shortname=winnt 0 2")
        else:
            passno = 0 if p.fstype == "btrfs" else 1 if p.mountpoint == "/" else 2  # fsck.btrfs does nothing
            lines.append(f"UUID={uuids[p.number]} {p.mountpoint} {p.fstype} defaults 0 {passno}")
    return "\n".join(lines) + "\n"
