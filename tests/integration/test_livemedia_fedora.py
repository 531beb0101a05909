"""`composer livemedia --make-iso` of the Fedora-shaped product's live spin
(tools/testproduct/fedora-live.ks, shaped as Fedora's live kickstarts: comps groups from
tools/testproduct/fedora-comps.xml, a user, services, %post in and out of the tree), for real:
dnf, the tree's useradd and systemctl, mksquashfs, dracut, xorriso and qemu all run. The ISO
boots under SeaBIOS and OVMF through Fedora's live menu (its default entry checks the medium
first, after grub's 60 s) and prints what the kickstart made before the boot marker.

A fresh Fedora-shaped product (`make fedoraproduct`), a build of some minutes and two TCG boots:
make soak, not make test (the small product's live spin is booted in CI, test_livemedia.py).
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from composer.verify import boot_iso
from testproduct import BOOT_MARKER
from tests.conftest import BUILD
from tests.integration.test_livemedia import livemedia, write_kickstart

pytestmark = [pytest.mark.slow, pytest.mark.soak]

VOLID = "Fedora-43-x86_64"


@pytest.fixture(scope="module")
def fedora_live_iso(tmp_path_factory) -> Path:
    from testproduct.fedoraproduct import build_fedoraproduct

    repo = build_fedoraproduct(BUILD / "fedoraproduct")  # a product that cannot be built fails the test
    base = tmp_path_factory.mktemp("fedora-live")
    ks = write_kickstart("fedora-live.ks", repo, base)
    t0 = time.monotonic()
    result = livemedia(ks, base, "--make-iso", "--rootfs-type", "squashfs-ext4", "--compression", "lz4", product=("Fedora", "43"))
    iso = result / "images/boot.iso"
    print(f"fedora live ISO: built in {time.monotonic() - t0:.0f}s, {iso.stat().st_size / (1 << 20):.0f} MiB")
    return result


@pytest.fixture(scope="module")
def rootfs(fedora_live_iso: Path, tmp_path_factory) -> Path:
    """LiveOS/rootfs.img (ext4) out of the ISO's squashfs.img, read with debugfs: no mount."""
    dest = tmp_path_factory.mktemp("rootfs") / "sq"
    squash = fedora_live_iso / "LiveOS/squashfs.img"
    subprocess.run(["unsquashfs", "-n", "-d", str(dest), str(squash), "LiveOS/rootfs.img"], capture_output=True, check=True)
    return dest / "LiveOS/rootfs.img"


def debugfs(img: Path, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, str(img)], capture_output=True, text=True, check=True).stdout


def has(img: Path, path: str) -> bool:
    # debugfs prints the inode for a path there, "File not found by ext2_lookup" on stderr otherwise
    return "Inode:" in debugfs(img, f"stat {path}")


def test_live_menus_are_fedoras(fedora_live_iso: Path) -> None:
    for cfg in ("EFI/BOOT/grub.cfg", "boot/grub2/grub.cfg"):
        text = (fedora_live_iso / cfg).read_text()
        assert "menuentry 'Start Fedora 43'" in text and "menuentry 'Test this media & start Fedora 43'" in text
        assert f"root=live:CDLABEL={VOLID} rd.live.image rd.live.dir=LiveOS rd.live.squashimg=squashfs.img" in text
        assert "console=ttyS0 composer.check=poweroff" in text  # the kickstart's bootloader --append
        assert "inst.stage2" not in text


def test_rootfs_has_the_groups_and_what_the_kickstart_made(rootfs: Path) -> None:
    # @core (mandatory), @standard (mandatory and default), @system-tools (mandatory and default)
    for path in ("/usr/bin/bash", "/usr/sbin/sshd", "/usr/sbin/rsyslogd", "/usr/bin/wget", "/usr/bin/dig", "/usr/bin/ncat"):
        assert has(rootfs, path), path
    assert not has(rootfs, "/usr/bin/nano")  # -nano: taken out of @standard
    assert not has(rootfs, "/usr/sbin/smartctl")  # @standard's optional package
    assert not has(rootfs, "/usr/sbin/rpc.statd")  # @system-tools' optional nfs-utils
    passwd, group, shadow = (debugfs(rootfs, f"cat /etc/{n}") for n in ("passwd", "group", "shadow"))
    assert re.search(r"^liveuser:x:1000:\d+:Live System User:/home/liveuser:", passwd, re.M)
    assert re.search(r"^wheel:x:\d+:liveuser$", group, re.M)
    assert re.search(r"^root:!", shadow, re.M)  # rootpw --lock
    assert debugfs(rootfs, "cat /etc/hostname") == "fedora-live\n"
    assert debugfs(rootfs, "cat /etc/locale.conf") == "LANG=en_US.UTF-8\n"
    assert "US/Eastern" in debugfs(rootfs, "stat /etc/localtime")  # the link's target
    assert debugfs(rootfs, "cat /etc/fedora-live-post") == "made by %post in the tree\n"
    assert debugfs(rootfs, "cat /etc/fedora-live-nochroot").startswith("nochroot saw /")
    assert "fedora live spin: %post ran" in debugfs(rootfs, "cat /root/fedora-live-post.log")
    assert not has(rootfs, "/usr/share/doc")  # %post removed it


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_iso_boots_with_the_kickstart_applied(fedora_live_iso: Path, firmware: str, tmp_path: Path) -> None:
    log = tmp_path / f"serial-{firmware}.log"
    iso = fedora_live_iso / "images/boot.iso"
    # Enter at the menu (lorax's live default: the media check after 60 s) starts that entry at once.
    result = boot_iso(iso, firmware=firmware, memory_mb=1024, timeout=1200, log=log, marker=BOOT_MARKER, enter=True)
    serial = log.read_text(errors="replace") if log.exists() else ""
    assert result.ok, f"{result.reason}\n--- serial tail ---\n{serial[-3000:]}"
    facts = r"FEDORA-LIVE-FACTS host=(\S+) user=(\S+) post=(\S+) release=(\S+) rsyslog=(\S+) ssh=(\S+) target=(\S+)"
    m = re.search(facts, serial)
    assert m, serial[-3000:]
    assert m[1] == "fedora-live"  # network --hostname
    assert m[2].startswith("uid=1000(liveuser)") and "(wheel)" in m[2]  # user --groups
    assert m[3] == "made_by_%post_in_the_tree"
    assert m[4].startswith("Fedora")  # the product's fedora-release, from @core
    assert (m[5], m[6]) == ("enabled", "disabled")  # services --enabled / --disabled
    assert m[7] == "multi-user.target"  # %post's set-default
    assert "root=live:CDLABEL=" + VOLID in serial  # Fedora's live menu, not -kernel
    print(f"fedora live ISO: {firmware} boot to the marker in {result.seconds:.0f}s at 1024 MB")
