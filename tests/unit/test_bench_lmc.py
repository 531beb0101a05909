"""bench/lmc.py's pure parts: composer livemedia's stage lines, livemedia-creator's program.log
(its commands timed), its error line, and the mounts and loop devices it may leave behind."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import lmc  # noqa: E402

T0 = datetime.datetime(2026, 12, 7, 23, 50, 1, 250000)


def at(seconds: float) -> str:
    return (T0 + datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]


def epoch(seconds: float) -> float:
    return (T0 + datetime.timedelta(seconds=seconds)).timestamp()


# The shape of `composer livemedia --make-pxe-live --rootfs-type squashfs-ext4`'s log.
COMPOSER_PXE = """\
[    0.2s] dnf: dnf4 (4.14.0)
[    0.3s] %pre ...
[    0.3s] %pre: done in 0.0s
[    0.4s] install ...
  $ some debug line: done in 99.0s (not a stage: no time stamp)
[   50.4s] install: done in 50.0s
[   50.5s] kickstart ...
[   60.5s] kickstart: done in 10.0s
[   62.0s] rootfs ...
[   80.0s] rootfs: done in 18.0s
[   80.1s] squashfs ... (beside dracut)
[   80.2s] dracut ...
[  110.2s] dracut: done in 30.0s
[  150.1s] squashfs: squashfs.img 300.5 MiB (xz), 69.9s beside other work
[  150.2s] pxe-live ...
[  152.2s] pxe-live: done in 2.0s
"""

# `--make-iso --rootfs-type squashfs`: dracut, then mksquashfs of the tree, then the media.
COMPOSER_ISO = """\
[    0.4s] install ...
[   40.4s] install: done in 40.0s
[   40.5s] kickstart ...
[   45.5s] kickstart: done in 5.0s
[   46.0s] dracut ...
[   76.0s] dracut: done in 30.0s
[   76.1s] squashfs ...
[  136.1s] squashfs: done in 60.0s
[  136.2s] media tree ...
[  137.2s] media tree: done in 1.0s
[  137.3s] boot.iso ...
[  141.3s] boot.iso: done in 4.0s
[  141.5s] summary: {"timings_s": {"install": 40.0}}
"""


def test_composer_stages_with_squashfs_beside_dracut() -> None:
    s = lmc.composer_live_stages(COMPOSER_PXE, 155.0)
    assert s["install"] == 60.0  # %pre + install + kickstart
    assert (s["rootfs image"], s["dracut"], s["squashfs"]) == (18.0, 30.0, 69.9)
    assert s["dracut + squashfs"] == 70.0  # the pair's wall: 80.1 s to 150.1 s
    assert s["outputs"] == 2.0
    assert s["start, checks, other"] == 5.0  # 155 - 60 - 18 - 70 - 2
    assert list(s) == list(lmc.ROWS)


def test_composer_stages_one_after_the_other() -> None:
    s = lmc.composer_live_stages(COMPOSER_ISO, 143.0)
    assert (s["install"], s["rootfs image"], s["dracut"], s["squashfs"]) == (45.0, 0.0, 30.0, 60.0)
    assert s["dracut + squashfs"] == 90.0
    assert s["outputs"] == 5.0  # media tree + boot.iso
    assert s["start, checks, other"] == 3.0


# lmc's program.log (pylorax.executils): `Running... ARGV`, the output, `Return code: N`.
def program_log(steps: list[tuple[float, str]]) -> str:
    return "\n".join(f"{at(t)} {'DEBUG' if text.startswith('Return') else 'INFO'}: {text}" for t, text in steps) + "\n"


PXE_LOG = program_log(
    [
        (1.0, "Running... /bin/ln /w/fsimage.img /w/tmp/lmc-work-x/squashfs_root/LiveOS/rootfs.img"),
        (1.1, "Return code: 0"),
        (1.2, "Running... /usr/sbin/fsck.ext4 -y -f -E discard /w/rootfs.img"),
        (5.0, "e2fsck 1.47.0 (5-Feb-2023)"),
        (5.2, "Return code: 0"),
        (5.3, "Running... mksquashfs /w/squashfs_root /w/live-rootfs.squashfs.img -comp xz -Xbcj x86"),
        (65.3, "Parallel mksquashfs: Using 2 processors"),
        (65.3, "Return code: 0"),
        (65.4, "Running... mount -o loop /w/rootfs.img /w/tmp/lorax.imgutils.x"),
        (65.5, "Return code: 0"),
        (66.0, "Running... dracut --nomdadmconf --nolvmconf --xz /results/initramfs-6.1.0-28-amd64.img 6.1.0-28-amd64"),
        (106.0, "Return code: 0"),
        (106.5, "Running... umount /w/tmp/lorax.imgutils.x"),
        (106.6, "Return code: 0"),
    ]
)


def test_program_runs() -> None:
    runs = lmc.program_runs(PXE_LOG)
    assert [r.name for r in runs] == ["ln", "fsck.ext4", "mksquashfs", "mount", "dracut", "umount"]
    assert runs[2].start == pytest.approx(epoch(5.3)) and runs[2].end == pytest.approx(epoch(65.3))
    assert all(r.rc == 0 for r in runs)
    assert lmc.commands_s(runs)["dracut"] == 40.0


def test_lmc_stages() -> None:
    runs = lmc.program_runs(PXE_LOG)
    start = epoch(-1.0)  # the process started a second before its first log line
    s = lmc.lmc_stages(runs, epoch(0.0), start, epoch(110.0), 111.0)
    assert s["install"] == 0.0
    assert s["rootfs image"] == 4.0  # fsck.ext4 -E discard
    assert (s["dracut"], s["squashfs"], s["dracut + squashfs"]) == (40.0, 60.0, 100.0)
    assert s["outputs"] == 4.0  # after dracut: umount, the PXE config, the copy to --resultdir
    assert s["start, checks, other"] == 3.0
    assert list(s) == list(lmc.ROWS)


def test_lmc_stages_in_another_time_zone() -> None:
    # A log whose local time is an hour off this process's clock is put back on it.
    runs = lmc.program_runs(PXE_LOG)
    s = lmc.lmc_stages(runs, epoch(0.0), epoch(-1.0) + 3600, epoch(110.0) + 3600, 111.0)
    assert s["outputs"] == 4.0


def test_lmc_stages_need_dracut_or_mksquashfs() -> None:
    with pytest.raises(ValueError, match="no dracut or mksquashfs"):
        lmc.lmc_stages(lmc.program_runs(program_log([(1.0, "Running... /bin/ln a b"), (1.1, "Return code: 0")])), None, 0, 1, 1)


def test_lmc_error_lines() -> None:
    main = (
        f"{at(0)} INFO livemedia-creator: livemedia-creator v40.5.19\n"
        f"{at(90)} ERROR pylorax.ltmpl: template command error in live/efi.tmpl:\n"
        f"{at(90)} ERROR pylorax.ltmpl:   runcmd mkefiboot --label=ANACONDA /w/EFI/BOOT /w/images/efiboot.img\n"
        f"{at(91)} ERROR livemedia-creator: Command '['mkefiboot', ...]' returned non-zero exit status 1.\n"
    )
    prog = program_log([(80.0, "Running... mkefiboot --label=ANACONDA a b"), (90.0, "Return code: 1")])
    why = lmc.lmc_error(main, prog, "console noise")
    assert why.startswith("runcmd mkefiboot --label=ANACONDA")
    assert "returned non-zero exit status 1. | mkefiboot exited 1" in why
    assert "\n" not in why
    # A command that cannot start (pylorax logs `Error running`), no log at all.
    prog = program_log([(1.0, "Running... grub2-mkimage -O x"), (1.1, "Error running grub2-mkimage: No such file")])
    assert lmc.lmc_error("", prog, "") == "grub2-mkimage: cannot run"
    assert lmc.lmc_error("", "", "Traceback ...\nModuleNotFoundError: No module named 'iso9660'\n") == (
        "ModuleNotFoundError: No module named 'iso9660'"
    )


def test_mounts_and_loops_under() -> None:
    base = Path("/b/build/bench/lmc/lmc-iso")
    findmnt = "\n".join(
        [
            "/",
            "/b/build/bench/lmc/lmc-iso-other",  # a sibling, not under base
            f"{base}/tmp/lorax.imgutils.x",
            f"{base}/tmp/lorax.imgutils.x/proc",
            f"{base}/tmp/lorax.imgutils.x/var/tmp",
            f"{base}/with\\x20space",
        ]
    )
    found = lmc.mounts_under(base, findmnt)
    assert found[0].endswith(("/proc", "/var/tmp")) and found[2] == f"{base}/tmp/lorax.imgutils.x"  # deepest first
    assert f"{base}/with space" in found and len(found) == 4
    losetup = f"/dev/loop0 {base}/fsimage.img\n/dev/loop1 /var/lib/other.img\n/dev/loop2 {base}/tmp/x/rootfs.img (deleted)\n"
    assert lmc.loops_under(base, losetup) == ["/dev/loop0", "/dev/loop2"]
    assert lmc.loops_under(base, "") == []


def test_partial_stages_of_a_failed_run() -> None:
    # dracut failed: the stages lmc finished (fsck, mksquashfs) still compare; dracut has no time.
    failed = program_log(
        [
            (1.0, "Running... /usr/sbin/fsck.ext4 -y -f -E discard r"),
            (3.0, "Return code: 0"),
            (3.1, "Running... mksquashfs a b -comp xz"),
            (63.1, "Return code: 0"),
            (64.0, "Running... dracut --add livenet x"),
            (70.0, "Return code: 1"),
        ]
    )
    assert lmc.partial_stages(lmc.program_runs(failed)) == {"rootfs image": 2.0, "squashfs": 60.0}


def test_oracle_wrappers_are_lorax_oracles() -> None:
    # The bench's second try of lmc --make-iso runs the same wrappers as scripts/lorax-oracle.
    w = lmc.oracle_wrappers((ROOT / "scripts/lorax-oracle").read_text())
    assert sorted(w) == ["grub2-mkimage", "mkefiboot"]
    assert w["grub2-mkimage"].startswith("#!/bin/sh") and 'exec grub-mkimage "$@"' in w["grub2-mkimage"]
    assert "mkfs.msdos -C" in w["mkefiboot"] and "mcopy" in w["mkefiboot"] and not w["mkefiboot"].endswith("EOF")


def test_bench_kickstart_has_a_network_stack() -> None:
    text = (ROOT / "tools/testproduct/fedora-live.ks").read_text()
    ks = lmc.bench_kickstart(text, Path("/r/repo"))
    assert "url --url=file:///r/repo" in ks and "@REPO@" not in ks
    assert "\n%packages\ndracut-network\nisc-dhcp-client\ndbus-daemon\n@core\n" in ks
