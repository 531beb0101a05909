"""Reproducible builds (SOURCE_DATE_EPOCH): seeds for UUIDs and serials, clamped times.

Two builds from the same repository with the same epoch must give byte-identical
images. Every value a tool would otherwise take from the clock or from random bytes
is derived here from a seed string (product, version, arch, epoch), so it is stable
across builds but still differs between products and releases.
"""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from composer.run import info

if TYPE_CHECKING:
    from composer.config import Config

# composer's own namespace for uuid5; any fixed UUID works, it only has to never change.
_NAMESPACE = uuid.UUID("6c1f3c36-5f43-4f43-9a5e-2b8a8d1e7c11")


def build_seed(product: str, version: str, arch: str, epoch: int | None) -> str:
    return f"{product}/{version}/{arch}/{epoch or 0}"


def config_seed(cfg: Config) -> str:
    return build_seed(cfg.product, cfg.version, cfg.arch, cfg.source_date_epoch)


def seed_uuid(seed: str, role: str) -> uuid.UUID:
    """A UUID for one purpose ("rootfs", "rootfs-hash", ...) derived from the seed."""
    return uuid.uuid5(_NAMESPACE, f"{seed}\0{role}")


def fat_serial(seed: str, role: str = "efiboot") -> str:
    """A FAT volume serial (mkfs.fat -i: 8 hex digits) derived from the seed."""
    return seed_uuid(seed, role).hex[:8]


def clamp_times(tree: Path, epoch: int) -> int:
    """Clamp every mtime in tree (the tree itself included) to epoch, in whole seconds,
    and set atime to the same value; return how many entries were changed.

    rpm, dnf, dracut and our templates write files with "now" times; packages keep
    their (older) file times, which are as reproducible as the packages. Symlinks are
    changed themselves, never followed. A directory is done after its entries were
    read, as reading it updates its atime; later reads (mkfs) may update atimes again,
    so images that store atimes get them set on their own (ext4: see rootfs.py).
    """
    changed = 0

    def clamp(path: str, st: os.stat_result) -> None:
        nonlocal changed
        ns = min(int(st.st_mtime), epoch) * 10**9
        if st.st_mtime_ns != ns or st.st_atime_ns != ns:
            os.utime(path, ns=(ns, ns), follow_symlinks=False)
            changed += 1

    todo: list[tuple[str, os.stat_result | None]] = [(os.fspath(tree), None)]
    while todo:
        path, done = todo.pop()
        if done is not None:  # a directory whose entries were all pushed
            clamp(path, done)
            continue
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            todo.append((path, st))
            with os.scandir(path) as it:
                todo.extend((e.path, None) for e in it)
        else:
            clamp(path, st)
    info(f"reproducible: {changed} timestamps in {tree.name} clamped to {epoch}")
    return changed


def normalize_tree(tree: Path) -> None:
    """Remove what a build writes into the tree that differs from build to build
    even with the same packages and times. Found by comparing two kept work trees;
    everything else in them (ldconfig cache, depmod output, machine-id, the rpm
    database with SOURCE_DATE_EPOCH given to rpm) was already identical.
    """
    # dnf 4 records wall-clock transaction times in its history database, and
    # SQLite's WAL file carries random salts; nothing in a runtime reads dnf history.
    for p in sorted((tree / "var/lib/dnf").glob("history.sqlite*")):
        p.unlink()
        info(f"tree: removed /{p.relative_to(tree)}")
