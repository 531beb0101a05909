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
import errno
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
# Tables and chunks are read in pieces of at most this: a declared 1 GiB chunk must not
# cost 1 GiB of memory when the table it holds ends in its first slot.
READ_PIECE = 1 << 20


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


def max_store_chunks(origin_size: int, chunk_sectors: int) -> int:
    """Chunks a store over an origin of `origin_size` bytes can need: the header, one data
    chunk per origin chunk and the metadata areas between them, the kernel allocating in
    order. A table pointing further is not a store of this origin."""
    origin_chunks = -(-origin_size // (chunk_sectors * SECTOR))
    return HEADER_CHUNKS + 2 + origin_chunks + origin_chunks // (chunk_sectors * SECTOR // SLOT.size)


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

    def read_chunk(self, f: BinaryIO, exc: CowException, within: int = 0, length: int | None = None) -> bytes:
        """Bytes [within, within+length) of the exception's data chunk (all of it by default)."""
        n = self.chunk_bytes - within if length is None else length
        return _read_exact(f, exc.new_chunk * self.chunk_bytes + within, n, self.size, f"data chunk {exc.new_chunk}")

    @classmethod
    def read(
        cls,
        source: Path | str | BinaryIO,
        *,
        origin_size: int | None = None,
        require_valid: bool = True,
        follow_symlinks: bool = True,
        size: int | None = None,
    ) -> CowStore:
        """Parse and check a store the way the kernel reads it, but refusing anything suspicious.

        origin_size: bytes of the origin device; exceptions beyond it, chunks larger than it
        and data chunks further than a store over it can need are corruption.
        require_valid: an invalidated snapshot (overflowed or dropped) is an error, else
        it is returned without exceptions (its table cannot be trusted).
        follow_symlinks=False: a path that is a symbolic link is refused (a medium's overlay).
        size: of a stream whose end is not known yet (one decompressed as it is read).
        Only the header, the table up to its end and nothing of the data is read.
        """
        if isinstance(source, (str, os.PathLike)):
            try:
                fd = os.open(source, os.O_RDONLY | (0 if follow_symlinks else os.O_NOFOLLOW))
            except OSError as e:
                what = "is a symbolic link" if e.errno == errno.ELOOP else e.strerror
                raise CowFormatError(f"cannot read COW store {source}: {what}") from None
            with open(fd, "rb") as f:
                try:
                    return cls._read(f, os.fstat(fd).st_size, origin_size, require_valid, str(source))
                except OSError as e:
                    raise CowFormatError(f"cannot read COW store {source}: {e.strerror}") from None
        if size is None:
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
                raise CowFormatError(
                    "not a dm-snapshot persistent store (no 'SnAp' magic, and not a fresh all-zero "
                    "store either: another kind of file?)"
                )
            return cls(None, [], size)
        if header.magic != SNAP_MAGIC:
            raise CowFormatError(
                f"not a dm-snapshot persistent store (magic 0x{header.magic:08x}, expected 0x{SNAP_MAGIC:08x} 'SnAp')"
            )
        if header.version != DISK_VERSION:
            raise CowFormatError(f"unsupported store version {header.version} (only {DISK_VERSION} exists)")
        check_chunk_sectors(header.chunk_size)
        cb = header.chunk_size * SECTOR
        if origin_size is not None and cb > max(origin_size, SECTOR):
            raise CowFormatError(
                f"chunk size {header.chunk_size} sectors ({cb} bytes) is larger than the origin "
                f"({origin_size} bytes): not a store of this origin"
            )
        if size < (HEADER_CHUNKS + 1) * cb:
            raise CowFormatError(f"truncated: {size} bytes cannot hold the header and first metadata area ({2 * cb} bytes)")
        if not header.valid:
            if require_valid:
                raise CowFormatError(
                    "the kernel marked this snapshot invalid (it overflowed or was dropped): its contents cannot be trusted"
                )
            return cls(header, [], size)
        table = _Table(cb, size, origin_size)
        area = 0
        while True:
            loc = area_location(area, table.epa)
            if (loc + 1) * cb > size:
                raise CowFormatError(
                    f"truncated: metadata area {area} (chunk {loc}) lies beyond the end of the file ({size} bytes)"
                )
            for start in range(0, cb, READ_PIECE):
                piece = _read_exact(f, loc * cb + start, min(READ_PIECE, cb - start), size, f"metadata area {area}")
                if not table.add(piece, area):  # end of table: this area is not full
                    return cls(header, table.exceptions, size, area)
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
        # A new file, never one that is there (nor what a link there points at).
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
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


class _Table:
    """The exception table as it is read, slot by slot, with every slot checked."""

    def __init__(self, cb: int, size: int, origin_size: int | None) -> None:
        self.cb, self.size, self.epa = cb, size, cb // SLOT.size
        self.origin_chunks = None if origin_size is None else -(-origin_size // cb)
        # Past this a data chunk is not of this origin (and a decompressed delta is not read that far).
        self.max_chunks = None if origin_size is None else max_store_chunks(origin_size, cb // SECTOR)
        self.exceptions: list[CowException] = []
        self.seen_old: set[int] = set()
        self.seen_new: set[int] = set()

    def add(self, slots: bytes, area: int) -> bool:
        """Take a piece of an area's table; False once a slot ends the table."""
        for old, new in SLOT.iter_unpack(slots):
            if new == 0:
                return False
            where = f"exception {len(self.exceptions)} (area {area}: old_chunk {old}, new_chunk {new})"
            if _is_area_chunk(new, self.epa):
                raise CowFormatError(f"{where}: data chunk points at a metadata area")
            if self.max_chunks is not None and new >= self.max_chunks:
                raise CowFormatError(
                    f"{where}: data chunk beyond the {self.max_chunks} chunks a store over "
                    f"the origin's {self.origin_chunks} chunks can need"
                )
            if (new + 1) * self.cb > self.size:
                raise CowFormatError(f"{where}: data chunk beyond the end of the file ({self.size} bytes)")
            if self.origin_chunks is not None and old >= self.origin_chunks:
                raise CowFormatError(f"{where}: origin chunk beyond the origin's {self.origin_chunks} chunks")
            if old in self.seen_old:
                raise CowFormatError(f"{where}: origin chunk {old} appears twice")
            if new in self.seen_new:
                raise CowFormatError(f"{where}: data chunk {new} used twice")
            self.seen_old.add(old)
            self.seen_new.add(new)
            self.exceptions.append(CowException(old, new))
        return True


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
    with open(os.open(cow, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
        fd = os.open(dest, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            limit = os.fstat(fd).st_size if size is None else size
            for exc in store.iter_exceptions():
                pos = exc.old_chunk * cb
                if pos >= limit:
                    continue
                n = min(cb, limit - pos)
                for within in range(0, n, READ_PIECE):  # a big chunk in pieces, not all in memory
                    view = memoryview(store.read_chunk(f, exc, within, min(READ_PIECE, n - within)))
                    at = pos + within
                    while view:
                        w = os.pwrite(fd, view, at)
                        view = view[w:]
                        at += w
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
                out += store.read_chunk(f, exc, within, n)
            else:
                out += _pread_full(o.fileno(), n, pos, osize)
            pos += n
    return bytes(out)
