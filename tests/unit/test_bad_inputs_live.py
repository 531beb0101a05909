"""The bad-input catalogue for the LiveOS tools (issue 20): links planted inside a medium
or at an output, and inputs whose declared sizes nothing can justify (gzip bombs, huge
chunks, tables pointing far past the origin).

The cases run as test_bad_inputs.py's do (run_case: the real command line in a
subprocess, one error line, no traceback, nothing left behind); each also leaves the
host directory the planted links point at exactly as it was. Then a hypothesis fuzz of
COW stores with random declared sizes: `delta apply` never decompresses more than a
store over its origin can need, whatever follows the store in the gzip stream, and
`overlay status` never reads more than a few MiB of a store however large its chunks.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from composer.live.delta import apply_delta
from composer.live.dmsnap import MAX_CHUNK_SECTORS, SNAP_MAGIC, max_store_chunks
from composer.live.overlay import overlay_status
from composer.run import ComposerError
from tests.unit.test_bad_inputs import Case, inputs, request_cleanup, run_case  # noqa: F401 - fixtures

MiB = 1 << 20
L = "{i}/live"
HOST = "{i}/live/host"

CASES = [
    # Links inside the medium: never followed, refused before any work
    Case(
        "overlay-merge-upper-links-to-a-host-dir",
        ("overlay", "merge", f"{L}/upper-link"),
        f"{L}/upper-link/LiveOS/overlay-LIVE-1/upper is a symbolic link (to {HOST}): composer never follows a link",
    ),
    Case(
        "overlay-merge-work-links-to-a-host-dir",
        ("overlay", "merge", f"{L}/work-link"),
        f"{L}/work-link/LiveOS/overlay-LIVE-1/work is a symbolic link (to {HOST})",
    ),
    Case("overlay-merge-dry-run-work-link", ("overlay", "merge", "--dry-run", f"{L}/work-link"), "work is a symbolic link"),
    Case(
        "overlay-status-upper-links-to-a-host-dir",
        ("overlay", "status", f"{L}/upper-link"),
        "overlay-LIVE-1/upper is a symbolic link",
    ),
    Case(
        "overlay-status-dracut-overlayfs-link",
        ("overlay", "status", f"{L}/dracut-link"),
        "overlay-LIVE-1/overlayfs is a symbolic link",
    ),
    Case(
        "overlay-merge-dracut-ovlwork-link",
        ("overlay", "merge", f"{L}/ovlwork-link"),
        "overlay-LIVE-1/ovlwork is a symbolic link",
    ),
    Case(
        "overlay-merge-work-is-a-file",
        ("overlay", "merge", f"{L}/work-file"),
        "overlay-LIVE-1/work: not a directory; an overlay's work is a directory (or absent)",
    ),
    Case(
        "overlay-merge-liveos-is-a-link",
        ("overlay", "merge", f"{L}/liveos-link"),
        f"{L}/liveos-link/LiveOS is a symbolic link (to {L}/upper-link/LiveOS)",
    ),
    Case(
        "overlay-status-rootfs-img-is-a-link",
        ("overlay", "status", f"{L}/image-link"),
        f"{L}/image-link/LiveOS/rootfs.img is a symbolic link (to {{i}}/victim.img)",
    ),
    # Outputs that are links: never written through
    Case(
        "delta-create-output-is-a-link",
        ("delta", "create", "{i}/victim.img", "-o", f"{L}/out-link"),
        f"delta: -o {L}/out-link is a symbolic link (to {L}/victim-file): composer never writes through a link",
    ),
    Case(
        "delta-apply-output-is-a-link",
        ("delta", "apply", "{i}/victim.img", f"{L}/osmin.img.gz", "-o", f"{L}/out-link"),
        f"delta: -o {L}/out-link is a symbolic link",
    ),
    Case(
        "delta-apply-output-is-a-dangling-link",
        ("delta", "apply", "{i}/victim.img", f"{L}/osmin.img.gz", "-o", f"{L}/dangling"),
        f"delta: -o {L}/dangling is a symbolic link",
    ),
    Case(
        "sparsify-image-is-a-link",
        ("sparsify", f"{L}/img-link"),
        f"sparsify: {L}/img-link is a symbolic link (to {L}/victim-file): composer never writes through a link",
    ),
    # Declared sizes bounded by the input, the origin and dm-snapshot
    Case(
        "delta-apply-zeros-bomb",
        ("delta", "apply", "{i}/victim.img", f"{L}/zeros-bomb.gz", "-o", "{t}/min.img"),
        f"delta: {L}/zeros-bomb.gz: not a delta: its header is all zeros",
    ),
    Case(
        "delta-apply-chunks-larger-than-the-origin",
        ("delta", "apply", "{i}/victim.img", f"{L}/bigchunk.gz", "-o", "{t}/min.img"),
        f"delta: {L}/bigchunk.gz: chunk size 2097152 sectors (1073741824 bytes) is larger than the origin (4194304 bytes)",
    ),
    Case(
        "delta-apply-table-points-far-past-the-origin",
        ("delta", "apply", "{i}/victim.img", f"{L}/far.gz", "-o", "{t}/min.img"),
        f"delta: {L}/far.gz: exception 0 (area 0: old_chunk 3, new_chunk 10000000): data chunk beyond the 1031 chunks",
    ),
    Case(
        "delta-apply-table-lists-missing-chunks",
        ("delta", "apply", "{i}/victim.img", f"{L}/short.gz", "-o", "{t}/m.img"),
        f"delta: {L}/short.gz: truncated: its table lists data chunks up to byte 1028096, it holds 8192 bytes",
    ),
    Case(
        "delta-apply-corrupt-gzip-bomb",
        ("delta", "apply", "{i}/victim.img", f"{L}/corrupt.gz", "-o", "{t}/min.img"),
        f"delta: cannot decompress {L}/corrupt.gz",
    ),
    Case(
        "delta-create-chunk-larger-than-the-origin",
        ("delta", "create", "{i}/victim.img", "-o", "{t}/o.gz", "--chunk-size", "8M"),
        "--chunk-size 16384 sectors: larger than the origin {i}/victim.img (4194304 bytes)",
    ),
    Case(
        "overlay-status-1gib-chunks-in-4kib",
        ("overlay", "status", f"{L}/bigchunk-small"),
        "overlay-LIVE-1: truncated: 4096 bytes cannot hold the header and first metadata area (2147483648 bytes)",
    ),
    Case(
        "overlay-merge-1gib-chunks-over-4mib-origin",
        ("overlay", "merge", "--dry-run", f"{L}/bigchunk-sparse"),
        "overlay-LIVE-1: chunk size 2097152 sectors (1073741824 bytes) is larger than the origin (4194304 bytes)",
    ),
]


def _gzip_then_zeros(data: bytes, zeros: int) -> bytes:
    """One gzip member: `data`, then `zeros` zero bytes (a thousandth of that compressed)."""
    co = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(MiB)
    return co.compress(data) + b"".join(co.compress(block) for _ in range(zeros // MiB)) + co.flush()


def _header(chunk_sectors: int) -> bytes:
    return struct.pack("<IIII", SNAP_MAGIC, 1, 1, chunk_sectors)


def _medium(d: Path, rootfs: Path) -> Path:
    (d / "LiveOS").mkdir(parents=True)
    shutil.copy(rootfs, d / "LiveOS" / "rootfs.img")
    return d / "LiveOS" / "overlay-LIVE-1"


def _planted_media(d: Path, victim_img: Path) -> None:
    """Media whose overlay halves, LiveOS/ or image are links into the host directory."""
    for name, links in [
        ("upper-link", {"upper": "host"}),
        ("work-link", {"work": "host"}),
        ("dracut-link", {"overlayfs": "host"}),
        ("ovlwork-link", {"ovlwork": "host"}),
    ]:
        ov = _medium(d / name, victim_img)
        ov.mkdir()
        dracut = "overlayfs" in links or "ovlwork" in links
        for half in ("overlayfs", "ovlwork") if dracut else ("upper", "work"):
            if half in links:
                (ov / half).symlink_to(d / links[half])
            else:
                (ov / half).mkdir()
                (ov / half / "etc").mkdir()  # something to merge
    ov = _medium(d / "work-file", victim_img)
    (ov / "upper" / "etc").mkdir(parents=True)
    (ov / "work").write_text("a file\n")
    (d / "liveos-link").mkdir()
    (d / "liveos-link" / "LiveOS").symlink_to(d / "upper-link" / "LiveOS")
    (d / "image-link" / "LiveOS").mkdir(parents=True)
    (d / "image-link" / "LiveOS" / "rootfs.img").symlink_to(victim_img)
    (d / "image-link" / "LiveOS" / "overlay-LIVE-1").write_bytes(bytes(8192))


def _size_bombs(d: Path, victim_img: Path) -> None:
    """Inputs whose declared sizes only the origin and the file can bound."""
    (d / "zeros-bomb.gz").write_bytes(_gzip_then_zeros(b"", 256 * MiB))
    (d / "bigchunk.gz").write_bytes(_gzip_then_zeros(_header(MAX_CHUNK_SECTORS), 64 * MiB))
    area0 = struct.pack("<QQ", 3, 10**7).ljust(4096, b"\0")
    (d / "far.gz").write_bytes(_gzip_then_zeros(_header(8).ljust(4096, b"\0") + area0, 64 * MiB))
    (d / "short.gz").write_bytes(gzip.compress(_header(8).ljust(4096, b"\0") + struct.pack("<QQ", 3, 250).ljust(4096, b"\0")))
    (d / "corrupt.gz").write_bytes(gzip.compress(b"")[:10] + b"\xff" * 64)  # a gzip header, then deflate block type 3
    subprocess.run(
        [*_composer(), "delta", "create", str(victim_img), "-o", str(d / "osmin.img.gz")], check=True, capture_output=True
    )
    with open(_medium(d / "bigchunk-small", victim_img), "wb") as f:
        f.write(_header(MAX_CHUNK_SECTORS).ljust(4096, b"\0"))
    with open(_medium(d / "bigchunk-sparse", victim_img), "wb") as f:
        f.write(_header(MAX_CHUNK_SECTORS))
        f.truncate(2 << 30)


def _composer() -> list[str]:
    import sys

    return [sys.executable, "-m", "composer"]


@pytest.fixture(scope="module")
def live_inputs(inputs: Path) -> Path:  # noqa: F811 - the fixture imported above
    d = inputs / "live"
    (d / "host" / "sub").mkdir(parents=True)
    (d / "host" / "precious").write_text("keep me\n")
    (d / "host" / "sub" / "secret").write_text("not for any image\n")
    (d / "victim-file").write_text("root's file\n")
    (d / "out-link").symlink_to(d / "victim-file")
    (d / "img-link").symlink_to(d / "victim-file")
    (d / "dangling").symlink_to(d / "nowhere" / "min.img")
    _planted_media(d, inputs / "victim.img")
    _size_bombs(d, inputs / "victim.img")
    return d


def _contents(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): p.read_text() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_live_input(
    case: Case,
    live_inputs: Path,
    inputs: Path,  # noqa: F811 (the catalogue's fixture, imported)
    tmp_path: Path,
    request_cleanup: list[Path],  # noqa: F811
) -> None:
    before = _contents(live_inputs / "host"), (live_inputs / "victim-file").read_text()
    run_case(case, inputs, tmp_path, request_cleanup)
    assert (_contents(live_inputs / "host"), (live_inputs / "victim-file").read_text()) == before


def test_catalogue_ids_are_unique() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 20


# --------------------------------------------------------------------------- fuzz

SCALE = float(os.environ.get("COMPOSER_FUZZ_EXAMPLES", "1"))
ZEROS_MEMBER = gzip.compress(bytes(64 * MiB), 1)  # a second gzip member: read on only if nothing stops it


def _io(field: str) -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith(f"{field}:")).split()[1])


SLOTS = st.lists(
    st.tuples(st.integers(0, 2**64 - 1) | st.integers(0, 2000), st.integers(0, 2**64 - 1) | st.integers(0, 2000)), max_size=40
)
CHUNKS = st.sampled_from([1 << k for k in range(22)]) | st.integers(0, 2**32 - 1)


@settings(
    max_examples=max(1, int(40 * SCALE)),
    deadline=None,
    database=None,
    derandomize=os.environ.get("COMPOSER_FUZZ_RANDOM") != "1",
    suppress_health_check=list(HealthCheck),
)
@given(chunk_sectors=CHUNKS, slots=SLOTS, valid=st.sampled_from([0, 1]))
def test_fuzz_declared_sizes_are_bounded(
    live_inputs: Path, tmp_path_factory, chunk_sectors: int, slots: list[tuple[int, int]], valid: int
) -> None:
    """A store with random chunk size and table, then 64 MiB of zeros: `delta apply` writes at most
    what a store over the 4 MiB origin can need (plus the output), `overlay status` of it as a
    2 GiB sparse overlay reads at most a few MiB; every failure is a ComposerError."""
    t = tmp_path_factory.mktemp("fuzz-live")
    origin = live_inputs.parent / "victim.img"
    cb = max(512, min(chunk_sectors, MAX_CHUNK_SECTORS) * 512)
    table = b"".join(struct.pack("<QQ", old, new) for old, new in slots)
    store = struct.pack("<IIII", SNAP_MAGIC, valid, 1, chunk_sectors).ljust(min(cb, 64 * 1024), b"\0") + table
    delta = t / "delta.gz"
    delta.write_bytes(gzip.compress(store, 1) + ZEROS_MEMBER)
    bound = max_store_chunks(origin.stat().st_size, 8) * 4096 + 2 * origin.stat().st_size + MiB
    if 0 < chunk_sectors <= MAX_CHUNK_SECTORS and chunk_sectors * 512 <= origin.stat().st_size:
        bound += max_store_chunks(origin.stat().st_size, chunk_sectors) * cb
    w0 = _io("wchar")
    try:
        apply_delta(origin, delta, t / "min.img", fsck=False)
    except ComposerError:
        pass
    assert _io("wchar") - w0 < bound
    media = t / "media"
    ov = _medium(media, origin)
    with open(ov, "wb") as f:
        f.write(store)
        f.truncate(2 << 30)
    r0 = _io("rchar")
    try:
        overlay_status(media)
    except ComposerError:
        pass
    assert _io("rchar") - r0 < 8 * MiB
    shutil.rmtree(t)
