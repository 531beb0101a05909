"""The dm-snapshot persistent exception store ("COW") format, read and written in user space.

Layout (all integers little-endian), in chunks of `chunk_size` 512-byte sectors:

    chunk 0                      header: u32 magic "SnAp", u32 valid, u32 version (1),
                                 u32 chunk_size (sectors); rest of the chunk is zero
    chunk 1                      metadata area 0: chunk_bytes/16 slots of
                                 {u64 old_chunk (origin), u64 new_chunk (in this store)}
    chunks 2 .. 1+E              data chunks of area 0 (E = exceptions per area)
    chunk 1 + (E+1)*i            metadata area i, followed by its E data chunks

The kernel reads area after area while they are full; a slot whose new_chunk is 0 (it
would point at the header, so it cannot be real) ends the table. An all-zero header
(magic 0) is a fresh store that the kernel initialises when the snapshot is created,
which is how live media ship an empty overlay file.
"""

from __future__ import annotations

import dataclasses
import io
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from composer.images.sparse import data_ranges
from composer.run import ComposerError

SECTOR = 512
SNAP_MAGIC = 0x70416E53  # b"SnAp" read as a little-endian u32
DISK_VERSION = 1
DEFAULT_CHUNK_SECTORS = 8  # what dmsquash-live asks for ("P 8"): 4 KiB, the usual fs block
# The kernel rejects chunk_size << 9 beyond INT_MAX; anything that large is corruption here.
MAX_CHUNK_SECTORS = 1 << 21
HEADER = struct.Struct("<IIII")
SLOT = struct.Struct("<QQ")
HEADER_CHUNKS = 1  # chunks before metadata area 0
# How much of a fresh (magic 0) store must be zero: the header and area 0 of the
# default 4 KiB chunks.
FRESH_CHECK_BYTES = 2 * DEFAULT_CHUNK_SECTORS * SECTOR


class CowFormatError(ComposerError):
    """The file is not a usable dm-snapshot persistent store (the message says why)."""


@dataclasses.dataclass(frozen=True)
class CowHeader:
    magic: int
    valid: int
    version: int
    chunk_size: int  # in 512-byte sectors

    def pack(self) -> bytes:
        return HEADER.pack(self.magic, self.valid, self.version, self.chunk_size)

    @classmethod
    def unpack(cls, data: bytes) -> CowHeader:
        return cls(*HEADER.unpack_from(data))


@dataclasses.dataclass(frozen=True)
class CowException:
    old_chunk: int  # chunk of the origin this replaces
    new_chunk: int  # chunk of the store holding the data


@dataclasses.dataclass(frozen=True)
class CowUsage:
    """What `dmsetup status` prints for a snapshot: "<allocated>/<total> <metadata>" in sectors."""

    allocated_sectors: int
    total_sectors: int
    metadata_sectors: int

    def __str__(self) -> str:
        return f"{self.allocated_sectors}/{self.total_sectors} {self.metadata_sectors}"


def area_location(area: int, exceptions_per_area: int) -> int:
    return HEADER_CHUNKS + (exceptions_per_area + 1) * area


def _is_area_chunk(chunk: int, exceptions_per_area: int) -> bool:
    return chunk >= HEADER_CHUNKS and (chunk - HEADER_CHUNKS) % (exceptions_per_area + 1) == 0


def _skip_metadata(next_free: int, exceptions_per_area: int) -> int:
    # A data chunk is never allocated on top of the next metadata area.
    return next_free + 1 if _is_area_chunk(next_free, exceptions_per_area) else next_free


def check_chunk_sectors(chunk_sectors: int) -> None:
    if chunk_sectors <= 0 or chunk_sectors & (chunk_sectors - 1) or chunk_sectors > MAX_CHUNK_SECTORS:
        raise CowFormatError(
            f"invalid chunk size {chunk_sectors} sectors: must be a power of two between 1 and {MAX_CHUNK_SECTORS}"
        )


@dataclasses.dataclass
class CowStore:
    header: CowHeader | None  # None: all-zero header, a fresh store the kernel has not used yet
    exceptions: list[CowException]
    size: int  # bytes of the store file
    last_area: int = 0  # index of the area that ended the table (the kernel's current_area)

    @property
    def chunk_sectors(self) -> int:
        return self.header.chunk_size if self.header else DEFAULT_CHUNK_SECTORS

    @property
    def chunk_bytes(self) -> int:
        return self.chunk_sectors * SECTOR

    @property
    def exceptions_per_area(self) -> int:
        return self.chunk_bytes // SLOT.size

    @property
    def valid(self) -> bool:
        return self.header is None or self.header.valid != 0

    @property
    def next_free(self) -> int:
        """First chunk the kernel would allocate next (it starts after the header and area 0)."""
        nf = HEADER_CHUNKS + 1
        for e in self.exceptions:
            nf = max(nf, e.new_chunk + 1)
        return _skip_metadata(nf, self.exceptions_per_area)

    def usage(self) -> CowUsage:
        cs = self.chunk_sectors
        return CowUsage(self.next_free * cs, self.size // SECTOR, (self.last_area + 1 + HEADER_CHUNKS) * cs)

    def status(self) -> str:
        """The snapshot target's `dmsetup status` text."""
        return str(self.usage()) if self.valid else "Invalid"

    def iter_exceptions(self) -> Iterator[CowException]:
        return iter(self.exceptions)

    def data_bytes(self) -> int:
        return len(self.exceptions) * self.chunk_bytes

    def read_chunk(self, f: BinaryIO, exc: CowException) -> bytes:
        return _read_exact(f, exc.new_chunk * self.chunk_bytes, self.chunk_bytes, self.size, f"data chunk {exc.new_chunk}")

    @classmethod
    def read(cls, source: Path | str | BinaryIO, *, origin_size: int | None = None, require_valid: bool = True) -> CowStore:
        """Parse and check a store the way the kernel reads it, but refusing anything suspicious.

        origin_size: bytes of the origin device; exceptions beyond it are corruption.
        require_valid: an invalidated snapshot (overflowed or dropped) is an error, else
        it is returned without exceptions (its table cannot be trusted).
        """
        if isinstance(source, (str, os.PathLike)):
            try:
                with open(source, "rb") as f:
                    return cls._read(f, os.fstat(f.fileno()).st_size, origin_size, require_valid, str(source))
            except OSError as e:
                raise CowFormatError(f"cannot read COW store {source}: {e.strerror}") from None
        size = source.seek(0, io.SEEK_END)
        return cls._read(source, size, origin_size, require_valid, getattr(source, "name", "<stream>"))

    @classmethod
    def _read(cls, f: BinaryIO, size: int, origin_size: int | None, require_valid: bool, name: str) -> CowStore:
        try:
            return cls._parse(f, size, origin_size, require_valid)
        except CowFormatError as e:
            raise CowFormatError(f"{name}: {e}") from None

    @classmethod
    def _parse(cls, f: BinaryIO, size: int, origin_size: int | None, require_valid: bool) -> CowStore:
        if size < HEADER.size:
            raise CowFormatError(f"truncated: {size} bytes is too short for a dm-snapshot header")
        header = CowHeader.unpack(_read_exact(f, 0, HEADER.size, size, "header"))
        if header.magic == 0:
            # A fresh store is zeros where the kernel will write its header and first
            # table; anything else there (a filesystem image's superblock at byte 1024,
            # say) is not a store at all.
            head = _read_exact(f, 0, min(size, FRESH_CHECK_BYTES), size, "header")
            if head.count(0) != len(head):
                raise CowFormatError("not a dm-snapshot persistent store (no 'SnAp' magic, and not a fresh all-zero "
                                     "store either: another kind of file?)")
            return cls(None, [], size)
        if header.magic != SNAP_MAGIC:
            raise CowFormatError(f"not a dm-snapshot persistent store "
                                 f"(magic 0x{header.magic:08x}, expected 0x{SNAP_MAGIC:08x} 'SnAp')")
        if header.version != DISK_VERSION:
            raise CowFormatError(f"unsupported store version {header.version} (only {DISK_VERSION} exists)")
        check_chunk_sectors(header.chunk_size)
        cb = header.chunk_size * SECTOR
        if size < (HEADER_CHUNKS + 1) * cb:
            raise CowFormatError(f"truncated: {size} bytes cannot hold the header and first metadata area ({2 * cb} bytes)")
        if not header.valid:
            if require_valid:
                raise CowFormatError("the kernel marked this snapshot invalid (it overflowed or was dropped)"
                                     ": its contents cannot be trusted")
            return cls(header, [], size)
        epa = cb // SLOT.size
        origin_chunks = None if origin_size is None else -(-origin_size // cb)
        exceptions: list[CowException] = []
        seen_old: set[int] = set()
        seen_new: set[int] = set()
        area = 0
        while True:
            loc = area_location(area, epa)
            if (loc + 1) * cb > size:
                raise CowFormatError(
                    f"truncated: metadata area {area} (chunk {loc}) lies beyond the end of the file ({size} bytes)"
                )
            table = _read_exact(f, loc * cb, cb, size, f"metadata area {area}")
            for old, new in SLOT.iter_unpack(table):
                if new == 0:  # end of table: this area is not full
                    return cls(header, exceptions, size, area)
                where = f"exception {len(exceptions)} (area {area}: old_chunk {old}, new_chunk {new})"
                if _is_area_chunk(new, epa):
                    raise CowFormatError(f"{where}: data chunk points at a metadata area")
                if (new + 1) * cb > size:
                    raise CowFormatError(f"{where}: data chunk beyond the end of the file ({size} bytes)")
                if origin_chunks is not None and old >= origin_chunks:
                    raise CowFormatError(f"{where}: origin chunk beyond the origin's {origin_chunks} chunks")
                if old in seen_old:
                    raise CowFormatError(f"{where}: origin chunk {old} appears twice")
                if new in seen_new:
                    raise CowFormatError(f"{where}: data chunk {new} used twice")
                seen_old.add(old)
                seen_new.add(new)
                exceptions.append(CowException(old, new))
            area += 1  # a full area: the table goes on in the next one

    @classmethod
    def write(
        cls,
        path: Path,
        chunk_sectors: int,
        exceptions: Iterable[tuple[int, bytes]],
        *,
        size: int | None = None,
    ) -> CowStore:
        """Write a valid store holding `exceptions` (origin chunk, chunk data), in order.

        Data chunks are allocated as the kernel would (after the header and area 0,
        skipping later areas). The file is made with ftruncate: unwritten space and
        all-zero data chunks are holes. size: file size (at least what is needed;
        more leaves room for a kernel to add exceptions).
        """
        check_chunk_sectors(chunk_sectors)
        cb = chunk_sectors * SECTOR
        epa = cb // SLOT.size
        header = CowHeader(SNAP_MAGIC, 1, DISK_VERSION, chunk_sectors)
        written: list[CowException] = []
        seen: set[int] = set()
        slots: list[bytes] = []
        area = 0
        next_free = HEADER_CHUNKS + 1
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.pwrite(fd, header.pack(), 0)
            for old, data in exceptions:
                if len(data) != cb:
                    raise ValueError(f"chunk data for origin chunk {old} is {len(data)} bytes, not {cb}")
                if old < 0 or old in seen:
                    raise ValueError(f"origin chunk {old} is negative or given twice")
                seen.add(old)
                if data.count(0) != cb:  # zero chunks stay holes
                    os.pwrite(fd, data, next_free * cb)
                written.append(CowException(old, next_free))
                slots.append(SLOT.pack(old, next_free))
                next_free = _skip_metadata(next_free + 1, epa)
                if len(slots) == epa:
                    os.pwrite(fd, b"".join(slots), area_location(area, epa) * cb)
                    slots = []
                    area += 1
            if slots:
                os.pwrite(fd, b"".join(slots), area_location(area, epa) * cb)
            # The area that ends the table must exist (all zero) even when nothing is in it.
            needed = max(next_free, area_location(area, epa) + 1) * cb
            if size is not None and size < needed:
                raise ValueError(f"store size {size} is smaller than the {needed} bytes its exceptions need")
            os.ftruncate(fd, needed if size is None else size)
        finally:
            os.close(fd)
        return cls(header, written, needed if size is None else size, area)


def _read_exact(f: BinaryIO, offset: int, length: int, size: int, what: str) -> bytes:
    if offset + length > size:
        raise CowFormatError(f"truncated: {what} at byte {offset} runs past the end of the file ({size} bytes)")
    f.seek(offset)
    data = f.read(length)
    if len(data) != length:
        raise CowFormatError(f"truncated: short read of {what} at byte {offset}")
    return data


# --- user-space snapshot: compute and apply exceptions between plain image files ---

_BLOCK = 1 << 20


def _chunk_spans(ranges: Iterable[tuple[int, int]], cb: int) -> list[tuple[int, int]]:
    """Merge byte ranges into sorted, chunk-aligned [start, end) spans."""
    spans = sorted((s // cb * cb, -(-e // cb) * cb) for s, e in ranges if e > s)
    out: list[tuple[int, int]] = []
    for s, e in spans:
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _pread_full(fd: int, length: int, offset: int, file_size: int) -> bytes:
    """Read [offset, offset+length), zero-filled past the end of the file."""
    data = os.pread(fd, max(0, min(length, file_size - offset)), offset) if offset < file_size else b""
    return data + bytes(length - len(data))


def diff_chunks(origin: Path, target: Path, chunk_sectors: int) -> Iterator[tuple[int, bytes]]:
    """(chunk, data) for every chunk where `target` differs from `origin`.

    The snapshot presents the origin's size, so a target shorter than the origin is laid
    over the origin's start: its last partial chunk is completed with the origin's bytes.
    Only regions holding data in either file are read (holes on both sides are equal).
    """
    cb = chunk_sectors * SECTOR
    ofd = os.open(origin, os.O_RDONLY)
    tfd = os.open(target, os.O_RDONLY)
    try:
        osize, tsize = os.fstat(ofd).st_size, os.fstat(tfd).st_size
        if tsize > osize:
            raise ComposerError(f"{target} ({tsize} bytes) is larger than its origin {origin} ({osize} bytes)")
        ranges = [r for r in data_ranges(tfd, tsize)] + [(s, min(e, tsize)) for s, e in data_ranges(ofd, osize)]
        for start, end in _chunk_spans(ranges, cb):
            for pos in range(start, end, _BLOCK):
                n = min(_BLOCK, end - pos)
                old = _pread_full(ofd, n, pos, osize)
                new = _pread_full(tfd, n, pos, tsize)
                if pos + n > tsize:  # past the target's end the snapshot shows the origin
                    keep = max(0, tsize - pos)
                    new = new[:keep] + old[keep:]
                if old == new:
                    continue
                for off in range(0, n, cb):
                    if old[off : off + cb] != new[off : off + cb]:
                        yield (pos + off) // cb, new[off : off + cb]
    finally:
        os.close(ofd)
        os.close(tfd)


def apply_store(store: CowStore, cow: Path, dest: Path, *, size: int | None = None) -> int:
    """Write the store's chunks into `dest` (a copy of the origin), up to `size` bytes.

    Returns the number of chunks written. Chunks at or past `size` are skipped (a
    minimized image ends there); a chunk straddling it is cut.
    """
    cb = store.chunk_bytes
    written = 0
    with open(cow, "rb") as f:
        fd = os.open(dest, os.O_WRONLY)
        try:
            limit = os.fstat(fd).st_size if size is None else size
            for exc in store.iter_exceptions():
                pos = exc.old_chunk * cb
                if pos >= limit:
                    continue
                data = store.read_chunk(f, exc)[: limit - pos]
                view = memoryview(data)
                while view:
                    w = os.pwrite(fd, view, pos)
                    view = view[w:]
                    pos += w
                written += 1
        finally:
            os.close(fd)
    return written


def read_presented(store: CowStore, cow: Path, origin: Path, offset: int, length: int) -> bytes:
    """Bytes [offset, offset+length) of the device snapshot(origin, cow) would present."""
    cb = store.chunk_bytes
    by_old = {e.old_chunk: e for e in store.iter_exceptions()}
    out = bytearray()
    with open(cow, "rb") as f, open(origin, "rb") as o:
        osize = os.fstat(o.fileno()).st_size
        pos = offset
        while pos < offset + length:
            chunk, within = divmod(pos, cb)
            n = min(cb - within, offset + length - pos)
            exc = by_old.get(chunk)
            if exc is not None:
                out += store.read_chunk(f, exc)[within : within + n]
            else:
                out += _pread_full(o.fileno(), n, pos, osize)
            pos += n
    return bytes(out)
