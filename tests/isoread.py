"""Reading back the boot layout of an ISO the tests made: its El Torito boot images and
the MBR's partition table (composer itself never reads them)."""

import re
import struct
import subprocess
from pathlib import Path


def el_torito_report(iso: Path) -> str:
    """`xorriso -report_el_torito plain` of an ISO (what boot images it has)."""
    return subprocess.run(
        ["xorriso", "-indev", str(iso), "-report_el_torito", "plain"],
        capture_output=True,
        text=True,
        errors="replace",
        check=True,
    ).stdout


def el_torito_platforms(report: str) -> list[str]:
    """Platforms ("BIOS", "UEFI") of the boot images in an -report_el_torito plain text."""
    found = []
    for line in report.splitlines():
        m = re.match(r"El Torito boot img\s*:\s*\d+\s+(\S+)", line)
        if m:
            found.append(m.group(1))
    return found


def mbr_partitions(image: Path) -> list[tuple[int, int, int, int]]:
    """The MBR's used partition entries: (number, type, start sector, sectors)."""
    with open(image, "rb") as f:
        mbr = f.read(512)
    if len(mbr) < 512 or mbr[510:512] != b"\x55\xaa":
        return []
    out = []
    for i in range(4):
        entry = mbr[446 + 16 * i : 462 + 16 * i]
        start, count = struct.unpack("<II", entry[8:16])
        if entry[4]:
            out.append((i + 1, entry[4], start, count))
    return out
