"""Persistent overlay status and merge on tiny media built here.

The COW overlay is written the way the kernel would leave it: a loop-mounted copy of
rootfs.img is changed, then the changed chunks are stored with our writer (this host has
no device-mapper; the guest tests use the kernel's dm-snapshot). The overlayfs case uses
a real overlayfs mount.
"""

import argparse
import contextlib
import json
import os
import random
import struct
import subprocess
from pathlib import Path

import pytest

from composer.cli import live as live_cli
from composer.config import Compression
from composer.images.sparse import allocated_size, copy_sparse, create_sparse
from composer.live import overlay as ov
from composer.live.dmsnap import CowFormatError, CowStore, diff_chunks
from composer.live.overlay import compare_trees, merge_overlay, overlay_status
from composer.run import ComposerError
from tests.conftest import ROOT

MiB = 1 << 20
OVERLAY = "overlay-LIVE-1234-abcd"


def sh(*argv):
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True)


@contextlib.contextmanager
def mounted(img: Path, mnt: Path, *, ro: bool = True):
    """Loop-mount img; the mount and the loop device are always torn down."""
    dev = sh("losetup", "--find", "--show", *(["-r"] if ro else []), img).stdout.decode().strip()
    try:
        mnt.mkdir(exist_ok=True)
        sh("mount", *(["-o", "ro"] if ro else []), dev, mnt)
        try:
            yield mnt
        finally:
            sh("umount", mnt)
    finally:
        sh("losetup", "-d", dev)


def make_tree(root: Path) -> Path:
    rng = random.Random(11)
    for d in ("etc", "usr/bin", "usr/share/doc/pkg", "var/lib/old"):
        (root / d).mkdir(parents=True)
    (root / "etc/hostname").write_text("live\n")
    (root / "etc/motd").write_text("welcome\n")
    for i in range(30):
        (root / "usr/bin" / f"tool{i}").write_bytes(rng.randbytes(rng.randrange(1, 100_000)))
    (root / "usr/share/doc/pkg/README").write_text("docs\n")
    (root / "usr/share/doc/pkg/COPYING").write_text("license\n")
    (root / "var/lib/old/state").write_bytes(rng.randbytes(500_000))
    os.symlink("tool1", root / "usr/bin/alias")
    return root


def change_tree(root: Path) -> None:
    """What a live session does: add, change, delete files, replace a directory."""
    rng = random.Random(12)
    (root / "etc/hostname").write_text("persisted\n")
    (root / "etc/new.conf").write_text("added=1\n")
    (root / "usr/bin/tool3").unlink()
    (root / "usr/bin/tool4").write_bytes(rng.randbytes(300_000))
    os.chmod(root / "usr/bin/tool5", 0o700)
    os.chown(root / "etc/motd", 1000, 1000)
    os.setxattr(root / "etc/motd", "user.note", b"kept")
    subprocess.run(["rm", "-rf", str(root / "var/lib/old")], check=True)
    subprocess.run(["rm", "-rf", str(root / "usr/share/doc/pkg")], check=True)
    (root / "usr/share/doc/pkg").mkdir()  # same name, new content: an opaque dir in overlayfs
    (root / "usr/share/doc/pkg/NEWS").write_text("fresh\n")
    (root / "home/liveuser").mkdir(parents=True)
    (root / "home/liveuser/big").write_bytes(rng.randbytes(2 * MiB))
    os.symlink("/etc/new.conf", root / "home/liveuser/link")


def snapshot_files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(d.rglob("*"))}


@pytest.fixture
def cow_medium(tmp_path):
    """MEDIA/LiveOS/squashfs.img holding LiveOS/rootfs.img (ext4), a COW overlay, and the
    changed image the overlay should merge into."""
    tree = make_tree(tmp_path / "tree")
    wrapper = tmp_path / "wrapper"
    (wrapper / "LiveOS").mkdir(parents=True)
    rootfs = wrapper / "LiveOS" / "rootfs.img"
    create_sparse(rootfs, 64 * MiB)
    sh("mkfs.ext4", "-q", "-F", "-b", "4096", "-J", "size=4", "-d", tree, rootfs)
    media = tmp_path / "media"
    (media / "LiveOS").mkdir(parents=True)
    sh("mksquashfs", wrapper, media / "LiveOS/squashfs.img", "-noappend", "-quiet", "-no-progress", "-comp", "lz4")
    changed = tmp_path / "changed.img"
    copy_sparse(rootfs, changed)
    with mounted(changed, tmp_path / "mnt", ro=False) as mnt:
        change_tree(mnt)
    store = CowStore.write(media / "LiveOS" / OVERLAY, 8, diff_chunks(rootfs, changed, 8), size=32 * MiB)
    return media, rootfs, changed, store


def test_cow_status_text_and_json(cow_medium, capsys):
    media, _, _, store = cow_medium
    st = overlay_status(media)
    assert st.kind == "dm-snapshot" and st.valid and st.exceptions == len(store.exceptions)
    assert st.dmsetup_status == store.status()
    alloc, total = st.dmsetup_status.split()[0].split("/")
    assert int(total) * 512 == 32 * MiB and int(alloc) == (max(e.new_chunk for e in store.exceptions) + 1) * 8
    parser = argparse.ArgumentParser()
    live_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["overlay", "status", str(media), "--json"])
    assert args.func(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["allocated_bytes"] == int(alloc) * 512 and data["percent"] > 0
    args = parser.parse_args(["overlay", "status", str(media)])
    args.func(args)
    assert f"dmsetup status: {st.dmsetup_status}" in capsys.readouterr().out


def test_cow_merge_holds_exactly_the_changed_image(cow_medium, tmp_path, capsys):
    media, rootfs, changed, store = cow_medium
    old_sq = (media / "LiveOS/squashfs.img").read_bytes()
    r = merge_overlay(media, compression=Compression.LZ4)
    with capsys.disabled():
        print(
            f"\n  COW merge: {len(store.exceptions)} chunks ({store.data_bytes() / MiB:.1f} MiB) into a "
            f"{rootfs.stat().st_size // MiB} MiB ext4 rootfs: {r.seconds:.2f}s"
        )
    assert (media / "LiveOS/squashfs.img").read_bytes() != old_sq
    out = tmp_path / "check"
    sh("unsquashfs", "-n", "-d", out, media / "LiveOS/squashfs.img")
    merged = out / "LiveOS/rootfs.img"
    sh("cmp", merged, changed)  # byte-exact
    sh("e2fsck", "-fn", merged)
    with mounted(merged, tmp_path / "a") as a, mounted(changed, tmp_path / "b") as b:
        assert compare_trees(a, b) == []
        assert not (a / "usr/bin/tool3").exists() and (a / "etc/hostname").read_text() == "persisted\n"
    # The overlay is reset: a valid empty store of the same size, sparse again.
    after = CowStore.read(media / "LiveOS" / OVERLAY)
    assert after.valid and after.exceptions == [] and after.size == 32 * MiB
    assert allocated_size(media / "LiveOS" / OVERLAY) <= 2 * 4096
    assert sorted(p.name for p in (media / "LiveOS").iterdir()) == [OVERLAY, "squashfs.img"]
    # A second merge has nothing to do.
    assert merge_overlay(media).steps == ()


def _medium_state(media: Path) -> dict[str, bytes]:
    return snapshot_files(media)


def test_cow_merge_failures_leave_the_medium_unchanged(cow_medium, monkeypatch):
    media, *_ = cow_medium
    before = _medium_state(media)

    monkeypatch.setattr(ov, "_free_bytes", lambda path: 4096)
    with pytest.raises(ComposerError, match="not enough free space .* needs about"):
        merge_overlay(media)
    assert _medium_state(media) == before
    monkeypatch.undo()

    def bad_verify(*a, **kw):
        raise ComposerError("injected verification failure")

    monkeypatch.setattr(ov, "_verify_squashfs", bad_verify)
    with pytest.raises(ComposerError, match="injected"):
        merge_overlay(media, compression=Compression.LZ4)
    assert _medium_state(media) == before
    monkeypatch.undo()

    r = merge_overlay(media, dry_run=True)
    assert r.dry_run and any("replace" in s for s in r.steps)
    assert _medium_state(media) == before


def test_merge_dry_run_prints_the_plan_that_runs(cow_medium, monkeypatch, capsys):
    """One plan: --dry-run prints its steps, a merge runs exactly those, in order."""
    media, *_ = cow_medium
    before = _medium_state(media)
    plan = ov.plan_merge(media)
    assert [s.action for s in plan.steps] == ["extract", "apply", "fsck", "squash", "verify", "replace", "reset"]
    parser = argparse.ArgumentParser()
    live_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["overlay", "merge", str(media), "--dry-run"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.splitlines() == [f"would {s.text}" for s in plan.steps]
    assert _medium_state(media) == before
    ran = []
    real_fsck = ov._fsck
    monkeypatch.setattr(ov, "_fsck", lambda img, **kw: (ran.append("fsck"), real_fsck(img, **kw)))
    r = merge_overlay(media, compression=Compression.LZ4)
    assert r.steps == plan.texts[:3] + (f"build a new squashfs.img ({Compression.LZ4})",) + plan.texts[4:]
    assert ran == ["fsck"]


def test_corrupt_or_busy_overlay_is_refused(cow_medium):
    media, *_ = cow_medium
    cow = media / "LiveOS" / OVERLAY
    dev = sh("losetup", "--find", "--show", "-r", cow).stdout.decode().strip()
    try:
        before = _medium_state(media)
        with pytest.raises(ComposerError, match=f"in use by {dev}"):
            merge_overlay(media)
        assert _medium_state(media) == before
    finally:
        sh("losetup", "-d", dev)
    with open(cow, "r+b") as f:
        f.write(b"JUNK")
    before = _medium_state(media)
    with pytest.raises(CowFormatError, match="magic"):
        merge_overlay(media)
    with pytest.raises(CowFormatError, match="magic"):
        overlay_status(media)
    assert _medium_state(media) == before


@pytest.fixture
def overlayfs_medium(tmp_path):
    """A squashfs-only medium (the tree is the squashfs) with an overlayfs persistence dir
    written through a real overlayfs mount; returns the merged view as it was mounted."""
    tree = make_tree(tmp_path / "tree")
    media = tmp_path / "media"
    (media / "LiveOS").mkdir(parents=True)
    sq = media / "LiveOS/squashfs.img"
    sh("mksquashfs", tree, sq, "-noappend", "-quiet", "-no-progress", "-comp", "lz4")
    lower = tmp_path / "lower"
    sh("unsquashfs", "-n", "-d", lower, sq)
    d = media / "LiveOS" / OVERLAY
    (d / "upper").mkdir(parents=True)
    (d / "work").mkdir()
    mnt = tmp_path / "merged"
    mnt.mkdir()
    expected = tmp_path / "expected"
    sh("mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={d / 'upper'},workdir={d / 'work'}", mnt)
    try:
        change_tree(mnt)
        sh("cp", "-a", mnt, expected)
    finally:
        sh("umount", mnt)
    return media, expected


def test_overlayfs_merge_of_squashfs_only_medium(overlayfs_medium, tmp_path, capsys):
    media, expected = overlayfs_medium
    upper = media / "LiveOS" / OVERLAY / "upper"
    # The upper dir really has overlayfs' markers: a whiteout and an opaque dir.
    wh = os.lstat(upper / "usr/bin/tool3")
    assert os.major(wh.st_rdev) == 0 and os.minor(wh.st_rdev) == 0
    assert os.getxattr(upper / "usr/share/doc/pkg", "trusted.overlay.opaque") == b"y"
    st = overlay_status(media)
    assert st.kind == "overlayfs" and st.whiteouts >= 2 and st.allocated_bytes > 2 * MiB
    r = merge_overlay(media, compression=Compression.LZ4)
    with capsys.disabled():
        print(f"\n  overlayfs merge: {st.files} upper entries ({st.allocated_bytes / MiB:.1f} MiB): {r.seconds:.2f}s")
    out = tmp_path / "check"
    sh("unsquashfs", "-n", "-d", out, media / "LiveOS/squashfs.img")
    assert compare_trees(expected, out) == []
    assert os.getxattr(out / "etc/motd", "user.note") == b"kept"
    assert sorted(os.listdir(out / "usr/share/doc/pkg")) == ["NEWS"]
    assert list(upper.iterdir()) == [] and list((media / "LiveOS" / OVERLAY / "work").iterdir()) == []
    assert sorted(p.name for p in (media / "LiveOS").iterdir()) == [OVERLAY, "squashfs.img"]
    assert overlay_status(media).files == 0


def test_overlayfs_merge_failure_leaves_medium_unchanged(overlayfs_medium, monkeypatch):
    media, _ = overlayfs_medium
    before = _medium_state(media)

    def bad_squashfs(*a, **kw):
        raise ComposerError("injected mksquashfs failure")

    monkeypatch.setattr(ov, "make_squashfs", bad_squashfs)
    with pytest.raises(ComposerError, match="injected"):
        merge_overlay(media, compression=Compression.LZ4)
    assert _medium_state(media) == before


def test_overlayfs_merge_into_rootfs_img(tmp_path):
    """overlayfs persistence over an ext4 rootfs.img inside squashfs: applied through a loop mount."""
    tree = make_tree(tmp_path / "tree")
    wrapper = tmp_path / "wrapper"
    (wrapper / "LiveOS").mkdir(parents=True)
    rootfs = wrapper / "LiveOS" / "rootfs.img"
    create_sparse(rootfs, 64 * MiB)
    sh("mkfs.ext4", "-q", "-F", "-b", "4096", "-J", "size=4", "-d", tree, rootfs)
    media = tmp_path / "media"
    (media / "LiveOS").mkdir(parents=True)
    sh("mksquashfs", wrapper, media / "LiveOS/squashfs.img", "-noappend", "-quiet", "-no-progress", "-comp", "lz4")
    d = media / "LiveOS" / OVERLAY
    (d / "overlayfs").mkdir(parents=True)  # dracut's names for upper and work
    (d / "ovlwork").mkdir()
    expected = tmp_path / "expected"
    with mounted(rootfs, tmp_path / "lower") as lower:
        mnt = tmp_path / "merged"
        mnt.mkdir()
        sh("mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={d / 'overlayfs'},workdir={d / 'ovlwork'}", mnt)
        try:
            change_tree(mnt)
            sh("cp", "-a", mnt, expected)
        finally:
            sh("umount", mnt)
    merge_overlay(media, compression=Compression.LZ4)
    out = tmp_path / "check"
    sh("unsquashfs", "-n", "-d", out, media / "LiveOS/squashfs.img")
    sh("e2fsck", "-fn", out / "LiveOS/rootfs.img")
    with mounted(out / "LiveOS/rootfs.img", tmp_path / "a") as a:
        assert compare_trees(expected, a) == []
    assert list((d / "overlayfs").iterdir()) == []


def test_cow_merge_with_workdir_on_another_filesystem(cow_medium, tmp_path):
    media, _, changed, _ = cow_medium
    work = tmp_path / "tmpfs"
    work.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=512m", "tmpfs", work)
    try:
        merge_overlay(media, compression=Compression.LZ4, workdir=work)
        assert list(work.iterdir()) == []
    finally:
        sh("umount", work)
    out = tmp_path / "check"
    sh("unsquashfs", "-n", "-d", out, media / "LiveOS/squashfs.img")
    sh("cmp", out / "LiveOS/rootfs.img", changed)
    assert sorted(p.name for p in (media / "LiveOS").iterdir()) == [OVERLAY, "squashfs.img"]


# --- issue 20: links inside the medium are never followed; temporary names are not predictable ---


def _host_dir(tmp_path: Path) -> Path:
    host = tmp_path / "host"
    (host / "sub").mkdir(parents=True)
    (host / "precious").write_text("keep me\n")
    (host / "sub" / "secret").write_text("not for the image\n")
    return host


@pytest.mark.parametrize("half", ["upper", "work"])
def test_overlayfs_linked_upper_or_work_is_refused_before_any_work(overlayfs_medium, tmp_path, half):
    """A `work` linking to a host directory had its contents deleted; an `upper` linking to one had the host's
    files merged into the new squashfs.img; both then failed after the image was replaced."""
    media, _ = overlayfs_medium
    d = media / "LiveOS" / OVERLAY
    host = _host_dir(tmp_path)
    if half == "upper":
        sh("rm", "-rf", d / "upper")
    else:
        sh("rm", "-rf", d / "work")
    (d / half).symlink_to(host)
    before, host_before = _medium_state(media), snapshot_files(host)
    with pytest.raises(ComposerError, match=f"{half} is a symbolic link .*never follows"):
        merge_overlay(media, compression=Compression.LZ4)
    with pytest.raises(ComposerError, match=f"{half} is a symbolic link"):
        merge_overlay(media, dry_run=True)
    with pytest.raises(ComposerError, match=f"{half} is a symbolic link"):
        overlay_status(media)
    assert _medium_state(media) == before and snapshot_files(host) == host_before
    assert (d / half).is_symlink()


@pytest.mark.parametrize("name", ["LiveOS", "LiveOS/squashfs.img"])
def test_linked_liveos_or_image_is_refused(overlayfs_medium, tmp_path, name):
    media, _ = overlayfs_medium
    elsewhere = tmp_path / "elsewhere"
    (media / name).rename(elsewhere)
    (media / name).symlink_to(elsewhere)
    with pytest.raises(ComposerError, match=f"{name} is a symbolic link"):
        merge_overlay(media, compression=Compression.LZ4)
    with pytest.raises(ComposerError, match=f"{name} is a symbolic link"):
        overlay_status(media)
    assert (media / name).is_symlink()


def test_planted_links_at_the_old_temporary_names_are_not_followed(cow_medium, tmp_path):
    """The reset store was written to `.OVERLAY.reset-PID` and the staged image to `.squashfs.img.partial-PID`:
    links planted there made the merge write their targets (and move the link into the overlay's place)."""
    media, _, changed, _ = cow_medium
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    liveos = media / "LiveOS"
    for name in (f".{OVERLAY}.reset-{os.getpid()}", f".squashfs.img.partial-{os.getpid()}"):
        (liveos / name).symlink_to(victim)
    work = tmp_path / "tmpfs"  # another filesystem: the new image is staged beside the old one
    work.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=512m", "tmpfs", work)
    try:
        merge_overlay(media, compression=Compression.LZ4, workdir=work)
    finally:
        sh("umount", work)
    assert victim.read_text() == "root's file\n"
    assert not (liveos / OVERLAY).is_symlink() and CowStore.read(liveos / OVERLAY).exceptions == []
    out = tmp_path / "check"
    sh("unsquashfs", "-n", "-d", out, liveos / "squashfs.img")
    sh("cmp", out / "LiveOS/rootfs.img", changed)
    # The planted links are not this run's: they stay, and nothing else is left.
    assert sorted(p.name for p in liveos.iterdir()) == sorted(
        [OVERLAY, "squashfs.img", f".{OVERLAY}.reset-{os.getpid()}", f".squashfs.img.partial-{os.getpid()}"]
    )


def test_cow_status_of_huge_declared_chunks_reads_little(tmp_path):
    """A store of 4 KiB data (2 GiB apparent) declaring 1 GiB chunks: status read its whole 1 GiB table."""
    import resource
    import sys

    media = tmp_path / "media"
    (media / "LiveOS").mkdir(parents=True)
    create_sparse(media / "LiveOS" / "rootfs.img", MiB)
    cow = media / "LiveOS" / OVERLAY
    with open(cow, "wb") as f:
        f.write(struct.pack("<IIII", 0x70416E53, 1, 1, 1 << 21))
        f.truncate(2 << 30)

    def limit() -> None:  # far below the 1 GiB the table would take
        resource.setrlimit(resource.RLIMIT_AS, (400 << 20, 400 << 20))

    proc = subprocess.run(
        [sys.executable, "-m", "composer", "overlay", "status", str(media)],
        capture_output=True,
        text=True,
        preexec_fn=limit,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        check=False,
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "0 chunks of 2097152 sectors" in proc.stdout
