"""The LiveOS tools against the kernel's own dm-snapshot, in a qemu guest.

This host has no device-mapper, so the test product's runtime is booted with
composer.script=1 (testproduct-setup's composer-script.service): the guest mounts a
test disk the host made (/dev/vda, ext4), runs its run.sh and powers off; the host then
reads the results back from the disk image with debugfs (no loop device, no mount).
One boot covers every check:

- delta: snapshot(origin=rootfs.img, cow=our osmin.img) in the kernel is a filesystem
  e2fsck finds clean, as big as the minimized one, with the origin's files, and
  byte-identical to what `composer delta apply` writes in user space;
- overlay: the kernel writes a COW store over rootfs.img (files added, changed,
  deleted through an ext4 mount of the snapshot); `composer overlay status` agrees
  with `dmsetup status`, and `composer overlay merge` folds it into a squashfs.img
  whose rootfs.img is byte-identical to what the kernel presented and holds exactly
  the changed tree.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import re
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from composer.live.dmsnap import CowStore
from testproduct import CHECK_ARGS
from tests.conftest import composer

pytestmark = pytest.mark.slow

MiB = 1 << 20
ORIGIN_SIZE = 64 * MiB
OVERLAY_COW_SIZE = 32 * MiB
OVERLAY = "overlay-COMPOSERLIVE-2024-0001"
SCRIPT_MARKER = "COMPOSER-SCRIPT-DONE"

# Runs in the guest (POSIX sh, cwd = the test disk's root). Every device-mapper target,
# loop device and mount it makes is torn down on the way out, also after a failure.
# Each step leaves its outputs in results/; the host judges them.
RUN_SH = r"""#!/bin/sh
PATH=/usr/sbin:/usr/bin
export PATH LC_ALL=C
D=$(pwd)
R=$D/results
M=/mnt/live-test
mkdir -p "$R" "$M"
failed=0
MOUNTED= DMS= LOOPS=
say() { echo "live-test: [$(cut -d' ' -f1 /proc/uptime)] $*"; }
fail() { say "FAILED: $*"; failed=$((failed + 1)); }
cleanup() {
    [ -n "$MOUNTED" ] && umount "$M"
    for d in $DMS; do dmsetup remove --retry "$d" || fail "dmsetup remove $d"; done
    for l in $LOOPS; do losetup -d "$l" || fail "losetup -d $l"; done
    MOUNTED= DMS= LOOPS=
}
trap 'cleanup; echo "$failed" > "$R/failed"; sync' EXIT
mnt() { mount -t ext4 "$@" "$M" && MOUNTED=1; }
umnt() { umount "$M" && MOUNTED=; }
loop() { losetup -f --show "$@"; }
# listing DIR OUT: type, mode, link target of every entry; sha256 of every regular file
listing() {
    (cd "$1" && find . -mindepth 1 -path ./lost+found -prune -o -printf '%y %m %p %l\n' | sort) > "$2.meta"
    (cd "$1" && find . -path ./lost+found -prune -o -type f -print0 | sort -z | xargs -0 -r sha256sum) > "$2.sha"
}
# snapshot NAME ORIGIN COW: dm-snapshot, persistent store, 8-sector chunks
snapshot() {
    o=$(loop -r "$2") && LOOPS="$LOOPS $o" || return 1
    c=$(loop "$3") && LOOPS="$LOOPS $c" || return 1
    sz=$(blockdev --getsz "$o")
    dmsetup create "$1" --noudevsync --table "0 $sz snapshot $o $c P 8" && DMS="$DMS $1" || return 1
    dmsetup mknodes "$1"
    udevadm settle --timeout=10 || :
    [ -b "/dev/mapper/$1" ]
}

say "kernel $(uname -r)"
{
    uname -r
    for m in dm-mod dm-snapshot loop ext4; do echo "module $m $(modinfo -n "$m" 2>&1)"; done
    for t in dmsetup losetup e2fsck dumpe2fs mount; do echo "tool $t $(command -v "$t")"; done
} > "$R/env.txt" 2>&1
modprobe dm-snapshot || fail "modprobe dm-snapshot"
cat /proc/modules > "$R/modules.txt"

# --- a. our delta under the kernel's snapshot ---
say "delta"
if snapshot lt-delta rootfs.img osmin.img; then
    dev=/dev/mapper/lt-delta
    dmsetup table lt-delta > "$R/delta.table"
    dmsetup status lt-delta > "$R/delta.status"
    say "delta: e2fsck"
    e2fsck -fn "$dev" > "$R/delta.fsck" 2>&1; echo $? > "$R/delta.fsck.rc"
    dumpe2fs -h "$dev" > "$R/delta.dumpe2fs" 2>&1
    # the filesystem's size in its superblock must be the minimized size the host computed
    bc=$(sed -n 's/^Block count: *//p' "$R/delta.dumpe2fs")
    bs=$(sed -n 's/^Block size: *//p' "$R/delta.dumpe2fs")
    [ "$((bc * bs))" = "$(cat minimized.size)" ] || fail "delta: $bc blocks of $bs bytes, not $(cat minimized.size) bytes"
    say "delta: copy the minimized filesystem out"
    dd if="$dev" of="$R/delta-presented.img" bs=1M iflag=count_bytes count=$((bc * bs)) conv=sparse status=none || fail "dd delta"
    say "delta: list the files"
    if mnt -o ro "$dev"; then listing "$M" "$R/delta"; umnt; else fail "mount delta"; fi
else
    fail "snapshot with our delta"
fi
cleanup

# --- b. an overlay the kernel writes ---
say "overlay"
if snapshot lt-ovl rootfs.img overlay.cow; then
    dev=/dev/mapper/lt-ovl
    dmsetup status lt-ovl > "$R/ovl.status-fresh"
    if mnt "$dev"; then
        C=$D/changes
        cp "$C/added.bin" "$M/usr/share/data/added.bin" &&
        mkdir -p "$M/newdir/sub" &&
        cp "$C/small.txt" "$M/newdir/sub/small.txt" &&
        ln -s ../usr/share/data/added.bin "$M/newdir/link" &&
        dd if="$C/patch.bin" of="$M/usr/share/data/big0.bin" bs=4096 seek=10 conv=notrunc status=none &&
        printf 'changed\n' >> "$M/etc/hostname" &&
        chmod 600 "$M/etc/secret" &&
        rm "$M/usr/share/data/big1.bin" &&
        rm -r "$M/var/cache/olddir" &&
        truncate -s 1000 "$M/usr/bin/tool" || fail "changing files on the snapshot"
        umnt || fail "umount overlay (rw)"
        say "overlay: e2fsck"
        e2fsck -fn "$dev" > "$R/ovl.fsck" 2>&1; echo $? > "$R/ovl.fsck.rc"
        say "overlay: list the files"
        if mnt -o ro "$dev"; then listing "$M" "$R/ovl"; umnt; else fail "mount overlay ro"; fi
        say "overlay: copy the device out"
        dd if="$dev" of="$R/ovl-presented.img" bs=1M conv=sparse status=none || fail "dd overlay"
    else
        fail "mount overlay rw"
    fi
    dmsetup status lt-ovl > "$R/ovl.status"
else
    fail "snapshot over a fresh COW file"
fi
cleanup
dmsetup ls > "$R/dmsetup-ls.txt" 2>&1
losetup -a > "$R/losetup-a.txt" 2>&1
say "done, $failed failed"
[ "$failed" -eq 0 ]
"""


def sh(*argv: object, **kw) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([os.fspath(a) if isinstance(a, Path) else str(a) for a in argv], check=True, capture_output=True, **kw)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- trees and their listings (the same format the guest's find writes) ---


def make_tree(root: Path) -> None:
    rng = random.Random(4)
    for d in ("etc", "usr/bin", "usr/share/data", "var/cache/olddir/deeper", "var/lib"):
        (root / d).mkdir(parents=True)
    (root / "etc/hostname").write_text("live\n")
    (root / "etc/secret").write_text("s3cret\n")
    (root / "etc/empty").write_bytes(b"")
    tool = root / "usr/bin/tool"
    tool.write_bytes(rng.randbytes(300_000))
    tool.chmod(0o755)
    for i in range(6):
        (root / f"usr/share/data/big{i}.bin").write_bytes(rng.randbytes(rng.randrange(700_000, 1_500_000)))
    for i in range(40):
        (root / f"var/lib/f{i:02d}").write_bytes(rng.randbytes(rng.randrange(1, 20_000)))
    (root / "var/cache/olddir/deeper/x").write_bytes(rng.randbytes(50_000))
    (root / "var/cache/olddir/y").write_text("y\n")
    os.symlink("../share/data/big0.bin", root / "usr/bin/data-link")


def make_changes(changes: Path) -> None:
    rng = random.Random(5)
    changes.mkdir()
    (changes / "added.bin").write_bytes(rng.randbytes(1_200_000))
    (changes / "small.txt").write_text("new small file\n")
    (changes / "patch.bin").write_bytes(rng.randbytes(65_536))


def apply_changes(root: Path, changes: Path) -> None:
    """What the guest does to the snapshot, done to a plain tree."""
    shutil.copyfile(changes / "added.bin", root / "usr/share/data/added.bin")
    (root / "newdir/sub").mkdir(parents=True)
    shutil.copyfile(changes / "small.txt", root / "newdir/sub/small.txt")
    os.symlink("../usr/share/data/added.bin", root / "newdir/link")
    with (root / "usr/share/data/big0.bin").open("r+b") as f:
        f.seek(10 * 4096)
        f.write((changes / "patch.bin").read_bytes())
    with (root / "etc/hostname").open("a") as f:
        f.write("changed\n")
    (root / "etc/secret").chmod(0o600)
    (root / "usr/share/data/big1.bin").unlink()
    shutil.rmtree(root / "var/cache/olddir")
    os.truncate(root / "usr/bin/tool", 1000)


def tree_listing(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """({'./path': 'type mode linktarget'}, {'./path': sha256}) like the guest's find."""
    meta: dict[str, str] = {}
    sums: dict[str, str] = {}
    for dirpath, dirs, files in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirs[:] = [d for d in dirs if d != "lost+found"]
        for name in dirs + files:
            p = Path(dirpath) / name
            rel = "./" + os.path.normpath(os.path.join(rel_dir, name))
            st = os.lstat(p)
            kind = {stat.S_IFDIR: "d", stat.S_IFREG: "f", stat.S_IFLNK: "l"}[stat.S_IFMT(st.st_mode)]
            mode = 0o777 if kind == "l" else stat.S_IMODE(st.st_mode)
            meta[rel] = f"{kind} {mode:o} {os.readlink(p) if kind == 'l' else ''}".rstrip()
            if kind == "f":
                sums[rel] = sha256(p)
    return meta, sums


def guest_listing(results: Path, name: str) -> tuple[dict[str, str], dict[str, str]]:
    meta: dict[str, str] = {}
    for line in (results / f"{name}.meta").read_text().splitlines():
        kind, mode, path, *link = line.split(" ", 3)
        meta[path] = f"{kind} {mode} {link[0] if link else ''}".rstrip()
    sums = {}
    for line in (results / f"{name}.sha").read_text().splitlines():
        digest, path = line.split(None, 1)
        sums[path] = digest
    return meta, sums


# --- ext4 images without loop devices ---


def mkfs_ext4(img: Path, tree: Path, size: int, label: str) -> None:
    with img.open("wb") as f:
        f.truncate(size)
    sh("mkfs.ext4", "-q", "-F", "-b", "4096", "-L", label, "-d", tree, img)


def rdump(img: Path, src: str, dest: Path) -> Path:
    """Copy a directory out of an ext4 image with debugfs (no mount)."""
    dest.mkdir(parents=True, exist_ok=True)
    sh("debugfs", "-R", f"rdump {src} {dest}", img)
    out = dest / Path(src).name if src != "/" else dest
    return out


def fsck_clean(img: Path) -> None:
    proc = subprocess.run(["e2fsck", "-fn", str(img)], check=False, capture_output=True, text=True)
    assert proc.returncode == 0, f"e2fsck -fn {img}: {proc.returncode}\n{proc.stdout}{proc.stderr}"


def dmsetup_status_part(text: str) -> str:
    """'0 131072 snapshot 48/65536 16' -> '48/65536 16'"""
    fields = text.split()
    assert fields[2] == "snapshot", text
    return " ".join(fields[3:])


def our_leftovers(tmp: Path) -> tuple[str, str, str]:
    loops = subprocess.run(["losetup", "-a"], check=False, capture_output=True, text=True).stdout
    mounts = subprocess.run(["findmnt", "-rn", "-o", "TARGET,SOURCE"], check=False, capture_output=True, text=True).stdout
    qemu = subprocess.run(["pgrep", "-af", "qemu-system"], check=False, capture_output=True, text=True).stdout
    mine = str(tmp)
    return (
        "\n".join(ln for ln in loops.splitlines() if mine in ln),
        "\n".join(ln for ln in mounts.splitlines() if mine in ln),
        "\n".join(ln for ln in qemu.splitlines() if mine in ln),
    )


@pytest.fixture(scope="module")
def guest_run(runtime_outputs, tmp_path_factory):
    """Prepare the test disk, boot the runtime once, read the results back."""
    from composer.verify import boot_kernel

    top = tmp_path_factory.mktemp("live-kernel")
    tree = top / "tree"
    make_tree(tree)
    stage = top / "disk"
    stage.mkdir()
    rootfs = stage / "rootfs.img"
    mkfs_ext4(rootfs, tree, ORIGIN_SIZE, "LIVEROOT")
    # Free blocks in the middle of the image: the minimized filesystem has to move data.
    sh("debugfs", "-w", "-R", "rm /usr/share/data/big3.bin", rootfs)
    (tree / "usr/share/data/big3.bin").unlink()
    fsck_clean(rootfs)
    origin_sha = sha256(rootfs)

    proc = composer("delta", "create", str(rootfs), "-o", str(top / "osmin.img.gz"))
    m = re.search(r"(\d+) chunks, store (\d+) bytes, gzip (\d+) bytes; minimized filesystem (\d+) of (\d+) bytes", proc.stdout)
    assert m, proc.stdout
    chunks, raw, gz, minimized, origin = map(int, m.groups())
    assert origin == ORIGIN_SIZE and 0 < minimized < origin and chunks > 0
    with gzip.open(top / "osmin.img.gz", "rb") as i, (stage / "osmin.img").open("wb") as o:
        shutil.copyfileobj(i, o)
    osmin_sha = sha256(stage / "osmin.img")
    composer("delta", "apply", str(rootfs), str(top / "osmin.img.gz"), "-o", str(top / "minimal.img"))
    assert (top / "minimal.img").stat().st_size == minimized
    (stage / "minimized.size").write_text(f"{minimized}\n")

    with (stage / "overlay.cow").open("wb") as f:  # all zero: a fresh store, the kernel writes its header
        f.truncate(OVERLAY_COW_SIZE)
    make_changes(stage / "changes")
    (stage / "run.sh").write_text(RUN_SH)
    disk = top / "disk.img"
    mkfs_ext4(disk, stage, 512 * MiB, "COMPOSERT")

    kernel = runtime_outputs / "images/pxeboot/vmlinuz"
    initrd = runtime_outputs / "images/pxeboot/initrd.img"
    log = top / "serial.log"
    t0 = time.monotonic()
    result = boot_kernel(
        kernel,
        initrd,
        memory_mb=768,
        append="composer.script=1",
        timeout=900,
        log=log,
        marker=SCRIPT_MARKER,
        check_args=CHECK_ARGS,
        extra_qemu_args=["-drive", f"file={disk},format=raw,if=virtio"],
    )
    boot_seconds = time.monotonic() - t0
    serial = log.read_text(errors="replace") if log.exists() else ""
    assert result.ok, f"guest script did not finish: {result.reason}\n--- serial tail ---\n{serial[-5000:]}"

    results = rdump(disk, "/results", top / "out")
    sh("debugfs", "-R", f"dump /rootfs.img {top / 'rootfs-after.img'}", disk)
    sh("debugfs", "-R", f"dump /osmin.img {top / 'osmin-after.img'}", disk)
    sh("debugfs", "-R", f"dump /overlay.cow {top / 'overlay.cow'}", disk)
    info = {
        "top": top,
        "tree": tree,
        "rootfs": rootfs,
        "results": results,
        "serial": serial,
        "marker": result.marker_line,
        "boot_seconds": boot_seconds,
        "minimized": minimized,
        "delta_chunks": chunks,
        "delta_raw": raw,
        "delta_gz": gz,
        "origin_sha": origin_sha,
        "osmin_sha": osmin_sha,
    }
    print(
        f"\nlive-kernel: delta {chunks} chunks, store {raw} bytes raw, {gz} bytes gzip; minimized {minimized} "
        f"of {origin} bytes; guest boot + script {boot_seconds:.0f}s"
    )
    yield info
    leftovers = our_leftovers(top)
    assert leftovers == ("", "", ""), f"left behind: {leftovers}"


def test_guest_script_succeeded(guest_run):
    r = guest_run
    assert r["marker"] == f"{SCRIPT_MARKER} rc=0", (r["marker"], r["serial"][-5000:])
    assert (r["results"] / "failed").read_text().strip() == "0"
    env = (r["results"] / "env.txt").read_text()
    for mod in ("dm-mod", "dm-snapshot", "loop", "ext4"):
        line = next(ln for ln in env.splitlines() if ln.startswith(f"module {mod} "))
        # a path to the .ko, or "(builtin)" style answers from modinfo -n
        assert "not found" not in line and "ERROR" not in line, line
    assert re.search(r"^dm_snapshot ", (r["results"] / "modules.txt").read_text(), re.MULTILINE)
    # the guest tore down its dm targets and loop devices (the live system's own stay)
    assert "lt-" not in (r["results"] / "dmsetup-ls.txt").read_text()
    assert "/mnt/composer/" not in (r["results"] / "losetup-a.txt").read_text()
    # the origin was only ever read; our delta was only read by the kernel
    assert sha256(r["top"] / "rootfs-after.img") == r["origin_sha"]
    assert sha256(r["top"] / "osmin-after.img") == r["osmin_sha"]


def test_kernel_snapshot_of_our_delta_is_the_minimized_fs(guest_run):
    r = guest_run
    res = r["results"]
    assert (res / "delta.fsck.rc").read_text().strip() == "0", (res / "delta.fsck").read_text()
    dump = (res / "delta.dumpe2fs").read_text()
    blocks = int(re.search(r"^Block count:\s+(\d+)", dump, re.MULTILINE).group(1))
    bsize = int(re.search(r"^Block size:\s+(\d+)", dump, re.MULTILINE).group(1))
    assert blocks * bsize == r["minimized"] < ORIGIN_SIZE
    # dmsetup status of the kernel's snapshot = what our reader says about the store
    ours = CowStore.read(r["top"] / "osmin-after.img", origin_size=ORIGIN_SIZE)
    assert dmsetup_status_part((res / "delta.status").read_text()) == ours.status()
    assert len(ours.exceptions) == r["delta_chunks"]
    # the files are the origin's
    assert guest_listing(res, "delta") == tree_listing(r["tree"])
    # and what the kernel presents is byte for byte what `composer delta apply` writes
    sh("cmp", res / "delta-presented.img", r["top"] / "minimal.img")


def test_overlay_written_by_the_kernel_merges_to_the_changed_tree(guest_run):
    r = guest_run
    res, top = r["results"], r["top"]
    assert (res / "ovl.fsck.rc").read_text().strip() == "0", (res / "ovl.fsck").read_text()
    # what the guest saw on the snapshot is the changed tree
    expected_tree = top / "expected"
    shutil.copytree(r["tree"], expected_tree, symlinks=True)
    make_changes(top / "changes")
    apply_changes(expected_tree, top / "changes")
    expected = tree_listing(expected_tree)
    assert guest_listing(res, "ovl") == expected

    # a medium: LiveOS/squashfs.img holding the original rootfs.img, and the kernel's COW
    media = top / "media"
    sqroot = top / "sqroot"
    (sqroot / "LiveOS").mkdir(parents=True)
    shutil.copyfile(r["rootfs"], sqroot / "LiveOS/rootfs.img")
    (media / "LiveOS").mkdir(parents=True)
    sh("mksquashfs", sqroot, media / "LiveOS/squashfs.img", "-comp", "gzip", "-noappend", "-quiet")
    old_sq = sha256(media / "LiveOS/squashfs.img")
    shutil.copyfile(top / "overlay.cow", media / "LiveOS" / OVERLAY)

    status = json.loads(composer("overlay", "status", str(media), "--json").stdout)
    assert status["kind"] == "dm-snapshot" and status["valid"] and not status["fresh"]
    assert status["allocated_bytes"] > 0 and status["exceptions"] > 0
    assert status["total_bytes"] == OVERLAY_COW_SIZE
    assert status["dmsetup_status"] == dmsetup_status_part((res / "ovl.status").read_text())

    t0 = time.monotonic()
    composer("overlay", "merge", str(media), "--compression", "lz4")
    merge_seconds = time.monotonic() - t0
    print(
        f"\nlive-kernel: merged {status['exceptions']} chunks ({status['allocated_bytes']} bytes allocated) "
        f"into squashfs.img in {merge_seconds:.1f}s"
    )

    new_sq = media / "LiveOS/squashfs.img"
    assert sha256(new_sq) != old_sq
    assert "Compression lz4" in sh("unsquashfs", "-s", new_sq).stdout.decode()
    sh("unsquashfs", "-q", "-n", "-d", top / "merged", new_sq)
    merged = top / "merged/LiveOS/rootfs.img"
    fsck_clean(merged)
    # byte for byte what the kernel presented through the snapshot
    sh("cmp", merged, res / "ovl-presented.img")
    # and exactly the changed tree
    assert tree_listing(rdump(merged, "/", top / "merged-tree")) == expected
    # the overlay is reset: a valid, empty store of the same size
    after = CowStore.read(media / "LiveOS" / OVERLAY)
    assert after.header is not None and after.valid and after.exceptions == []
    assert (media / "LiveOS" / OVERLAY).stat().st_size == OVERLAY_COW_SIZE
    assert sorted(p.name for p in (media / "LiveOS").iterdir()) == sorted([OVERLAY, "squashfs.img"])
