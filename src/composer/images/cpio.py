"""newc ("070701") cpio: a streaming writer and a reader for concatenated initrds.

The kernel unpacks initramfs from any concatenation of cpio archives, compressed or
not, each starting 4-byte aligned. We append an uncompressed archive (squashfs.img is
compressed already), so we write it ourselves: streaming a 60+ MiB file through
Python costs less than staging a directory for cpio(1), and the result is reproducible.

Format: 110-byte ASCII header ("070701" + 13 fields of 8 hex digits), the name with its
NUL, padding to 4 bytes, the data, padding to 4 bytes; ends with "TRAILER!!!".
"""

from __future__ import annotations

import dataclasses
import lzma
import stat
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, Protocol

MAGIC = b"070701"
HEADER_LEN = 110
TRAILER = "TRAILER!!!"
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class CpioEntry:
    """One archive member. `mode` includes the file type bits (stat.S_IFREG | 0o644).

    data: bytes or a Path to stream for regular files, None for directories;
    symlinks take their target from `target`.
    """

    name: str
    mode: int
    data: bytes | Path | None = None
    mtime: int = 0
    uid: int = 0
    gid: int = 0
    target: str | None = None

    @classmethod
    def directory(cls, name: str, perm: int = 0o755, *, mtime: int = 0, uid: int = 0, gid: int = 0) -> CpioEntry:
        return cls(name, stat.S_IFDIR | perm, mtime=mtime, uid=uid, gid=gid)

    @classmethod
    def file(cls, name: str, data: bytes | Path, perm: int = 0o644, *, mtime: int = 0, uid: int = 0, gid: int = 0) -> CpioEntry:
        return cls(name, stat.S_IFREG | perm, data, mtime=mtime, uid=uid, gid=gid)

    @classmethod
    def symlink(cls, name: str, target: str, *, mtime: int = 0, uid: int = 0, gid: int = 0) -> CpioEntry:
        return cls(name, stat.S_IFLNK | 0o777, target=target, mtime=mtime, uid=uid, gid=gid)


class ByteSink(Protocol):
    """Where an archive is written: a file, or a compressing stream (gzip, lzma, bz2) around one."""

    def write(self, data: bytes, /) -> int: ...


def _pad(n: int) -> int:
    return -n % 4


def _header(ino: int, mode: int, uid: int, gid: int, nlink: int, mtime: int, size: int, namesize: int) -> bytes:
    fields = (ino, mode, uid, gid, nlink, mtime, size, 0, 0, 0, 0, namesize, 0)
    return MAGIC + b"".join(b"%08X" % f for f in fields)


def _name_bytes(name: str) -> bytes:
    # Archive names are relative ("etc/cmdline"), as dracut and cpio(1) write them;
    # the kernel and cpio -i treat them relative to the extraction root either way.
    clean = name.lstrip("/") or "."
    return clean.encode() + b"\0"


def _write_member(out: ByteSink, ino: int, e: CpioEntry) -> int:
    """Write one member; return the bytes written."""
    kind = stat.S_IFMT(e.mode)
    path: Path | None = None
    payload = b""
    if kind == stat.S_IFDIR:
        size, nlink = 0, 2
    elif kind == stat.S_IFLNK:
        if e.target is None:
            raise ValueError(f"cpio: symlink {e.name} has no target")
        payload = e.target.encode()
        size, nlink = len(payload), 1
    elif kind == stat.S_IFREG:
        if isinstance(e.data, Path):
            path = e.data
            size = path.stat().st_size
        else:
            payload = e.data or b""
            size = len(payload)
        nlink = 1
    else:
        raise ValueError(f"cpio: unsupported file type {oct(kind)} for {e.name}")
    name = _name_bytes(e.name)
    head = _header(ino, e.mode, e.uid, e.gid, nlink, e.mtime, size, len(name)) + name
    head += b"\0" * _pad(len(head))
    out.write(head)
    if path is not None:
        written = 0
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                out.write(chunk)
                written += len(chunk)
        if written != size:
            raise OSError(f"cpio: {path} changed size while archiving ({size} -> {written} bytes)")
    else:
        out.write(payload)
    out.write(b"\0" * _pad(size))
    return len(head) + size + _pad(size)


def write_newc(out: ByteSink, entries: Iterable[CpioEntry]) -> int:
    """Write a complete newc archive (with trailer) to `out`; return its length.

    Assumes `out` is positioned 4-byte aligned, as the kernel requires for each archive.
    Every member gets its own inode number and nlink=1 (2 for directories), so the
    kernel never mistakes two members for hard links.
    """
    total = 0
    ino = 0
    for ino, e in enumerate(entries, start=1):
        total += _write_member(out, ino, e)
    trailer = TRAILER.encode() + b"\0"
    head = _header(0, 0, 0, 0, 1, 0, 0, len(trailer)) + trailer
    head += b"\0" * _pad(len(head))
    out.write(head)
    return total + len(head)


# --- reading -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CpioMember:
    name: str
    mode: int
    size: int
    mtime: int
    offset: int  # of the header in the file
    data_offset: int  # of the member's data in the file


@dataclasses.dataclass
class Segment:
    """One piece of a concatenated initrd: an uncompressed cpio archive or a compressed stream."""

    offset: int
    end: int
    kind: str  # "cpio", "gzip", "xz", "zstd", "unknown"
    members: list[CpioMember] = dataclasses.field(default_factory=list)


_COMPRESSED_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\x02\x21\x4c\x18": "lz4",  # legacy lz4, as the kernel and dracut use it
    b"BZh": "bzip2",
    b"\x89LZO": "lzo",
}


class CpioFormatError(ValueError):
    pass


def _compression_at(head: bytes) -> str | None:
    for magic, kind in _COMPRESSED_MAGIC.items():
        if head.startswith(magic):
            return kind
    return None


def _read_archive(f: BinaryIO, start: int) -> tuple[list[CpioMember], int]:
    """Parse one newc archive at `start` up to its trailer; return (members, end offset)."""
    members: list[CpioMember] = []
    pos = start
    while True:
        f.seek(pos)
        hdr = f.read(HEADER_LEN)
        if len(hdr) < HEADER_LEN or hdr[:6] not in (MAGIC, b"070702"):
            raise CpioFormatError(f"no cpio header at offset {pos}")
        try:
            fields = [int(hdr[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise CpioFormatError(f"corrupt cpio header at offset {pos}") from None
        mode, mtime, size, namesize = fields[1], fields[5], fields[6], fields[11]
        name = f.read(namesize).rstrip(b"\0").decode(errors="replace")
        # Padding is relative to the archive start, which the kernel wants 4-aligned anyway.
        data_offset = pos + HEADER_LEN + namesize
        data_offset += _pad(data_offset - start)
        end = data_offset + size
        end += _pad(end - start)
        if name == TRAILER:
            return members, end
        members.append(CpioMember(name, mode, size, mtime, pos, data_offset))
        pos = end


def _compressed_end(f: BinaryIO, start: int, kind: str) -> int | None:
    """Where a compressed stream starting at `start` ends, or None if we cannot tell."""
    f.seek(start)
    if kind == "zstd":
        return _zstd_frame_end(f, start)
    dec: zlib._Decompress | lzma.LZMADecompressor
    if kind == "gzip":
        dec = zlib.decompressobj(wbits=31)
    elif kind == "xz":
        dec = lzma.LZMADecompressor(lzma.FORMAT_XZ)
    else:
        return None  # lz4 legacy, bzip2, lzo: no end marker we can find cheaply
    consumed = 0
    while not dec.eof:
        chunk = f.read(_CHUNK)
        if not chunk:
            return None  # truncated stream
        dec.decompress(chunk)  # output discarded: we only need where the stream ends
        consumed += len(chunk)
    return start + consumed - len(dec.unused_data)


def _zstd_frame_end(f: BinaryIO, start: int) -> int | None:
    """Walk one zstd frame's block headers (RFC 8878) without decompressing."""
    head = f.read(14)
    if len(head) < 6:
        return None
    desc = head[4]
    fcs_flag, single, checksum, dict_flag = desc >> 6, (desc >> 5) & 1, (desc >> 2) & 1, desc & 3
    pos = start + 5 + (0 if single else 1)
    pos += (0, 1, 2, 4)[dict_flag]
    pos += (1 if single else 0, 2, 4, 8)[fcs_flag]
    while True:
        f.seek(pos)
        bh = f.read(3)
        if len(bh) < 3:
            return None
        value = int.from_bytes(bh, "little")
        last, btype, bsize = value & 1, (value >> 1) & 3, value >> 3
        if btype == 3:
            return None
        pos += 3 + (1 if btype == 1 else bsize)
        if last:
            return pos + (4 if checksum else 0)


def read_newc(path: Path, start: int = 0) -> list[Segment]:
    """Describe a (possibly concatenated) initrd: each cpio archive with its members,
    and each compressed stream by kind and extent (its contents are not listed).

    Zero padding between pieces is skipped as the kernel does. Reading stops at a
    compressed stream whose end cannot be found (lz4/bzip2/lzo) or at garbage.
    """
    segments: list[Segment] = []
    size = path.stat().st_size
    with path.open("rb") as f:
        pos = start
        while pos < size:
            f.seek(pos)
            head = f.read(4096)
            stripped = head.lstrip(b"\0")
            if not stripped:
                pos += len(head)
                continue
            pos += len(head) - len(stripped)
            if stripped.startswith(b"0707"):
                if pos % 4:
                    raise CpioFormatError(f"cpio archive at offset {pos} is not 4-byte aligned")
                members, end = _read_archive(f, pos)
                segments.append(Segment(pos, end, "cpio", members))
                pos = end
                continue
            kind = _compression_at(stripped)
            stream_end = _compressed_end(f, pos, kind) if kind else None
            segments.append(Segment(pos, stream_end if stream_end is not None else size, kind or "unknown"))
            if stream_end is None:
                break
            pos = stream_end
    return segments
