"""Hybrid ISO 9660 images with xorriso (its mkisofs emulation), no loop device.

Layout of a boot.iso made here:
* BIOS from CD: an El Torito no-emulation image — GRUB 2 (i386-pc-eltorito core
  image, whose first 2 KiB are cdboot.img) or ISOLINUX, with a boot info table.
* BIOS from a USB stick (hybrid): GRUB's boot_hybrid.img in the MBR, which loads
  the same core image (xorriso patches its address in: --grub2-mbr), or ISOLINUX's
  isohdpfx.bin (-isohybrid-mbr).
* UEFI from CD: efiboot.img as the alternative El Torito image (platform EFI).
* UEFI from a USB stick: efiboot.img also appended as partition 2 (type EF), so the
  firmware finds an EFI system partition. With GRUB the El Torito entry points at
  that appended partition (no second copy); with ISOLINUX the image inside the ISO
  is marked in the GPT instead (-isohybrid-gpt-basdat).
Then implantisomd5 stores the checksum that `rd.live.check`/checkisomd5 verify.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

from composer.reproducible import seed_uuid
from composer.run import ComposerError, info, run

VOLID_MAX = 32
# ISO 9660 allows fewer characters; these survive the kernel command line
# (CDLABEL=, LABEL=) and /dev/disk/by-label/ without any escaping.
_VOLID_RE = re.compile(r"[A-Za-z0-9._-]+")


def default_volid(product: str, version: str, arch: str) -> str:
    """`<product>-<version>-<arch>` with characters outside [A-Za-z0-9._-] as '-'."""
    text = f"{product}-{version}-{arch}"
    return re.sub(r"[^A-Za-z0-9._-]", "-", text)


def check_volid(volid: str) -> str:
    if not volid:
        raise ComposerError("--volid: the volume id must not be empty")
    if len(volid) > VOLID_MAX:
        raise ComposerError(f"--volid {volid!r}: {len(volid)} characters, at most {VOLID_MAX} allowed")
    if not _VOLID_RE.fullmatch(volid):
        bad = "".join(sorted({c for c in volid if not _VOLID_RE.fullmatch(c)}))
        raise ComposerError(f"--volid {volid!r}: characters {bad!r} not allowed (use A-Z a-z 0-9 . _ -)")
    return volid


@dataclasses.dataclass(frozen=True)
class BiosBoot:
    """The BIOS El Torito image (a path inside the ISO) and the hybrid MBR (host file)."""

    loader: str  # "grub2" or "isolinux"
    image: str  # e.g. "images/eltorito.img", "isolinux/isolinux.bin"
    catalog: str  # e.g. "boot.cat", "isolinux/boot.cat"
    mbr: Path | None  # boot_hybrid.img (grub2) or isohdpfx.bin (isolinux); None: not hybrid


def _graft_escape(path: str) -> str:
    return path.replace("\\", "\\\\").replace("=", "\\=")


def xorriso_argv(
    output: Path,
    volid: str,
    grafts: Sequence[tuple[str, Path]],
    *,
    bios: BiosBoot | None,
    efiboot: Path | None,
    efiboot_in_iso: str | None = None,
    source_date_epoch: int | None = None,
    seed: str = "",
) -> list[str]:
    """The xorriso command. grafts: (path in the ISO, host file or directory).

    efiboot is the host efiboot.img; efiboot_in_iso its path inside the ISO if it is
    grafted there too (needed for the ISOLINUX layout). With source_date_epoch every
    date in the image is the epoch and the GPT disk GUID comes from `seed`.
    """
    argv = [
        "xorriso",
        "-as",
        "mkisofs",
        "-o",
        os.fspath(output),
        "-V",
        volid,
        "-R",
        "-J",
        "-joliet-long",
        "-iso-level",
        "3",
        "-graft-points",
    ]
    if source_date_epoch is not None:
        date = iso_date(source_date_epoch)
        # The volume dates (also the "UUID" GRUB's search --fs-uuid sees, and the
        # hybrid MBR id), every file and directory date, and the GPT GUID that is
        # random by default (GPT only with -isohybrid-gpt-basdat).
        argv += [f"--modification-date={date}", "--set_all_file_dates", date, "--gpt_disk_guid", str(seed_uuid(seed, "iso-gpt"))]
    if bios is not None:
        argv += ["-b", bios.image, "-c", bios.catalog, "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table"]
        if bios.loader == "grub2":
            argv += ["--grub2-boot-info"]
            if bios.mbr is not None:
                argv += ["--grub2-mbr", os.fspath(bios.mbr)]
        elif bios.loader == "isolinux":
            if bios.mbr is not None:
                argv += ["-isohybrid-mbr", os.fspath(bios.mbr)]
        else:
            raise ComposerError(f"unknown BIOS loader {bios.loader!r}")
    if efiboot is not None:
        if bios is not None and bios.loader == "isolinux":
            if efiboot_in_iso is None:
                raise ComposerError("the ISOLINUX layout needs efiboot.img inside the ISO")
            argv += ["-eltorito-alt-boot", "-e", efiboot_in_iso, "-no-emul-boot"]
            if bios.mbr is not None:
                argv += ["-isohybrid-gpt-basdat"]
        else:
            argv += [
                "-append_partition",
                "2",
                "0xef",
                os.fspath(efiboot),
                "-eltorito-alt-boot",
                "-e",
                "--interval:appended_partition_2:all::",
                "-no-emul-boot",
            ]
    for inside, host in grafts:
        argv.append(f"{_graft_escape(inside)}={_graft_escape(os.fspath(host))}")
    return argv


def iso_date(epoch: int) -> str:
    """YYYYMMDDhhmmsscc in UTC, as xorriso's --modification-date= wants it."""
    return time.strftime("%Y%m%d%H%M%S00", time.gmtime(epoch))


def make_iso(
    output: Path,
    volid: str,
    grafts: Sequence[tuple[str, Path]],
    *,
    bios: BiosBoot | None,
    efiboot: Path | None,
    efiboot_in_iso: str | None = None,
    implant_md5: bool = True,
    source_date_epoch: int | None = None,
    seed: str = "",
) -> Path:
    check_volid(volid)
    if bios is None and efiboot is None:
        raise ComposerError("boot.iso: neither a BIOS nor a UEFI boot image")
    for inside, host in grafts:
        if not host.exists():
            raise ComposerError(f"boot.iso: {host} (for {inside}) does not exist")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        # grafts are written in the order given; the caller sorts them. xorriso also
        # reads SOURCE_DATE_EPOCH (for the times our options do not name, e.g. -iso_nowtime).
        run(
            xorriso_argv(
                tmp,
                volid,
                grafts,
                bios=bios,
                efiboot=efiboot,
                efiboot_in_iso=efiboot_in_iso,
                source_date_epoch=source_date_epoch,
                seed=seed,
            ),
            env={"SOURCE_DATE_EPOCH": str(source_date_epoch)} if source_date_epoch is not None else None,
        )
        if implant_md5:
            # implantisomd5 is deterministic: an MD5 of the image and fragment sums, no dates.
            run(["implantisomd5", "--supported-iso", os.fspath(tmp)])
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    info(f"boot.iso: {output.stat().st_size / (1 << 20):.1f} MiB, volume id {volid}")
    return output
