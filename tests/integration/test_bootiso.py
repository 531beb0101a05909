"""Compose the test product's boot.iso for real and boot it under SeaBIOS and OVMF.

The media are built once per session (tests/conftest.py bootiso_build, shared with test_reproducible);
each boot takes 1-3 minutes under TCG.
"""

import re
import subprocess
from pathlib import Path

import pytest

from testproduct import BOOT_MARKER
from tests.conftest import BUILD, composer

pytestmark = pytest.mark.slow

VOLID = "TestProduct-1-x86_64"


@pytest.fixture(scope="module")
def media(bootiso_build) -> Path:
    return bootiso_build / "out"


def test_output_tree(media):
    for rel in (
        "images/boot.iso",
        "images/install.img",
        "images/efiboot.img",
        "images/eltorito.img",
        "images/pxeboot/vmlinuz",
        "images/pxeboot/initrd.img",
        "EFI/BOOT/BOOTX64.EFI",
        "EFI/BOOT/grub.cfg",
        "boot/grub2/grub.cfg",
        ".treeinfo",
        ".discinfo",
    ):
        assert (media / rel).is_file(), rel
    # the small initrd: the dracut initramfs alone, not the big one with the squashfs
    assert (media / "images/pxeboot/initrd.img").stat().st_size < (media / "images/install.img").stat().st_size
    assert "COMPOSER-BOOT-OK" not in (media / "EFI/BOOT/grub.cfg").read_text()
    assert f"root=live:CDLABEL={VOLID}" in (media / "EFI/BOOT/grub.cfg").read_text()


def test_treeinfo_loads_and_points_at_files(media):
    import productmd.treeinfo

    ti = productmd.treeinfo.TreeInfo()
    ti.load(str(media / ".treeinfo"))
    assert ti.stage2.mainimage == "images/install.img"
    images = ti.images.images["x86_64"]
    assert images["boot.iso"] == "images/boot.iso" and images["efiboot.img"] == "images/efiboot.img"
    assert images["kernel"] == "images/pxeboot/vmlinuz" and images["initrd"] == "images/pxeboot/initrd.img"
    for rel in [*images.values(), ti.stage2.mainimage]:
        assert (media / rel).is_file(), rel
    disc = (media / ".discinfo").read_text().splitlines()
    assert disc[1:] == ["TestProduct 1", "x86_64", "ALL"]


def test_el_torito_bios_and_uefi(media):
    report = subprocess.run(
        ["xorriso", "-indev", str(media / "images/boot.iso"), "-report_el_torito", "plain"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    from tests.isoread import el_torito_platforms, mbr_partitions

    assert el_torito_platforms(report) == ["BIOS", "UEFI"], report
    parts = mbr_partitions(media / "images/boot.iso")
    assert any(p[1] == 0xEF for p in parts), parts  # hybrid: EFI system partition for USB boot


def test_checkisomd5_and_label(media):
    iso = media / "images/boot.iso"
    proc = subprocess.run(["checkisomd5", str(iso)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    label = subprocess.run(["blkid", "-o", "value", "-s", "LABEL", str(iso)], capture_output=True, text=True, check=True).stdout
    assert label.strip() == VOLID


def test_iso_holds_the_tree(media):
    listing = subprocess.run(
        ["xorriso", "-indev", str(media / "images/boot.iso"), "-find", "/", "-type", "f"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for rel in (
        "images/install.img",
        "images/pxeboot/vmlinuz",
        "images/pxeboot/initrd.img",
        "EFI/BOOT/BOOTX64.EFI",
        "boot/grub2/grub.cfg",
        ".treeinfo",
        ".discinfo",
    ):
        assert f"'/{rel}'" in listing, rel
    assert "boot.iso" not in listing
    assert ".composer-" not in listing  # the build's own markers (its lock held a process id)


def test_install_img_ships_osmin_delta(media, tmp_path):
    """LiveOS/osmin.img.gz over LiveOS/rootfs.img presents a clean, minimized ext4."""
    subprocess.run(
        ["unsquashfs", "-no-progress", "-d", str(tmp_path / "sq"), str(media / "images/install.img")],
        check=True,
        capture_output=True,
    )
    live = tmp_path / "sq" / "LiveOS"
    assert sorted(p.name for p in live.iterdir()) == ["osmin.img.gz", "rootfs.img"]
    minimal = tmp_path / "minimal.img"
    composer("delta", "apply", str(live / "rootfs.img"), str(live / "osmin.img.gz"), "-o", str(minimal))
    fsck = subprocess.run(["e2fsck", "-fn", str(minimal)], capture_output=True, text=True, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert minimal.stat().st_size < (live / "rootfs.img").stat().st_size // 2
    # the build's own records (dnf logs under the work dir's path, dnf history) stay out of the runtime
    var_tmp = subprocess.run(["debugfs", "-R", "ls /var/tmp", str(minimal)], capture_output=True, text=True, check=True).stdout
    assert "composer." not in var_tmp, var_tmp
    dnf_lib = subprocess.run(["debugfs", "-R", "ls /var/lib/dnf", str(minimal)], capture_output=True, text=True).stdout
    assert "history.sqlite" not in dnf_lib, dnf_lib
    cache = subprocess.run(["debugfs", "-R", f"stat {BUILD / 'cache' / 'dnf'}", str(minimal)], capture_output=True, text=True)
    assert "File not found" in cache.stdout + cache.stderr, "dnf's package cache leaked into the runtime"


def test_initrd_and_menus_carry_the_ram_budget(media):
    from composer.outputs.ram import carried_budget, carried_stop

    budget, stop = carried_budget(media / "images/pxeboot/initrd.img"), carried_stop(media / "images/pxeboot/initrd.img")
    # the usable floor (208 MB, make bench 2026-12-07) and the reached one (160), within 10%
    assert budget is not None and 187 <= budget <= 229, budget
    assert stop is not None and 144 <= stop <= 176, stop
    for cfg in ("boot/grub2/grub.cfg", "EFI/BOOT/grub.cfg"):
        text = (media / cfg).read_text()
        assert f"needs at least {budget} MiB" in text and f"below {stop} MiB the initrd stops" in text, cfg


# BIOS at the budget the initrd carries, the RAM a user sizes a VM by (make bench bisects
# the floors below it); UEFI at 512 (OVMF's own share of the RAM is not part of it).
MEMORY = {"bios": None, "uefi": 512}


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_boots_to_marker(media, firmware, tmp_path):
    from composer.outputs.ram import carried_budget
    from composer.verify import boot_iso

    log = tmp_path / f"serial-{firmware}.log"
    memory = MEMORY[firmware] or carried_budget(media / "images/pxeboot/initrd.img")
    result = boot_iso(media / "images/boot.iso", firmware=firmware, memory_mb=memory, timeout=900, log=log, marker=BOOT_MARKER)
    serial = log.read_text(errors="replace") if log.exists() else ""
    assert result.ok, f"{firmware} at {memory} MB: {result.reason}\n--- serial tail ---\n{serial[-3000:]}"
    assert "COMPOSER-BOOT-OK" in serial
    assert "root=live:CDLABEL=" in serial  # the kernel came through the boot menu, not -kernel
    assert "composer: little memory" not in serial  # at the budget: no warning
    print(f"{firmware} boot to the marker at {memory} MB: {result.seconds:.0f}s")


@pytest.mark.soak
def test_between_stop_and_budget_warns_and_boots(media, tmp_path):
    """Between the least RAM it boots in and the budget the small initrd says the boot will be
    slow, and goes on to the marker (slowly: the runtime's pages thrash)."""
    from composer.outputs.ram import carried_budget, carried_stop
    from composer.verify import boot_iso

    budget, stop = carried_budget(media / "images/pxeboot/initrd.img"), carried_stop(media / "images/pxeboot/initrd.img")
    memory = (budget + stop) // 2
    log = tmp_path / "serial.log"
    result = boot_iso(media / "images/boot.iso", firmware="bios", memory_mb=memory, timeout=1200, log=log, marker=BOOT_MARKER)
    serial = log.read_text(errors="replace")
    assert result.ok, f"{result.reason}\n--- serial tail ---\n{serial[-3000:]}"
    assert f"this system boots slowly below {budget} MiB; going on." in serial
    print(f"warned and booted at {memory} MB in {result.seconds:.0f}s")


def test_too_little_ram_stops_with_one_line(media, tmp_path):
    """Below the least RAM it boots in the small initrd says how much RAM there is and is
    needed, and stops: no OOM kill, no 50-minute wait for a live-rw device that never comes."""
    from composer.outputs.ram import carried_stop
    from composer.verify import boot_iso

    stop = carried_stop(media / "images/pxeboot/initrd.img")
    # Between what the kernel needs to unpack the small initrd (about 120 MB; below, it panics
    # before any hook runs: a stop of 143 failed that way at 111) and that least RAM.
    memory = stop - 16
    log = tmp_path / "serial.log"
    result = boot_iso(media / "images/boot.iso", firmware="bios", memory_mb=memory, timeout=600, log=log, marker=BOOT_MARKER)
    serial = log.read_text(errors="replace")
    assert not result.ok
    m = re.search(r"composer: not enough memory: this machine has (\d+) MiB of RAM, this system needs (\d+) MiB", result.reason)
    assert m, f"{result.reason}\n--- serial tail ---\n{serial[-3000:]}"
    assert abs(int(m[1]) - memory) <= 2 and int(m[2]) == stop, result.reason
    assert "Out of memory" not in serial and "COMPOSER-BOOT-OK" not in serial
    print(f"stopped at {memory} MB after {result.seconds:.0f}s")


def one_error_line(proc) -> str:
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("composer: error:")]
    assert len(err) == 1, proc.stderr[-2000:]
    return err[0]


def test_unreachable_source(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    proc = composer(
        "boot-iso",
        "--product",
        "TestProduct",
        "--version",
        "1",
        "--source",
        "http://127.0.0.1:9/nothing/",
        "--nogpgcheck",
        "--cachedir",
        str(tmp_path / "cache"),
        "--workdir",
        str(work),
        str(tmp_path / "out"),
        check=False,
    )
    one_error_line(proc)
    assert not (tmp_path / "out").exists() and list(work.iterdir()) == []
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
