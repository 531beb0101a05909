"""`composer livemedia` (livemedia-creator --no-virt) from the test product's live kickstart
(tools/testproduct/live.ks), for real: dnf, the tree's useradd/chpasswd, systemctl --root,
mkfs, mksquashfs, dracut, xorriso and qemu all run.

Each output is built once per module; the ISO boots under SeaBIOS and OVMF, the pxe-live
tree over iPXE and HTTP (TCG: 1-2 minutes each), and each prints what the kickstart made
(its %post installs a unit that does) before the test product's boot marker.
"""

from __future__ import annotations

import json
import re
import shutil
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


def livemedia(ks: Path, base: Path, *args: str, product: tuple[str, str] = ("TestProduct", "1")) -> Path:
    """`composer livemedia ARGS` into base/result; the work directory must be left empty."""
    work = base / "tmp"
    work.mkdir(parents=True)
    proc = composer(
        "livemedia",
        "--no-virt",
        "--ks",
        str(ks),
        "--project",
        product[0],
        "--releasever",
        product[1],
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


@pytest.fixture(scope="module")
def live_iso_osmin(live_ks, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("osmin")
    return livemedia(live_ks, base, "--make-iso", "--compression", "lz4", "--rootfs-type", "squashfs-ext4", "--osmin")


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


# Both firmwares: the live ISO's own menus and efiboot.img (issue 21: BIOS and UEFI in CI).
@pytest.mark.parametrize("firmware", ["bios", "uefi"])
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
        # %pre --log=/tmp/..., copied in by %post --nochroot --log=/mnt/sysimage/...
        assert "composer live spin: %pre ran" in _member(tar, "root/ks-pre.log")
        assert "composer live spin: %post --nochroot ran" in _member(tar, "root/ks-post-nochroot.log")
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


def boot_root_image(image: Path, label: str, tmp_path: Path) -> str:
    """Boot a root filesystem image as a disk (qemu's snapshot: the image is not changed) with
    the kernel and the /boot/initramfs-KVER.img it holds, as an installed system boots; the
    serial log."""
    from composer.verify import boot_argv, qemu_argv

    ls = subprocess.run(["debugfs", "-R", "ls /boot", str(image)], capture_output=True, text=True, check=True).stdout
    (kver,) = re.findall(r"vmlinuz-(\S+)", ls)
    assert f"initramfs-{kver}.img" in ls, ls
    for name in (f"vmlinuz-{kver}", f"initramfs-{kver}.img"):
        subprocess.run(["debugfs", "-R", f"dump /boot/{name} {tmp_path / name}", str(image)], capture_output=True, check=True)
    argv = qemu_argv(
        tmp_path / f"vmlinuz-{kver}",
        tmp_path / f"initramfs-{kver}.img",
        memory_mb=512,
        append=f"root=LABEL={label} rw composer.check=poweroff",
        base_append="console=ttyS0",
        extra_qemu_args=["-drive", f"file={image},format=raw,if=virtio,snapshot=on"],
    )
    log = tmp_path / "serial.log"
    result = boot_argv(argv, memory_mb=512, timeout=900, marker=BOOT_MARKER, log=log)
    serial = log.read_text(errors="replace") if log.exists() else ""
    assert result.ok, f"{result.reason}\n--- serial tail ---\n{serial[-3000:]}"
    print(f"{image.name}: boot from the disk to the marker in {result.seconds:.0f}s at 512 MB")
    return serial


def test_fsimage_boots_as_a_disk(live_fsimage: Path, tmp_path: Path) -> None:
    """The kernel package's /boot/initramfs (as kernel-install leaves it) mounts the image as /."""
    serial = boot_root_image(live_fsimage, "LiveTest", tmp_path)
    assert "COMPOSER-LIVE-FACTS host=composer-live" in serial and "post=made_by_%post_in_the_tree" in serial


@pytest.mark.soak  # the tree the fsimage holds, which boots in CI
def test_tar_boots_unpacked_onto_a_disk(live_tar: Path, tmp_path: Path) -> None:
    """The tar unpacked (numeric owners, xattrs) onto an ext4 filesystem made from it with
    mkfs.ext4 -d, as one deploys it onto a disk; booted with its own kernel and initramfs."""
    root, image = tmp_path / "root", tmp_path / "root.img"
    root.mkdir()
    subprocess.run(["tar", "--numeric-owner", "--xattrs", "--acls", "-xzf", str(live_tar), "-C", str(root)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-L", "TarRoot", "-d", str(root), str(image), "2G"], check=True)
    shutil.rmtree(root)
    serial = boot_root_image(image, "TarRoot", tmp_path)
    assert "COMPOSER-LIVE-FACTS host=composer-live" in serial


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


# --- persistence: the live ISO on a USB stick with a persistent overlay -------------------------
STICK_LABEL = "LIVEUSB"
STICK_UUID = "5c0b0c0e-1a2b-4c3d-8e9f-00000000c0de"
STICK_OVERLAY = f"overlay-{STICK_LABEL}-{STICK_UUID}"  # dmsquash-live's name: LiveOS/overlay-LABEL-UUID


def write_stick(media: Path, disk: Path) -> None:
    """The stick as livecd-iso-to-disk --format ext4 --overlay-size-mb lays it out: the medium's
    tree on one ext4 filesystem (mkfs.ext4 -d: no mount, no loop device)."""
    disk.unlink(missing_ok=True)
    size_mb = sum(p.stat().st_size for p in media.rglob("*") if p.is_file()) // (1 << 20) + 64
    subprocess.run(
        ["mkfs.ext4", "-q", "-L", STICK_LABEL, "-U", STICK_UUID, "-d", str(media), str(disk), f"{size_mb}M"], check=True
    )


def read_overlay(disk: Path, dest: Path) -> None:
    """The overlay file back off the stick, as a user's automount would show it (debugfs: no mount).
    The guest powers off with the stick mounted under its root (no pivot back into the initramfs):
    its last writes are in ext4's journal, which the mount replays, and here e2fsck."""
    fsck = subprocess.run(["e2fsck", "-fy", str(disk)], capture_output=True, text=True)
    assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr  # 1: the journal replayed
    dest.unlink()
    subprocess.run(["debugfs", "-R", f"dump /LiveOS/{STICK_OVERLAY} {dest}", str(disk)], capture_output=True, check=True)
    assert dest.stat().st_size == 256 << 20


def boot_stick(live_iso: Path, disk: Path, log: Path) -> int:
    """Boot the stick (the ISO's kernel and initramfs, the stick's boot line) to the marker;
    the number of earlier boots the live system found in its persistent /var/lib."""
    from composer.verify import boot_argv, qemu_argv

    append = (
        f"root=live:LABEL={STICK_LABEL} rd.live.image rd.live.dir=LiveOS rd.live.squashimg=squashfs.img "
        f"rd.live.overlay=LABEL={STICK_LABEL} composer.check=poweroff"
    )
    pxe = live_iso / "images/pxeboot"
    argv = qemu_argv(
        pxe / "vmlinuz",
        pxe / "initrd.img",
        memory_mb=768,
        append=append,
        base_append="console=ttyS0",
        extra_qemu_args=["-drive", f"file={disk},format=raw,if=virtio"],
    )
    result = boot_argv(argv, memory_mb=768, timeout=900, marker=BOOT_MARKER, log=log)
    serial = log.read_text(errors="replace") if log.exists() else ""
    assert result.ok, f"{result.reason}\n--- serial tail ---\n{serial[-3000:]}"
    m = re.search(r"COMPOSER-LIVE-PERSIST earlier_boots=(\d+)", serial)
    assert m, serial[-3000:]
    print(f"live stick: boot to the marker in {result.seconds:.0f}s at 768 MB, {m[1]} earlier boots kept")
    return int(m[1])


def overlay_status(media: Path) -> dict:
    return json.loads(composer("overlay", "status", str(media), "--json").stdout)


def test_persistent_overlay_survives_a_reboot_and_merges(live_iso: Path, tmp_path: Path) -> None:
    """The change (a line each boot adds to /var/lib) is kept by the stick's dm-snapshot overlay
    across a reboot; `composer overlay status` sees it, `overlay merge` folds it into a new
    squashfs.img and empties the overlay, and the stick boots from the merged image with it."""
    media = tmp_path / "stick"
    (media / "LiveOS").mkdir(parents=True)
    shutil.copyfile(live_iso / "LiveOS/squashfs.img", media / "LiveOS/squashfs.img")
    overlay = media / "LiveOS" / STICK_OVERLAY
    with overlay.open("wb") as f:  # sparse zeros: a fresh store, the kernel writes its header
        f.truncate(256 << 20)
    disk = tmp_path / "stick.img"
    write_stick(media, disk)
    assert boot_stick(live_iso, disk, tmp_path / "serial-1.log") == 0
    assert boot_stick(live_iso, disk, tmp_path / "serial-2.log") == 1  # kept across the reboot

    read_overlay(disk, overlay)
    used = overlay_status(media)
    assert used["kind"] == "dm-snapshot" and used["valid"] and used["exceptions"] > 0, used
    old = (media / "LiveOS/squashfs.img").read_bytes()
    composer("overlay", "merge", str(media), "--compression", "lz4")
    assert (media / "LiveOS/squashfs.img").read_bytes() != old
    print(f"overlay before the merge: {used['allocated_bytes']} bytes in {used['exceptions']} chunks")
    empty = overlay_status(media)
    assert empty["valid"] and empty["exceptions"] == 0, empty  # reset: a store with no chunks

    write_stick(media, disk)
    assert boot_stick(live_iso, disk, tmp_path / "serial-3.log") == 2  # both boots' lines, now in squashfs.img


def _ext4_blocks(img: Path) -> int:
    header = subprocess.run(["dumpe2fs", "-h", str(img)], capture_output=True, text=True, check=True).stdout
    m = re.search(r"^Block count:\s+(\d+)$", header, re.M)
    assert m, header
    return int(m[1])


def test_osmin_delta_applies_to_the_isos_rootfs(live_iso_osmin: Path, tmp_path: Path) -> None:
    """--osmin: the minimized-install delta in the ISO's squashfs.img, beside rootfs.img; applied to
    that rootfs.img (`composer delta apply`, no device-mapper) it gives a smaller, clean ext4 with
    what the kickstart made."""
    subprocess.run(
        ["unsquashfs", "-n", "-d", str(tmp_path / "sq"), str(live_iso_osmin / "LiveOS/squashfs.img")],
        capture_output=True,
        check=True,
    )
    liveos = tmp_path / "sq/LiveOS"
    assert sorted(p.name for p in liveos.iterdir()) == ["osmin.img.gz", "rootfs.img"]
    minimal = tmp_path / "minimal.img"
    composer("delta", "apply", str(liveos / "rootfs.img"), str(liveos / "osmin.img.gz"), "-o", str(minimal))
    subprocess.run(["e2fsck", "-fn", str(minimal)], capture_output=True, check=True)
    full, small = _ext4_blocks(liveos / "rootfs.img"), _ext4_blocks(minimal)
    assert small < full
    post = subprocess.run(
        ["debugfs", "-R", "cat /etc/composer-live-post", str(minimal)], capture_output=True, text=True, check=True
    ).stdout
    assert post == "made by %post in the tree\n"
    gz = (liveos / "osmin.img.gz").stat().st_size
    print(f"osmin: rootfs.img {full} blocks, minimized {small}; the delta {gz} bytes gzip-compressed")
