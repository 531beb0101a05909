"""The dm-snapshot persistent COW format, checked byte by byte against the kernel's layout."""

import io
import os
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from composer.images.sparse import allocated_size, copy_sparse
from composer.live.dmsnap import (
    CowFormatError,
    CowStore,
    apply_store,
    area_location,
    diff_chunks,
    read_presented,
)
from composer.run import ComposerError

CB = 4096  # 8 sectors


def chunk(byte: int, size: int = CB) -> bytes:
    return bytes([byte]) * size


def raw_store(header: tuple[int, int, int, int], areas: dict[int, bytes], chunks: int, cb: int = CB) -> bytes:
    """Build a store by hand from the kernel's definition, independent of our writer."""
    buf = bytearray(chunks * cb)
    buf[0:16] = struct.pack("<IIII", *header)
    for loc, table in areas.items():
        buf[loc * cb : loc * cb + len(table)] = table
    return bytes(buf)


def slots(*pairs: tuple[int, int]) -> bytes:
    return b"".join(struct.pack("<QQ", o, n) for o, n in pairs)


def test_exact_layout_of_header_and_first_area(tmp_path):
    p = tmp_path / "cow"
    CowStore.write(p, 8, [(5, chunk(0xAA)), (1, chunk(0xBB))])
    data = p.read_bytes()
    # chunk 0: magic "SnAp", valid 1, version 1, chunk_size 8 sectors; the rest zero
    assert data[0:16] == b"SnAp" + struct.pack("<III", 1, 1, 8)
    assert struct.unpack_from("<I", data, 0)[0] == 0x70416E53
    assert data[16:CB] == bytes(CB - 16)
    # chunk 1: area 0 = {old 5 -> new 2}, {old 1 -> new 3}, then a zero new_chunk ends it
    assert data[CB : CB + 32] == struct.pack("<QQQQ", 5, 2, 1, 3)
    assert data[CB + 32 : 2 * CB] == bytes(CB - 32)
    assert data[2 * CB : 3 * CB] == chunk(0xAA) and data[3 * CB : 4 * CB] == chunk(0xBB)
    assert len(data) == 4 * CB


def test_round_trip_and_reads_hand_built_store(tmp_path):
    rng = random.Random(1)
    excs = [(i * 7, rng.randbytes(CB)) for i in range(20)] + [(1000, bytes(CB))]
    p = tmp_path / "cow"
    CowStore.write(p, 8, excs)
    s = CowStore.read(p, origin_size=1001 * CB)
    assert [(e.old_chunk, e.new_chunk) for e in s.iter_exceptions()] == [(o, 2 + i) for i, (o, _) in enumerate(excs)]
    with open(p, "rb") as f:
        assert [s.read_chunk(f, e) for e in s.iter_exceptions()] == [d for _, d in excs]
    # The zero chunk is a hole: only header, area and 20 data chunks are allocated.
    assert allocated_size(p) <= 22 * CB
    # A store built by hand from the kernel's definition reads the same way.
    hand = raw_store((0x70416E53, 1, 1, 8), {1: slots((3, 2), (9, 3))}, 4)
    s2 = CowStore.read(io.BytesIO(hand))
    assert [(e.old_chunk, e.new_chunk) for e in s2.exceptions] == [(3, 2), (9, 3)]


def test_multiple_areas_skip_metadata_chunks(tmp_path):
    # 1-sector chunks: 512/16 = 32 exceptions per area; areas at chunks 1, 34, 67.
    p = tmp_path / "cow"
    n = 70
    CowStore.write(p, 1, [(i, chunk(i % 251 + 1, 512)) for i in range(n)])
    s = CowStore.read(p)
    news = [e.new_chunk for e in s.exceptions]
    assert area_location(1, 32) == 34 and area_location(2, 32) == 67
    assert 34 not in news and 67 not in news and len(set(news)) == n
    assert news[:32] == list(range(2, 34)) and news[32] == 35
    data = p.read_bytes()
    assert struct.unpack_from("<QQ", data, 34 * 512) == (32, 35)
    assert s.last_area == 2
    # dmsetup status: next_free * chunk / total sectors, (areas + header) * chunk
    assert s.status() == f"{max(news) + 1}/{len(data) // 512} 4"


@pytest.mark.parametrize("n", [32, 64])
def test_exactly_full_areas_still_end_in_an_empty_area(tmp_path, n):
    p = tmp_path / "cow"
    CowStore.write(p, 1, [(i, chunk(1, 512)) for i in range(n)])
    s = CowStore.read(p)
    assert len(s.exceptions) == n and s.last_area == n // 32
    assert os.path.getsize(p) >= (area_location(n // 32, 32) + 1) * 512


def test_fresh_zero_store_status_like_the_kernel(tmp_path):
    p = tmp_path / "overlay"
    p.write_bytes(b"")
    os.truncate(p, 64 << 20)
    s = CowStore.read(p)
    assert s.header is None and s.valid and not s.exceptions
    # The kernel initialises it with next_free = 2 (header + area 0), chunk 8 from the table.
    assert s.status() == f"16/{(64 << 20) // 512} 16"


def test_empty_written_store_keeps_its_size_and_is_sparse(tmp_path):
    p = tmp_path / "cow"
    CowStore.write(p, 8, [], size=32 << 20)
    s = CowStore.read(p)
    assert s.exceptions == [] and s.header is not None and os.path.getsize(p) == 32 << 20
    assert allocated_size(p) <= 2 * CB
    assert s.status() == f"16/{(32 << 20) // 512} 16"


GOOD = (0x70416E53, 1, 1, 8)


@pytest.mark.parametrize(
    "data, origin_size, message",
    [
        (b"", None, "too short"),
        (b"SnAp", None, "too short"),
        (raw_store((0x12345678, 1, 1, 8), {}, 2), None, "magic 0x12345678"),
        (raw_store((0x70416E53, 1, 2, 8), {}, 2), None, "version 2"),
        (raw_store((0x70416E53, 1, 1, 0), {}, 2), None, "chunk size 0"),
        (raw_store((0x70416E53, 1, 1, 12), {}, 2), None, "power of two"),
        (raw_store((0x70416E53, 1, 1, 1 << 30), {}, 1), None, "chunk size"),
        (raw_store(GOOD, {}, 1), None, "truncated"),
        (raw_store(GOOD, {1: slots((3, 2))}, 2), None, "beyond the end"),  # data chunk missing
        (raw_store(GOOD, {1: slots((3, 2), (3, 3))}, 4), None, "appears twice"),
        (raw_store(GOOD, {1: slots((3, 2), (4, 2))}, 4), None, "used twice"),
        (raw_store(GOOD, {1: slots((3, 1))}, 4), None, "metadata area"),
        (raw_store(GOOD, {1: slots((3, 999))}, 4), None, "beyond the end"),
        (raw_store(GOOD, {1: slots((50, 2))}, 4), 10 * CB, "beyond the origin"),
        (raw_store((0x70416E53, 0, 1, 8), {}, 2), None, "marked this snapshot invalid"),
    ],
)
def test_corrupt_stores_give_clear_errors(tmp_path, data, origin_size, message):
    with pytest.raises(CowFormatError, match=message) as e:
        CowStore.read(io.BytesIO(data), origin_size=origin_size)
    assert isinstance(e.value, ComposerError)
    p = tmp_path / "cow"
    p.write_bytes(data)
    before = p.read_bytes()
    with pytest.raises(CowFormatError, match=str(p)):  # the message names the file
        CowStore.read(p, origin_size=origin_size)
    assert p.read_bytes() == before


def test_invalid_snapshot_is_reported_not_trusted():
    s = CowStore.read(io.BytesIO(raw_store((0x70416E53, 0, 1, 8), {1: slots((3, 2))}, 3)), require_valid=False)
    assert not s.valid and s.exceptions == [] and s.status() == "Invalid"


def test_full_area_whose_successor_is_missing_is_truncation():
    # 1-sector chunks: 32 slots fill area 0, so the kernel reads area 1 at chunk 34.
    table = slots(*[(i, 2 + i) for i in range(32)])
    data = raw_store((0x70416E53, 1, 1, 1), {1: table}, 34, cb=512)
    with pytest.raises(CowFormatError, match="metadata area 1"):
        CowStore.read(io.BytesIO(data))


def test_slots_after_the_terminator_are_ignored_like_the_kernel():
    data = raw_store(GOOD, {1: slots((3, 2), (0, 0), (7, 12345))}, 3)
    assert [(e.old_chunk, e.new_chunk) for e in CowStore.read(io.BytesIO(data)).exceptions] == [(3, 2)]


def _valid_small_store() -> bytes:
    buf = io.BytesIO()
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "cow")
        CowStore.write(p, 1, [(i * 3, bytes([i + 1]) * 512) for i in range(40)])  # two areas
        with open(p, "rb") as f:
            buf.write(f.read())
    return buf.getvalue()


VALID = _valid_small_store()


def _read_only_format_errors(data: bytes, origin_size: int | None) -> None:
    try:
        CowStore.read(io.BytesIO(data), origin_size=origin_size)
    except CowFormatError:
        pass


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096), st.none() | st.integers(min_value=0, max_value=1 << 40))
def test_fuzz_random_bytes(data, origin_size):
    _read_only_format_errors(data, origin_size)
    # With a real magic in front, the parser gets further.
    _read_only_format_errors(struct.pack("<I", 0x70416E53) + data, origin_size)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(st.integers(min_value=0, max_value=len(VALID) - 1), st.integers(0, 255)), max_size=12),
    st.integers(min_value=0, max_value=len(VALID)),
    st.none() | st.integers(min_value=0, max_value=200 * 512),
)
def test_fuzz_mutated_store(mutations, cut, origin_size):
    data = bytearray(VALID)
    for pos, val in mutations:
        data[pos] = val
    _read_only_format_errors(bytes(data[:cut]), origin_size)
    _read_only_format_errors(bytes(data), origin_size)


def test_diff_and_apply_round_trip(tmp_path):
    rng = random.Random(7)
    origin = tmp_path / "origin"
    with open(origin, "wb") as f:
        f.truncate(1 << 20)
        for off in (0, 300_000, 900_000):
            f.seek(off)
            f.write(rng.randbytes(50_000))
    target = tmp_path / "target"
    copy_sparse(origin, target)
    with open(target, "r+b") as f:
        for off in (10, 310_000, 600_000, 1_000_000):
            f.seek(off)
            f.write(rng.randbytes(5000))
    for sectors in (1, 8, 32):
        excs = list(diff_chunks(origin, target, sectors))
        cb = sectors * 512
        assert excs and all(len(d) == cb for _, d in excs)
        cow = tmp_path / f"cow{sectors}"
        store = CowStore.write(cow, sectors, excs)
        out = tmp_path / f"out{sectors}"
        copy_sparse(origin, out)
        assert apply_store(CowStore.read(cow, origin_size=1 << 20), cow, out) == len(excs)
        assert out.read_bytes() == target.read_bytes()
        assert read_presented(store, cow, origin, 309_000, 10_000) == target.read_bytes()[309_000:319_000]
