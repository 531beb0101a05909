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
import errno
import gzip
import io
import os
import shutil
import struct
import zlib
from pathlib import Path
from typing import BinaryIO, Protocol, cast

from composer.images.sparse import copy_sparse
from composer.live.dmsnap import (
    DEFAULT_CHUNK_SECTORS,
    FRESH_CHECK_BYTES,
    HEADER,
    MAX_CHUNK_SECTORS,
    SECTOR,
    SNAP_MAGIC,
    CowFormatError,
    CowHeader,
    CowStore,
    apply_store,
    check_chunk_sectors,
    diff_chunks,
    max_store_chunks,
    read_presented,
)
from composer.live.sparsify import EXT_TYPES, copy_prefix_sparse, fs_type, human
from composer.preflight import Place, check_dir_creatable, check_outputs_apart
from composer.run import CommandError, ComposerError, info, output_path, run, scratch_beside

_EXT_MAGIC = 0xEF53
_INCOMPAT_64BIT = 0x80


def ext_fs_size(superblock: bytes) -> int | None:
    """Bytes an ext2/3/4 filesystem spans, from its 1024-byte superblock (None: not ext)."""
    if len(superblock) < 1024 or struct.unpack_from("<H", superblock, 0x38)[0] != _EXT_MAGIC:
        return None
    (blocks_lo,) = struct.unpack_from("<I", superblock, 0x04)
    (log_block,) = struct.unpack_from("<I", superblock, 0x18)
    (incompat,) = struct.unpack_from("<I", superblock, 0x60)
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


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


class _Inflating(io.RawIOBase):
    """The decompressed delta, as far as anyone has read it: a read at byte X decompresses
    into `fd` up to X and no further, and nothing past `limit`. A 1.5 MB gzip of 1.5 GB of
    zeros behind a 284 KiB store costs 284 KiB of disk, not 1.5 GB."""

    def __init__(self, stream: _Readable, fd: int, limit: int, name: str) -> None:
        super().__init__()
        self.stream, self.fd, self.limit = stream, fd, limit
        self.name = name  # what CowStore's messages call it
        self.have = self.pos = 0
        self.eof = False

    def fill(self, end: int) -> None:
        end = min(end, self.limit)
        while self.have < end and not self.eof:
            data = self.stream.read(min(1 << 20, end - self.have))
            self.eof = not data
            view = memoryview(data)
            while view:
                w = os.pwrite(self.fd, view, self.have)
                view, self.have = view[w:], self.have + w

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET:  # the end is not known before it is decompressed
            raise io.UnsupportedOperation("only absolute seeks")
        self.pos = offset
        return offset

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        self.fill(self.pos + len(buf))
        data = os.pread(self.fd, max(0, min(len(buf), self.have - self.pos)), self.pos)
        buf[: len(data)] = data
        self.pos += len(data)
        return len(data)


def _read_delta(delta: Path, cow: Path, origin_size: int) -> CowStore:
    """Decompress (into `cow`) and parse only what the store's own header and table say it
    needs: its header, its table up to the slot that ends it, the data chunks it lists.
    What follows is never decompressed; the table may not point further than a store over
    this origin can need (dmsnap.max_store_chunks)."""
    with open(delta, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    fd = os.open(cow, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with gzip.open(delta, "rb") if gz else open(delta, "rb") as src:
            lazy = _Inflating(src, fd, FRESH_CHECK_BYTES, str(cow))  # (header and area 0 of 4 KiB chunks)
            lazy.fill(FRESH_CHECK_BYTES)
            size = lazy.have
            head = os.pread(fd, HEADER.size, 0)
            if len(head) == HEADER.size and not lazy.eof:
                h = CowHeader.unpack(head)
                if h.magic == SNAP_MAGIC and 0 < h.chunk_size <= MAX_CHUNK_SECTORS:
                    size = lazy.limit = max_store_chunks(origin_size, h.chunk_size) * h.chunk_size * SECTOR
            store = CowStore.read(cast(BinaryIO, lazy), origin_size=origin_size, size=size)
            end = max(((e.new_chunk + 1) * store.chunk_bytes for e in store.exceptions), default=0)
            lazy.fill(end)
            if lazy.have < end:
                raise CowFormatError(f"truncated: its table lists data chunks up to byte {end}, it holds {lazy.have} bytes")
            return dataclasses.replace(store, size=lazy.have)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ComposerError(f"delta: cannot decompress {delta}: {e}") from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise ComposerError(f"delta: no space left beside the output to decompress {delta}") from None
        raise ComposerError(f"delta: cannot decompress {delta}: {e}") from None
    finally:
        os.close(fd)


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
    if os.path.islink(output):
        raise ComposerError(
            f"delta: -o {output} is a symbolic link (to {os.readlink(output)}): composer never "
            "writes through a link; remove it or give another name"
        )
    if output.is_dir():
        raise ComposerError(f"delta: -o {output} is a directory")
    parent = Path(os.path.abspath(output)).parent
    if not parent.is_dir():
        raise ComposerError(f"delta: -o {output}: {parent} is not a directory")
    check_dir_creatable(parent, "delta: -o")


def create_delta(
    rootfs: Path, output: Path, *, chunk_sectors: int = DEFAULT_CHUNK_SECTORS, source_date_epoch: int | None = None
) -> DeltaInfo:
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
    output = output_path(output)  # a link at its name is replaced, never followed
    origin_size = rootfs.stat().st_size
    if chunk_sectors * SECTOR > origin_size:
        raise ComposerError(f"--chunk-size {chunk_sectors} sectors: larger than the origin {rootfs} ({origin_size} bytes)")
    # Everything, the output too, is made in run.scratch_beside's directory (unpredictable,
    # marked, so a killed run's is swept by the next), then renamed into place.
    with scratch_beside(output) as tmp:
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
        part = tmp / "osmin.img.gz"
        # mtime=0 and no file name in the gzip header: the same store gives the same bytes.
        with (
            open(store_path, "rb") as i,
            open(part, "xb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as o,
        ):
            shutil.copyfileobj(i, o, 1 << 20)
        os.chmod(part, 0o644)
        os.replace(part, output)
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
    output = output_path(output)
    origin_size = rootfs.stat().st_size
    with scratch_beside(output) as scratch:
        cow = scratch / "osmin.img"
        try:
            store = _read_delta(delta, cow, origin_size)
        except CowFormatError as e:
            # Name the user's file, not our decompressed copy of it.
            raise CowFormatError(f"delta: {delta}: {str(e).replace(f'{cow}: ', '')}") from None
        if store.header is None:
            # What `delta create` writes always has a header; zeros are a damaged or foreign file.
            raise CowFormatError(
                f"delta: {delta}: not a delta: its header is all zeros (an empty, never written "
                "store, or a damaged file); make it again with `composer delta create`"
            )
        size = ext_fs_size(read_presented(store, cow, rootfs, 1024, 1024))
        if size is None:
            raise ComposerError(f"delta: {delta} over {rootfs} does not present an ext2/3/4 filesystem (wrong origin?)")
        if size > origin_size:
            raise ComposerError(f"delta: the presented filesystem ({size} bytes) is larger than its origin ({origin_size} bytes)")
        part = scratch / "minimal.img"
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
