import gzip
import io
import lzma
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from composer.images.cpio import CpioEntry, CpioFormatError, read_newc, write_newc

needs_cpio = pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio(1) not installed")


def _entries(tmp_path: Path) -> list[CpioEntry]:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * (1 << 20) + 5))  # > one write chunk, odd length
    return [
        CpioEntry.directory("etc"),
        CpioEntry.directory("/etc/sub.d", 0o700, mtime=1234567),
        CpioEntry.file("/etc/cmdline", b"root=live:/squashfs.img rd.live.image\n"),
        CpioEntry.file("etc/sub.d/odd-name", b"abc", 0o600),  # odd name and data lengths
        CpioEntry.file("empty", b""),
        CpioEntry.file("squashfs.img", big),
        CpioEntry.symlink("etc/link", "cmdline"),
        CpioEntry.file("x", b"12345", 0o755),
    ]


def _write(tmp_path: Path, entries: list[CpioEntry], name: str = "a.cpio") -> Path:
    out = tmp_path / name
    with out.open("wb") as f:
        n = write_newc(f, entries)
    assert n == out.stat().st_size
    assert n % 4 == 0
    return out


def test_header_layout() -> None:
    buf = io.BytesIO()
    write_newc(buf, [CpioEntry.file("ab", b"xyz", mtime=16)])
    data = buf.getvalue()
    assert data[:6] == b"070701"
    # name "ab\0" (3 bytes) after the 110-byte header: padded to 116, data, pad to 120
    assert data[110:113] == b"ab\0"
    assert data[113:116] == b"\0\0\0"
    assert data[116:119] == b"xyz"
    assert data[120:126] == b"070701"
    assert b"TRAILER!!!\0" in data
    fields = [int(data[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
    assert fields[1] == stat.S_IFREG | 0o644 and fields[4] == 1 and fields[5] == 16
    assert fields[6] == 3 and fields[11] == 3


def test_read_back_with_read_newc(tmp_path: Path) -> None:
    entries = _entries(tmp_path)
    out = _write(tmp_path, entries)
    (seg,) = read_newc(out)
    assert seg.kind == "cpio" and seg.offset == 0 and seg.end == out.stat().st_size
    names = [m.name for m in seg.members]
    assert names == ["etc", "etc/sub.d", "etc/cmdline", "etc/sub.d/odd-name", "empty", "squashfs.img", "etc/link", "x"]
    raw = out.read_bytes()
    by_name = {m.name: m for m in seg.members}
    sq = by_name["squashfs.img"]
    assert raw[sq.data_offset : sq.data_offset + sq.size] == (tmp_path / "big.bin").read_bytes()
    assert sq.data_offset % 4 == 0 and sq.offset % 4 == 0
    assert by_name["etc/sub.d"].mtime == 1234567 and stat.S_ISDIR(by_name["etc/sub.d"].mode)
    link = by_name["etc/link"]
    assert stat.S_ISLNK(link.mode) and raw[link.data_offset : link.data_offset + link.size] == b"cmdline"


@needs_cpio
def test_real_cpio_lists_and_extracts(tmp_path: Path) -> None:
    entries = _entries(tmp_path)
    out = _write(tmp_path, entries)
    listing = subprocess.run(["cpio", "-t", "--quiet"], stdin=out.open("rb"), capture_output=True, check=True)
    assert listing.stdout.decode().split() == [
        "etc",
        "etc/sub.d",
        "etc/cmdline",
        "etc/sub.d/odd-name",
        "empty",
        "squashfs.img",
        "etc/link",
        "x",
    ]
    dest = tmp_path / "x-root"
    dest.mkdir()
    subprocess.run(["cpio", "-i", "-d", "--quiet", "--no-absolute-filenames"], stdin=out.open("rb"), cwd=dest, check=True)
    assert (dest / "etc/cmdline").read_text() == "root=live:/squashfs.img rd.live.image\n"
    assert (dest / "etc/sub.d/odd-name").read_bytes() == b"abc"
    assert (dest / "etc/sub.d/odd-name").stat().st_mode & 0o777 == 0o600
    assert (dest / "empty").read_bytes() == b""
    assert (dest / "squashfs.img").read_bytes() == (tmp_path / "big.bin").read_bytes()
    assert os.readlink(dest / "etc/link") == "cmdline"
    assert (dest / "x").stat().st_mode & 0o777 == 0o755


def _real_cpio(tmp_path: Path, files: dict[str, bytes]) -> bytes:
    src = tmp_path / "realsrc"
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    names = "\n".join(sorted(files)) + "\n"
    return subprocess.run(
        ["cpio", "-o", "-H", "newc", "--quiet"], input=names.encode(), cwd=src, capture_output=True, check=True
    ).stdout


@needs_cpio
def test_concatenation_with_compressed_segments(tmp_path: Path) -> None:
    early = _real_cpio(tmp_path, {"kernel/x86/microcode/GenuineIntel.bin": b"ucode"})  # 512-padded
    main = _real_cpio(tmp_path, {"init": b"#!/bin/sh\n", "etc/os-release": b"NAME=x\n"})
    buf = io.BytesIO()
    write_newc(buf, [CpioEntry.file("squashfs.img", b"S" * 1001)])
    for kind, compressed in (("gzip", gzip.compress(main)), ("xz", lzma.compress(main, check=lzma.CHECK_CRC32))):
        blob = early + compressed
        blob += b"\0" * (-len(blob) % 4) + b"\0" * 8  # alignment plus extra zeros: skipped
        tail = len(blob)
        blob += buf.getvalue()
        path = tmp_path / f"initrd-{kind}.img"
        path.write_bytes(blob)
        segs = read_newc(path)
        assert [s.kind for s in segs] == ["cpio", kind, "cpio"]
        assert segs[0].members[0].name == "kernel/x86/microcode/GenuineIntel.bin"
        assert segs[1].offset == len(early)
        assert segs[2].offset == tail
        assert [m.name for m in segs[2].members] == ["squashfs.img"]
        assert segs[2].members[0].size == 1001


def test_zstd_frame_walk(tmp_path: Path) -> None:
    zstd = shutil.which("zstd")
    if zstd is None:
        pytest.skip("zstd not installed")
    payload = os.urandom(300_000) + b"\0" * 500_000
    comp = subprocess.run([zstd, "-q", "-c", "--check"], input=payload, capture_output=True, check=True).stdout
    buf = io.BytesIO()
    write_newc(buf, [CpioEntry.file("y", b"yy")])
    blob = comp + b"\0" * (-len(comp) % 4) + buf.getvalue()
    path = tmp_path / "z.img"
    path.write_bytes(blob)
    segs = read_newc(path)
    assert [s.kind for s in segs] == ["zstd", "cpio"]
    assert segs[0].end == len(comp)
    assert segs[1].members[0].name == "y"


def test_unknown_compression_stops(tmp_path: Path) -> None:
    path = tmp_path / "lz4.img"
    path.write_bytes(b"\x02\x21\x4c\x18" + os.urandom(100))
    (seg,) = read_newc(path)
    assert seg.kind == "lz4" and seg.end == path.stat().st_size


def test_misaligned_archive_is_an_error(tmp_path: Path) -> None:
    buf = io.BytesIO()
    write_newc(buf, [CpioEntry.file("a", b"a")])
    path = tmp_path / "bad.img"
    path.write_bytes(b"\0" * 2 + buf.getvalue())
    with pytest.raises(CpioFormatError):
        read_newc(path)


def test_file_changing_size_is_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"12345")
    real_stat = Path.stat

    def fake_stat(self: Path, **kw):  # type: ignore[no-untyped-def]
        st = real_stat(self, **kw)
        if self == f:
            return os.stat_result(
                (st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid, 9, st.st_atime, st.st_mtime, st.st_ctime)
            )
        return st

    monkeypatch.setattr(Path, "stat", fake_stat)
    with pytest.raises(OSError, match="changed size"):
        write_newc(io.BytesIO(), [CpioEntry.file("f", f)])


def test_symlink_needs_target() -> None:
    with pytest.raises(ValueError):
        write_newc(io.BytesIO(), [CpioEntry("l", stat.S_IFLNK | 0o777)])
