"""Minimized install delta: osmin.img, a dm-snapshot COW store over rootfs.img.

rootfs.img carries free room for the live system's writes; an installer copying it
wants only the used blocks. `resize2fs -M` on a copy packs the filesystem into its
first M bytes. The chunks of those M bytes that differ from the origin (moved blocks,
rewritten metadata) are stored as snapshot exceptions: snapshot(origin=rootfs.img,
cow=osmin.img) then presents the minimized filesystem, whose superblock says it is M
bytes long. Everything here works on plain files: no device-mapper, no loop device.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import shutil
import struct
import tempfile
from pathlib import Path

from composer.images.sparse import copy_sparse
from composer.live.dmsnap import (
    DEFAULT_CHUNK_SECTORS,
    CowFormatError,
    CowStore,
    apply_store,
    check_chunk_sectors,
    diff_chunks,
    read_presented,
)
from composer.live.sparsify import EXT_TYPES, copy_prefix_sparse, fs_type, human
from composer.preflight import Place, check_dir_creatable, check_outputs_apart
from composer.run import CommandError, ComposerError, info, run

_EXT_MAGIC = 0xEF53
_INCOMPAT_64BIT = 0x80


def ext_fs_size(superblock: bytes) -> int | None:
    """Bytes an ext2/3/4 filesystem spans, from its 1024-byte superblock (None: not ext)."""
    if len(superblock) < 1024 or struct.unpack_from("<H", superblock, 0x38)[0] != _EXT_MAGIC:
        return None
    blocks_lo, = struct.unpack_from("<I", superblock, 0x04)
    log_block, = struct.unpack_from("<I", superblock, 0x18)
    incompat, = struct.unpack_from("<I", superblock, 0x60)
    blocks_hi = struct.unpack_from("<I", superblock, 0x150)[0] if incompat & _INCOMPAT_64BIT else 0
    if log_block > 6:  # block sizes beyond 64 KiB do not exist
        return None
    return ((blocks_hi << 32) | blocks_lo) * (1024 << log_block)


def _read_superblock(img: Path) -> bytes:
    with open(img, "rb") as f:
        f.seek(1024)
        return f.read(1024)


@dataclasses.dataclass(frozen=True)
class DeltaInfo:
    origin_size: int
    minimized_size: int
    chunk_sectors: int
    chunks: int  # exceptions in the store
    raw_size: int  # bytes of the uncompressed store (apparent)
    gz_size: int


def _e2fs_clock(source_date_epoch: int | None) -> dict[str, str] | None:
    """e2fsprogs 1.47.0 stamps "now" into the superblock (and so into the delta); its test
    hooks fix the clock for reproducible builds."""
    if source_date_epoch is None:
        return None
    return {"E2FSPROGS_FAKE_TIME": str(source_date_epoch), "E2FSCK_TIME": str(source_date_epoch)}


def _e2fsck_fix(img: Path, env: dict[str, str] | None = None) -> None:
    # resize2fs insists on a freshly checked filesystem. Exit 1 = errors fixed (in our copy).
    proc = run(["e2fsck", "-fy", img], check=False, capture=True, env=env)
    if proc.returncode not in (0, 1):
        raise CommandError(proc.args, proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace"))
    if proc.returncode == 1:
        info("delta: e2fsck fixed errors in the copy of the origin; the origin itself has them too")


def _gunzip_to(src: Path, dst: Path) -> None:
    with open(src, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(src, "rb") if gz else open(src, "rb")) as i, open(dst, "wb") as o:
            shutil.copyfileobj(i, o, 1 << 20)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise ComposerError(f"delta: cannot decompress {src}: {e}") from None


def _check_input(path: Path) -> None:
    if not path.exists():
        raise ComposerError(f"delta: {path}: no such file")
    if not path.is_file():
        raise ComposerError(f"delta: {path} is not a regular file")


def _check_output(output: Path, *inputs: tuple[str, Path]) -> None:
    """The output is written beside itself and renamed: its directory must take files.
    It must not be one of the inputs (nor a system place): -o ORIGIN would replace
    the origin with the delta."""
    check_outputs_apart([("delta: -o", output)], [Place(p, f"the {what} {p}") for what, p in inputs])
    if output.is_dir():
        raise ComposerError(f"delta: -o {output} is a directory")
    parent = Path(os.path.abspath(output)).parent
    if not parent.is_dir():
        raise ComposerError(f"delta: -o {output}: {parent} is not a directory")
    check_dir_creatable(parent, "delta: -o")


def create_delta(rootfs: Path, output: Path, *, chunk_sectors: int = DEFAULT_CHUNK_SECTORS,
                 source_date_epoch: int | None = None) -> DeltaInfo:
    check_chunk_sectors(chunk_sectors)
    _check_input(rootfs)
    _check_output(output, ("origin", rootfs))
    fstype = fs_type(rootfs)
    if fstype == "btrfs":
        raise ComposerError(
            "delta: btrfs rootfs.img is not supported: shrinking btrfs needs the filesystem mounted "
            "(a loop device), and the shrink relocates whole block groups, so the delta would hold much of "
            "the data rather than a few KiB; build the runtime with --rootfs-type ext4 to ship osmin.img"
        )
    if fstype not in EXT_TYPES:
        raise ComposerError(f"delta: {rootfs} holds {fstype or 'no recognised filesystem'}; only ext2/3/4 can be minimized")
    output = output.resolve()
    origin_size = rootfs.stat().st_size
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".composer-delta-") as tmpd:
        tmp = Path(tmpd)
        small = tmp / "minimized.img"
        info(f"delta: minimizing a sparse copy of {rootfs} ({human(origin_size)})")
        copy_sparse(rootfs, small)
        clock = _e2fs_clock(source_date_epoch)
        _e2fsck_fix(small, clock)
        run(["resize2fs", "-M", small], env=clock)
        size = ext_fs_size(_read_superblock(small))
        if size is None or size > origin_size:
            raise ComposerError(f"delta: resize2fs left no sane ext filesystem in {small}")
        if small.stat().st_size > size:
            os.truncate(small, size)
        store_path = tmp / "osmin.img"
        store = CowStore.write(store_path, chunk_sectors, diff_chunks(rootfs, small, chunk_sectors))
        # Prove the store before publishing it: read it back and rebuild the minimized image.
        CowStore.read(store_path, origin_size=origin_size)
        check = tmp / "check.img"
        apply_delta(rootfs, store_path, check)
        run(["cmp", small, check])
        part = output.with_name(f".{output.name}.partial-{os.getpid()}")
        try:
            # mtime=0 and no file name in the gzip header: the same store gives the same bytes.
            with open(store_path, "rb") as i, open(part, "wb") as raw, \
                    gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as o:
                shutil.copyfileobj(i, o, 1 << 20)
            os.replace(part, output)
        finally:
            part.unlink(missing_ok=True)
    result = DeltaInfo(origin_size, size, chunk_sectors, len(store.exceptions), store.size, output.stat().st_size)
    info(
        f"delta: {output}: {result.chunks} chunks of {chunk_sectors * 512} bytes, store {human(result.raw_size)}, "
        f"gzip {human(result.gz_size)}; minimized filesystem {human(size)} of {human(origin_size)}"
    )
    return result


def apply_delta(rootfs: Path, delta: Path, output: Path, *, fsck: bool = True) -> int:
    """Write the minimized filesystem snapshot(rootfs, delta) presents to `output`; returns its size."""
    _check_input(rootfs)
    _check_input(delta)
    _check_output(output, ("origin", rootfs), ("delta", delta))
    output = output.resolve()
    origin_size = rootfs.stat().st_size
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".composer-delta-") as tmpd:
        cow = Path(tmpd) / "osmin.img"
        _gunzip_to(delta, cow)
        try:
            store = CowStore.read(cow, origin_size=origin_size)
        except CowFormatError as e:
            # Name the user's file, not our decompressed copy of it.
            raise CowFormatError(f"delta: {delta}: {str(e).replace(f'{cow}: ', '')}") from None
        if store.header is None:
            # What `delta create` writes always has a header; zeros are a damaged or foreign file.
            raise CowFormatError(f"delta: {delta}: not a delta: its header is all zeros (an empty, never written "
                                 "store, or a damaged file); make it again with `composer delta create`")
        size = ext_fs_size(read_presented(store, cow, rootfs, 1024, 1024))
        if size is None:
            raise ComposerError(f"delta: {delta} over {rootfs} does not present an ext2/3/4 filesystem (wrong origin?)")
        if size > origin_size:
            raise ComposerError(f"delta: the presented filesystem ({size} bytes) is larger than its origin ({origin_size} bytes)")
        part = Path(tmpd) / "minimal.img"
        copy_prefix_sparse(rootfs, part, size)
        apply_store(store, cow, part, size=size)
        if fsck:
            proc = run(["e2fsck", "-fn", part], check=False, capture=True)
            if proc.returncode != 0:
                raise ComposerError(
                    f"delta: {delta} applied to {rootfs} gives a filesystem e2fsck finds damaged (exit {proc.returncode}): "
                    "was the delta made from this rootfs.img?"
                )
        os.replace(part, output)
    info(f"delta: wrote {output} ({human(size)}, {len(store.exceptions)} chunks from the delta)")
    return size
