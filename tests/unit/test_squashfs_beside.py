"""squashfs_beside: mksquashfs in the background (beside dracut) gives the same bytes as make_squashfs,
and a failure or an interruption leaves no process and no half-written image."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from composer.config import Compression
from composer.images import squashfs as sq
from composer.run import CommandError

pytestmark = pytest.mark.skipif(shutil.which("mksquashfs") is None, reason="not installed: mksquashfs")


@pytest.fixture()
def src(tmp_path: Path) -> Path:
    s = tmp_path / "src"
    (s / "LiveOS").mkdir(parents=True)
    # Incompressible, so the job lasts long enough to be interrupted in the test below.
    (s / "LiveOS/rootfs.img").write_bytes(os.urandom(24 << 20))
    return s


def test_same_bytes_as_make_squashfs(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    fg, bg = tmp_path / "fg.img", tmp_path / "bg.img"
    sq.make_squashfs(src, fg, Compression.LZ4, source_date_epoch=1700000000, all_time=True)
    with sq.squashfs_beside(src, bg, Compression.LZ4, source_date_epoch=1700000000, all_time=True) as job:
        time.sleep(0.05)  # other work
    assert bg.read_bytes() == fg.read_bytes()
    assert job.wall_s > 0 and job.cpu_s > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bg.img", "fg.img", "src"]  # no .tmp, no .log


def test_exception_in_block_kills_it(src: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out.img"
    with pytest.raises(KeyboardInterrupt), sq.squashfs_beside(src, dest, Compression.XZ) as job:
        raise KeyboardInterrupt
    assert job.wall_s < 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    # Nothing of ours left running.
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert str(dest).encode() not in cmd


def test_failure_raises_with_its_output(src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A mksquashfs that fails (the real one only fails on broken hosts: full disk, bad option).
    monkeypatch.setattr(sq, "squashfs_argv", lambda *a, **k: ["sh", "-c", "echo 'FATAL ERROR: no space' >&2; exit 3"])
    dest = tmp_path / "out.img"
    with pytest.raises(CommandError, match="no space"), sq.squashfs_beside(src, dest, Compression.XZ):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
