"""Make a `mkfs.btrfs --rootdir` image byte-reproducible by rewriting its metadata.

btrfs-progs (up to 6.19) has no SOURCE_DATE_EPOCH and no option for three things it
writes: the chunk-tree UUID (random, in every tree block header and device extent),
the top subvolume's UUID (random, in its root item and as a key of the UUID tree) and
times (each inode's ctime is the host's, which no system call can set; atimes change
as the tree is read; root items and the data-relocation tree's directory take the
clock). Fixed -U and --device-uuid cover the superblock. Here every tree block is
walked and those fields are set from the build's seed and epoch, then the block's
crc32c is recomputed. Inode numbers, generations and extent placement are already
deterministic from btrfs-progs 6.10.1 on (it numbers inodes itself, not from st_ino).
"""

from __future__ import annotations

import dataclasses
import os
import struct
import uuid
from collections.abc import Callable
from pathlib import Path

from composer.run import ComposerError

MiB = 1 << 20
SUPER_OFFSET = 0x10000
MAGIC = b"_BHRfS_M"
HEADER_SIZE = 101  # csum[32] fsid[16] bytenr flags chunk_tree_uuid[16] generation owner nritems(u32) level(u8)
ITEM_SIZE = 25  # disk_key (objectid u64, type u8, offset u64), data offset u32, data size u32
KEY_PTR_SIZE = 33  # disk_key, blockptr u64, generation u64
CHUNK_ITEM_SIZE = 48  # length owner stripe_len type io_align io_width sector_size num_stripes sub_stripes
STRIPE_SIZE = 32  # devid offset dev_uuid[16]

INODE_ITEM, XATTR_ITEM, ROOT_ITEM, DEV_EXTENT, CHUNK_ITEM, UUID_SUBVOL, UUID_RECEIVED = 1, 24, 132, 204, 228, 251, 252
CHUNK_TREE_UUID_AT = 64  # in a tree block header
INODE_TIMES_AT = 112  # atime, ctime, mtime, otime: btrfs_timespec (sec u64, nsec u32) each
ROOT_UUIDS_AT = 247  # uuid, parent_uuid, received_uuid
ROOT_TIMES_AT = 327  # ctime, otime, stime, rtime
ROOT_ITEM_V2_SIZE = 375  # a root item this long has UUIDs and times (older ones stop before)
DEV_EXTENT_UUID_AT = 32
DIR_ITEM_SIZE = 30  # location disk_key, transid u64, data_len u16, name_len u16, type u8
DATA, SYSTEM, METADATA = 0x1, 0x2, 0x4
SUPER_MIRRORS = (SUPER_OFFSET, 64 << 20, 256 << 30)  # physical; never wiped
# Profiles that spread one logical block over several devices' stripes: not rewritable here.
STRIPED = 0x08 | 0x40 | 0x80 | 0x100  # RAID0, RAID10, RAID5, RAID6


@dataclasses.dataclass
class Chunk:
    logical: int
    length: int
    physical: list[int]  # one offset per copy (DUP/RAID1 keep several)
    type: int


@dataclasses.dataclass
class Stats:
    blocks: int = 0
    inodes: int = 0
    wiped: int = 0  # bytes of stale tree blocks zeroed


def _crc32c_tables() -> list[list[int]]:
    byte = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
        byte.append(c)
    tables = [byte]
    for k in range(1, 4):
        tables.append([(tables[k - 1][i] >> 8) ^ byte[tables[k - 1][i] & 0xFF] for i in range(256)])
    return tables


_T0, _T1, _T2, _T3 = _crc32c_tables()


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC-32C (Castagnoli), the checksum of btrfs metadata; 4 bytes a step (slicing-by-4),
    as the standard library has no CRC-32C. len(data) must be a multiple of 4."""
    c = 0xFFFFFFFF
    for w in memoryview(data).cast("I"):
        c ^= w
        c = _T3[c & 0xFF] ^ _T2[(c >> 8) & 0xFF] ^ _T1[(c >> 16) & 0xFF] ^ _T0[c >> 24]
    return c ^ 0xFFFFFFFF


class _Image:
    def __init__(self, fd: int, name: str):
        self.fd, self.name = fd, name
        sb = os.pread(fd, 4096, SUPER_OFFSET)
        if sb[0x40:0x48] != MAGIC:
            raise ComposerError(f"rootfs: {name} has no btrfs superblock")
        self.super = sb
        (self.root, self.chunk_root, self.log_root) = struct.unpack_from("<3Q", sb, 0x50)
        self.nodesize = struct.unpack_from("<I", sb, 0x94)[0]
        csum_type = struct.unpack_from("<H", sb, 0xC4)[0]
        if csum_type != 0:
            raise ComposerError(f"rootfs: {name} uses checksum type {csum_type}, only crc32c is rewritten")
        if self.log_root:
            raise ComposerError(f"rootfs: {name} has a log tree; mkfs never writes one")
        self.chunks: list[Chunk] = []
        self.live: set[int] = set()  # logical addresses of the tree blocks in use
        size = struct.unpack_from("<I", sb, 0xA0)[0]
        self._add_chunks(sb[0x32B : 0x32B + size])

    def _add_chunks(self, array: bytes) -> None:
        """The superblock's sys_chunk_array: (disk_key, chunk item with its stripes) pairs."""
        pos = 0
        while pos < len(array):
            logical = struct.unpack_from("<Q", array, pos + 9)[0]
            pos += 17
            pos += self._add_chunk(logical, array, pos)

    def _add_chunk(self, logical: int, buf: bytes | bytearray, at: int) -> int:
        length, _, _, ctype = struct.unpack_from("<4Q", buf, at)
        stripes = struct.unpack_from("<H", buf, at + 44)[0]
        if ctype & STRIPED:
            raise ComposerError(f"rootfs: {self.name}: striped chunk profile 0x{ctype:x} is not supported")
        physical = [struct.unpack_from("<Q", buf, at + CHUNK_ITEM_SIZE + i * STRIPE_SIZE + 8)[0] for i in range(stripes)]
        if not any(c.logical == logical for c in self.chunks):
            self.chunks.append(Chunk(logical, length, physical, ctype))
        return CHUNK_ITEM_SIZE + stripes * STRIPE_SIZE

    def _map(self, logical: int) -> list[int]:
        for c in self.chunks:
            if c.logical <= logical < c.logical + c.length:
                return [p + logical - c.logical for p in c.physical]
        raise ComposerError(f"rootfs: {self.name}: tree block {logical} is in no chunk")

    def read(self, logical: int) -> bytearray:
        block = bytearray(os.pread(self.fd, self.nodesize, self._map(logical)[0]))
        # Cheaper than the checksum and as sure a sign that the block is where we think.
        if (
            len(block) != self.nodesize
            or struct.unpack_from("<Q", block, 48)[0] != logical
            or block[32:48] != self.super[0x20:0x30]
        ):
            raise ComposerError(f"rootfs: {self.name}: no tree block of this filesystem at {logical}")
        return block

    def write(self, logical: int, block: bytearray) -> None:
        struct.pack_into("<I", block, 0, crc32c(block[32:]))
        for physical in self._map(logical):
            os.pwrite(self.fd, block, physical)

    def walk(self, root: int, visit: Callable[[bytearray, bool], None]) -> int:
        """Call visit(block, is_root) on every tree block under root, then write the
        block back with its new checksum; return how many blocks there were."""
        todo, n = [root], 0
        while todo:
            bytenr = todo.pop()
            self.live.add(bytenr)
            block = self.read(bytenr)
            nritems, level = struct.unpack_from("<IB", block, 96)
            if level:
                todo.extend(struct.unpack_from("<Q", block, HEADER_SIZE + i * KEY_PTR_SIZE + 17)[0] for i in range(nritems))
            visit(block, bytenr == root)
            _zero_free_space(block, nritems, level)
            self.write(bytenr, block)
            n += 1
        return n

    def wipe_unused(self) -> int:
        """Zero what is not a live tree block in the metadata and system chunks: mkfs
        leaves there the blocks its earlier transactions replaced, with their random
        chunk-tree UUID and the host's times. Return how many bytes were zeroed."""
        zeroed = 0
        for c in self.chunks:
            if c.type & DATA or not c.type & (SYSTEM | METADATA):
                continue
            live = sorted(b - c.logical for b in self.live if c.logical <= b < c.logical + c.length)
            gaps, pos = [], 0
            for start in live:
                gaps.append((pos, start))
                pos = start + self.nodesize
            gaps.append((pos, c.length))
            for physical in c.physical:
                zeroed += sum(self._zero(physical + a, physical + b) for a, b in gaps if b > a)
        return zeroed

    def _zero(self, start: int, end: int) -> int:
        zeroed = 0
        for pos in range(start, end, MiB):
            size = min(MiB, end - pos)
            old = os.pread(self.fd, size, pos)
            if not old.strip(b"\0"):
                continue
            new = bytearray(len(old))
            for mirror in SUPER_MIRRORS:
                if pos < mirror + 4096 and mirror < pos + len(old):
                    lo, hi = max(mirror, pos) - pos, min(mirror + 4096, pos + len(old)) - pos
                    new[lo:hi] = old[lo:hi]
            os.pwrite(self.fd, new, pos)
            zeroed += size
        return zeroed


def items(block: bytearray) -> list[tuple[int, int, int, int, int]]:
    """A leaf's items: (objectid, type, offset, data position in block, data size)."""
    return [(o, t, off, HEADER_SIZE + d, n) for o, t, off, d, n in _heads(block, struct.unpack_from("<I", block, 96)[0])]


def _zero_free_space(block: bytearray, nritems: int, level: int) -> None:
    """mkfs leaves in a block's unused middle what items that moved left behind."""
    if level:
        start, end = HEADER_SIZE + nritems * KEY_PTR_SIZE, len(block)
    else:
        start = HEADER_SIZE + nritems * ITEM_SIZE
        end = min((HEADER_SIZE + d for *_, d, _ in _heads(block, nritems)), default=len(block))
    if start < end:
        block[start:end] = bytes(end - start)


def _heads(block: bytearray, nritems: int) -> list[tuple[int, int, int, int, int]]:
    return [struct.unpack_from("<QBQII", block, HEADER_SIZE + i * ITEM_SIZE) for i in range(nritems)]


def _clamp(block: bytearray, at: int, epoch: int, *, force: bool = False) -> None:
    """One btrfs_timespec at `at`: set to epoch (force) or to epoch if it is later."""
    sec, nsec = struct.unpack_from("<QI", block, at)
    if force or (sec, nsec) > (epoch, 0):
        struct.pack_into("<QI", block, at, epoch, 0)


class _Rewriter:
    def __init__(self, img: _Image, epoch: int, uuid_for: Callable[[str], uuid.UUID]):
        self.img, self.epoch, self.uuid_for = img, epoch, uuid_for
        self.chunk_uuid = uuid_for("rootfs-chunk-tree").bytes
        self.subvol_uuids: dict[bytes, bytes] = {}  # mkfs's random subvolume UUID -> ours
        self.roots: list[int] = []  # tree roots found in the root tree
        self.stats = Stats()

    def run(self) -> Stats:
        # The chunk tree first: its chunk items map where every other tree block is.
        self.stats.blocks += self.img.walk(self.img.chunk_root, self._chunk_block)
        # The root tree next: it lists the other trees and gives the subvolume UUIDs
        # that the UUID tree's keys are made of.
        self.stats.blocks += self.img.walk(self.img.root, self._block)
        for root in self.roots:
            self.stats.blocks += self.img.walk(root, self._block)
        self.stats.wiped = self.img.wipe_unused()
        return self.stats

    def _chunk_block(self, block: bytearray, is_root: bool) -> None:
        if block[100] == 0:
            for _, ktype, logical, at, _ in items(block):
                if ktype == CHUNK_ITEM:
                    self.img._add_chunk(logical, block, at)
        self._block(block, is_root)

    def _block(self, block: bytearray, is_root: bool) -> None:
        block[CHUNK_TREE_UUID_AT : CHUNK_TREE_UUID_AT + 16] = self.chunk_uuid
        if block[100] != 0:
            return
        uuid_keys = False
        for objectid, ktype, _, at, size in items(block):
            if ktype == INODE_ITEM:
                self._inode_times(block, at)
            elif ktype == ROOT_ITEM:
                self._root_item(block, objectid, at, size)
            elif ktype == XATTR_ITEM:
                self._xattr_transids(block, at, size)
            elif ktype == DEV_EXTENT:
                block[at + DEV_EXTENT_UUID_AT : at + DEV_EXTENT_UUID_AT + 16] = self.chunk_uuid
            elif ktype in (UUID_SUBVOL, UUID_RECEIVED):
                uuid_keys = True
        if uuid_keys:
            self._uuid_keys(block, is_root)

    def _inode_times(self, block: bytearray, at: int) -> None:
        # atime and ctime are the host's (ctime cannot be set, atime moves as the tree is
        # read): both become the epoch, as ext4's do; mtime and otime are clamped.
        for i in range(4):
            _clamp(block, at + INODE_TIMES_AT + 12 * i, self.epoch, force=i < 2)
        self.stats.inodes += 1

    @staticmethod
    def _xattr_transids(block: bytearray, at: int, size: int) -> None:
        # btrfs-progs never sets an xattr's transid (heap garbage, up to 6.19): give it
        # the leaf's generation, the transaction that wrote it, as the kernel would.
        generation = struct.unpack_from("<Q", block, 80)[0]
        end = at + size
        while at + DIR_ITEM_SIZE <= end:
            struct.pack_into("<Q", block, at + 17, generation)
            data_len, name_len = struct.unpack_from("<HH", block, at + 25)
            at += DIR_ITEM_SIZE + name_len + data_len

    def _root_item(self, block: bytearray, objectid: int, at: int, size: int) -> None:
        if objectid != 1:  # the root tree's own item (objectid 1) is never a ROOT_ITEM; be sure
            self.roots.append(struct.unpack_from("<Q", block, at + 176)[0])
        if size < ROOT_ITEM_V2_SIZE:
            return
        old = bytes(block[at + ROOT_UUIDS_AT : at + ROOT_UUIDS_AT + 16])
        if any(old):
            new = self.uuid_for(f"rootfs-subvol-{objectid}").bytes
            self.subvol_uuids[old] = new
            block[at + ROOT_UUIDS_AT : at + ROOT_UUIDS_AT + 16] = new
        for i in range(4):
            _clamp(block, at + ROOT_TIMES_AT + 12 * i, self.epoch)
            _clamp(block, at + INODE_TIMES_AT + 12 * i, self.epoch)

    def _uuid_keys(self, block: bytearray, is_root: bool) -> None:
        """The UUID tree's keys are the UUIDs themselves: rewrite them and sort the leaf
        again (the items' data stays where it is, only the item headers move)."""
        if not is_root:
            raise ComposerError(f"rootfs: {self.img.name}: the UUID tree has more than one block")
        heads = []
        for objectid, ktype, offset, data, size in _heads(block, struct.unpack_from("<I", block, 96)[0]):
            if ktype in (UUID_SUBVOL, UUID_RECEIVED):
                old = struct.pack("<QQ", objectid, offset)
                if old not in self.subvol_uuids:
                    raise ComposerError(f"rootfs: {self.img.name}: UUID tree names an unknown subvolume")
                objectid, offset = struct.unpack("<QQ", self.subvol_uuids[old])
            heads.append((objectid, ktype, offset, data, size))
        for i, head in enumerate(sorted(heads)):
            struct.pack_into("<QBQII", block, HEADER_SIZE + i * ITEM_SIZE, *head)


def normalize_btrfs(img: Path, epoch: int, uuid_for: Callable[[str], uuid.UUID]) -> Stats:
    """Rewrite img (made by mkfs.btrfs with fixed -U and --device-uuid) so that it depends
    only on the tree's contents, epoch and the UUIDs uuid_for(role) gives."""
    fd = os.open(img, os.O_RDWR | os.O_NOFOLLOW)
    try:
        stats = _Rewriter(_Image(fd, img.name), epoch, uuid_for).run()
        os.fsync(fd)
    except (struct.error, IndexError) as e:
        raise ComposerError(f"rootfs: {img.name}: unexpected btrfs metadata ({e})") from None
    finally:
        os.close(fd)
    return stats
