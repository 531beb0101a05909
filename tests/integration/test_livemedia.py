"""`composer livemedia` (livemedia-creator --no-virt) from the test product's live kickstart
(tools/testproduct/live.ks), for real: dnf, the tree's useradd/chpasswd, systemctl --root,
mkfs, mksquashfs, dracut, xorriso and qemu all run.

Each output is built once per module; the ISO boots under SeaBIOS and OVMF, the pxe-live
tree over iPXE and HTTP (TCG: 1-2 minutes each), and each prints what the kickstart made
(its %post installs a unit that does) before the test product's boot marker.
"""

from __future__ import annotations

import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from composer.verify import boot_iso
from testproduct import BOOT_MARKER
from tests.conftest import ROOT, composer

pytestmark = pytest.mark.slow

VOLID = "TestProduct-1-x86_64"
PASSWORD = "Composer-Live-Pw1"  # the kickstart's plain-text user password


def write_kickstart(name: str, repo: Path, dest: Path) -> Path:
    """tools/testproduct/NAME (a test kickstart) in dest with @REPO@ the repository's URL."""
    ks = dest / name
    ks.write_text((ROOT / "tools/testproduct" / name).read_text().replace("@REPO@", f"file://{repo}"))
    return ks


@pytest.fixture(scope="module")
def live_ks(testproduct_repo, tmp_path_factory) -> Path:
    return write_kickstart("live.ks", testproduct_repo, tmp_path_factory.mktemp("ks"))


def livemedia(ks: Path, base: Path, *args: str) -> Path:
    """`composer livemedia ARGS` into base/result; the work directory must be left empty."""
    work = base / "tmp"
    work.mkdir(parents=True)
    proc = composer(
        "livemedia",
        "--no-virt",
        "--ks",
        str(ks),
        "--project",
        "TestProduct",
        "--releasever",
        "1",
        "--tmp",
        str(work),
        "--resultdir",
        str(base / "result"),
        "--logfile",
        str(base / "livemedia.log"),
        *args,
    )
    (base / "stderr.log").write_text(proc.stderr)
    assert list(work.iterdir()) == [], "the work directory was not cleaned up"
    log = (base / "livemedia.log").read_text() + proc.stderr
    assert PASSWORD not in log, "a plain-text password reached the log"
    return base / "result"


@pytest.fixture(scope="module")
def live_iso(live_ks, tmp_path_factory) -> Path:
    return livemedia(live_ks, tmp_path_factory.mktemp("iso"), "--make-iso", "--compression", "lz4")


@pytest.fixture(scope="module")
def live_tar(live_ks, tmp_path_factory) -> Path:
    return livemedia(live_ks, tmp_path_factory.mktemp("tar"), "--make-tar", "--compression", "gzip") / "root.tar.gz"


@pytest.fixture(scope="module")
def live_fsimage(live_ks, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("fsimage")
    return livemedia(live_ks, base, "--make-fsimage", "--fs-label", "LiveTest", "--image-name", "live.img") / "live.img"


def test_iso_layout(live_iso: Path) -> None:
    for rel in ("images/boot.iso", "LiveOS/squashfs.img", "images/efiboot.img", "EFI/BOOT/BOOTX64.EFI", "boot/grub2/grub.cfg"):
        assert (live_iso / rel).is_file(), rel
    assert not (live_iso / "images/install.img").exists()
    for cfg in ("EFI/BOOT/grub.cfg", "boot/grub2/grub.cfg"):
        text = (live_iso / cfg).read_text()
        assert f"root=live:CDLABEL={VOLID} rd.live.image rd.live.dir=LiveOS rd.live.squashimg=squashfs.img" in text
        assert "composer.live=1" in text  # the kickstart's bootloader --append
    listing = subprocess.run(
        ["unsquashfs", "-l", str(live_iso / "LiveOS/squashfs.img")], capture_output=True, text=True, check=True
    ).stdout
    assert "squashfs-root/LiveOS/rootfs.img" in listing


# UEFI: the efiboot.img and grub path boot-iso's UEFI boot proves in CI; make soak boots it here.
@pytest.mark.parametrize("firmware", ["bios", pytest.param("uefi", marks=pytest.mark.soak)])
def test_iso_boots_with_the_kickstart_applied(live_iso: Path, firmware: str, tmp_path: Path) -> None:
    log = tmp_path / f"serial-{firmware}.log"
    result = boot_iso(live_iso / "images/boot.iso", firmware=firmware, memory_mb=768, timeout=900, log=log, marker=BOOT_MARKER)
    serial = log.read_text(errors="replace") if log.exists() else ""
    assert result.ok, f"{result.reason}\n--- serial tail ---\n{serial[-3000:]}"
    m = re.search(r"COMPOSER-LIVE-FACTS host=(\S+) user=(\S+) post=(\S+) keys=(\d+)", serial)
    assert m, serial[-3000:]
    assert m[1] == "composer-live"  # network --hostname
    assert m[2].startswith("uid=1500(tester)") and "(livetest)" in m[2] and "(wheel)" in m[2]  # user, group
    assert m[3] == "made_by_%post_in_the_tree"
    assert m[4] == "1"  # sshkey
    assert "root=live:CDLABEL=" in serial  # through the menu, not -kernel
    print(f"live ISO: {firmware} boot to the marker in {result.seconds:.0f}s at 768 MB")


def _member(tar: tarfile.TarFile, name: str) -> str:
    f = tar.extractfile(f"./{name}")
    assert f is not None, name
    return f.read().decode()


def test_tar_has_what_the_kickstart_made(live_tar: Path) -> None:
    with tarfile.open(live_tar) as tar:
        passwd, group, shadow = (_member(tar, f"etc/{n}") for n in ("passwd", "group", "shadow"))
        assert re.search(r"^tester:x:1500:1500::/home/tester:/bin/bash$", passwd, re.M)
        assert re.search(r"^livetest:x:4321:tester$", group, re.M) and re.search(r"^wheel:x:\d+:tester$", group, re.M)
        assert re.search(r"^root:!", shadow, re.M)  # rootpw --lock
        assert re.search(r"^tester:\$6\$", shadow, re.M) and PASSWORD not in shadow  # --plaintext, hashed
        assert _member(tar, "etc/hostname") == "composer-live\n"
        assert _member(tar, "etc/locale.conf") == "LANG=en_US.UTF-8\n"
        assert _member(tar, "etc/vconsole.conf") == "KEYMAP=us\n"
        assert _member(tar, "etc/composer-live-post") == "made by %post in the tree\n"
        assert _member(tar, "etc/composer-live-nochroot") == "nochroot saw /mnt/sysroot\n"
        assert "composer live spin: %post ran" in _member(tar, "root/ks-post.log")  # %post --log
        assert tar.getmember("./etc/localtime").linkname == "../usr/share/zoneinfo/Etc/UTC"
        wants = tar.getmember("./etc/systemd/system/multi-user.target.wants/composer-boot-check.service")
        assert wants.issym()  # services --enabled
        keys = tar.getmember("./home/tester/.ssh/authorized_keys")
        assert (keys.uid, keys.mode & 0o777) == (1500, 0o600)
        assert "./usr/share/doc" not in tar.getnames()  # %post removed it


def test_fsimage_is_ext4_with_the_tree(live_fsimage: Path) -> None:
    header = subprocess.run(["dumpe2fs", "-h", str(live_fsimage)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"^Filesystem volume name:\s+LiveTest$", header, re.M)  # --fs-label
    passwd = subprocess.run(
        ["debugfs", "-R", "cat /etc/passwd", str(live_fsimage)], capture_output=True, text=True, check=True
    ).stdout
    assert "tester:x:1500:1500" in passwd
    subprocess.run(["e2fsck", "-fn", str(live_fsimage)], capture_output=True, check=True)


@pytest.fixture(scope="module")
def live_pxe(live_ks, tmp_path_factory) -> Path:
    return livemedia(live_ks, tmp_path_factory.mktemp("pxe"), "--make-pxe-live", "--compression", "lz4")


def test_pxe_live_boots_over_http(live_pxe: Path, tmp_path: Path) -> None:
    """lmc's layout; iPXE fetches the kernel and initramfs, dracut's livenet the live image."""
    from composer.verify import boot_netboot, serve_http

    (kernel,) = sorted(p.name for p in live_pxe.glob("vmlinuz-*"))
    initrd = f"initramfs-{kernel.removeprefix('vmlinuz-')}.img"
    assert {kernel, initrd, "live-rootfs.squashfs.img", "PXE_CONFIG"} <= {p.name for p in live_pxe.iterdir()}
    config = (live_pxe / "PXE_CONFIG").read_text()
    assert "root=live:<URL>/live-rootfs.squashfs.img rd.live.image rd.neednet=1 ip=dhcp" in config
    assert "composer.live=1" in config  # bootloader --append
    log = tmp_path / "serial-pxe.log"
    with serve_http(live_pxe) as port:
        url = f"http://10.0.2.2:{port}"
        args = config.split("append ", 1)[1].split("\n")[0].split(" ", 1)[1].replace("<URL>", url)
        (tmp_path / "boot.ipxe").write_text(
            f"#!ipxe\ndhcp\nkernel {url}/{kernel} initrd={initrd} {args} console=ttyS0 composer.check=poweroff\n"
            f"initrd {url}/{initrd}\nboot\n"
        )
        result = boot_netboot(tmp_path, "boot.ipxe", memory_mb=1280, timeout=900, log=log, marker=BOOT_MARKER)
    serial = log.read_text(errors="replace") if log.exists() else ""
    assert result.ok, f"{result.reason}\n--- serial tail ---\n{serial[-3000:]}"
    assert "COMPOSER-LIVE-FACTS host=composer-live" in serial
    print(f"pxe-live: BIOS netboot to the marker in {result.seconds:.0f}s at 1280 MB")
