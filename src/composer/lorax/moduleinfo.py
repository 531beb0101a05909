"""lorax's `module-info` (RuntimeBuilder.generate_module_data): the block and network
drivers of the kernel, each with its description, which anaconda reads from
/lib/modules/module-info. lorax writes it into the runtime after its pre-cleanup backup.

lorax runs `modinfo -F description` once per driver; the description is read here from the
module's .modinfo strings directly (xz, zstd and gzip modules decompressed), so thousands
of drivers take no process each. The format is lorax's: "Version 0", then per driver,
sorted by name, its name, a tab and its type (scsi for modules.block, eth for
modules.networking), a tab and its description in quotes, cut to 65 characters.
"""

from __future__ import annotations

import gzip
import lzma
import os
import re
from pathlib import Path

__all__ = ["module_description", "write_module_info"]

_DESCRIPTION = re.compile(rb"(?:^|\0)description=([^\0]*)\0")
_SETS = (("scsi", "modules.block"), ("eth", "modules.networking"))


def module_description(path: Path) -> str:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        data = lzma.decompress(data)
    elif path.name.endswith(".gz"):
        data = gzip.decompress(data)
    elif path.name.endswith(".zst"):
        try:
            import zstandard  # type: ignore[import-not-found]
        except ImportError:
            return ""
        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    m = _DESCRIPTION.search(b"\0" + _modinfo_section(data) + b"\0")
    return m.group(1).decode("utf-8", errors="replace").strip() if m else ""


def _modinfo_section(elf: bytes) -> bytes:
    """The .modinfo section of a 64- or 32-bit little-endian ELF module (the whole file if
    it is no such ELF: the search then looks at every string)."""
    if elf[:4] != b"\x7fELF" or elf[5] != 1:
        return elf
    wide = elf[4] == 2
    shoff = int.from_bytes(elf[0x28:0x30] if wide else elf[0x20:0x24], "little")
    at = 0x3A if wide else 0x2E
    shentsize, shnum, shstrndx = (int.from_bytes(elf[at + i : at + i + 2], "little") for i in (0, 2, 4))

    def header(i: int) -> tuple[int, int, int]:
        h = elf[shoff + i * shentsize : shoff + (i + 1) * shentsize]
        if wide:
            return int.from_bytes(h[0:4], "little"), int.from_bytes(h[24:32], "little"), int.from_bytes(h[32:40], "little")
        return int.from_bytes(h[0:4], "little"), int.from_bytes(h[16:20], "little"), int.from_bytes(h[20:24], "little")

    try:
        _, stroff, _ = header(shstrndx)
        for i in range(shnum):
            name, off, size = header(i)
            if elf[stroff + name : stroff + name + 9] == b".modinfo\0":
                return elf[off : off + size]
    except (IndexError, ValueError):
        pass
    return elf


def write_module_info(moddir: Path, outfile: Path) -> int:
    """lorax's generate_module_info(moddir, outfile); returns the number of drivers listed."""
    sets = {}
    for kind, name in _SETS:
        listing = moddir / name
        lines = listing.read_text().splitlines() if listing.is_file() else []
        sets[kind] = {line.strip() for line in lines if ".ko" in line}
    entries = []
    for root, _dirs, files in os.walk(moddir):
        for kind, names in sets.items():
            for mod in names.intersection(files):
                name = os.path.splitext(mod)[0]
                desc = module_description(Path(root) / mod) or f"{name} driver"
                entries.append((name, kind, desc))
    if outfile.is_symlink():
        outfile.unlink()
    with open(outfile, "w", encoding="UTF-8") as out:
        out.write("Version 0\n")
        for name, kind, desc in sorted(entries, key=lambda e: e[0]):
            out.write(f'{name}\n\t{kind}\n\t"{desc:.65}"\n')
    return len(entries)
