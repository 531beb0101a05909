import os
from pathlib import Path

import pytest

from composer.images.sparse import (
    allocated_size,
    apparent_size,
    copy_sparse,
    create_sparse,
    data_ranges,
)

MiB = 1 << 20


def _holes_supported(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    create_sparse(probe, 64 * MiB)
    ok = allocated_size(probe) < MiB
    probe.unlink()
    return ok


def test_create_sparse_allocates_nothing(tmp_path: Path) -> None:
    p = tmp_path / "img"
    create_sparse(p, 100 * MiB)
    assert apparent_size(p) == 100 * MiB
    if _holes_supported(tmp_path):
        assert allocated_size(p) < MiB
    # replaces an existing file
    p.write_bytes(b"x" * 10)
    create_sparse(p, 5)
    assert p.read_bytes() == b"\0" * 5


def test_create_sparse_rejects_negative(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        create_sparse(tmp_path / "x", -1)


def _make_patchy(path: Path) -> dict[int, bytes]:
    """A 64 MiB sparse file with data at a few places, including the very end."""
    create_sparse(path, 64 * MiB)
    chunks = {0: b"head" * 1000, 10 * MiB + 123: os.urandom(3 * MiB), 64 * MiB - 7: b"tail!!!"}
    with path.open("r+b") as f:
        for off, data in chunks.items():
            f.seek(off)
            f.write(data)
    return chunks


def test_copy_sparse_preserves_data_and_holes(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.img", tmp_path / "dst.img"
    _make_patchy(src)
    copy_sparse(src, dst)
    assert dst.read_bytes() == src.read_bytes()
    assert apparent_size(dst) == 64 * MiB
    if _holes_supported(tmp_path):
        assert allocated_size(dst) < 8 * MiB
        with dst.open("rb") as f:
            assert len(data_ranges(f.fileno(), apparent_size(dst))) >= 2
    assert not (tmp_path / "dst.img.tmp").exists()


def test_copy_sparse_trailing_hole_and_empty(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    create_sparse(src, 10 * MiB)
    with src.open("r+b") as f:
        f.write(b"abc")
    copy_sparse(src, dst)
    assert apparent_size(dst) == 10 * MiB
    assert dst.read_bytes()[:4] == b"abc\0"
    empty, empty2 = tmp_path / "empty", tmp_path / "empty2"
    empty.touch()
    copy_sparse(empty, empty2)
    assert empty2.read_bytes() == b""


def test_copy_sparse_overwrites_and_keeps_mode(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"new content")
    src.chmod(0o600)
    dst.write_bytes(b"old content that is longer")
    copy_sparse(src, dst)
    assert dst.read_bytes() == b"new content"
    assert dst.stat().st_mode & 0o777 == 0o600
