"""`composer livemedia --make-disk` from the test product's disk kickstart
(tools/testproduct/disk.ks), for real: dnf, dracut, sfdisk, mkfs.ext4 -d, mkfs.fat and
mtools, mkswap, the tree's grub-mkimage, then qemu booting the disk through its own GRUB
under SeaBIOS and OVMF to the test product's marker.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from composer.verify import boot_disk
from testproduct import BOOT_MARKER
from tests.integration.test_livemedia import livemedia, write_kickstart

pytestmark = pytest.mark.slow

NAME = "testdisk.img"


@pytest.fixture(scope="module")
def disk_image(testproduct_repo, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("disk")
    ks = write_kickstart("disk.ks", testproduct_repo, base)
    return livemedia(ks, base / "build", "--make-disk", "--image-name", NAME, "--fs-label", "unused") / NAME


def _table(disk: Path) -> list[dict[str, Any]]:
    dump = subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True, check=True).stdout
    return json.loads(dump)["partitiontable"]["partitions"]


def _debugfs(disk: Path, offset: int, request: str) -> str:
    # e2fsprogs opens "FILE?offset=N": the root filesystem read in place, no loop device.
    proc = subprocess.run(["debugfs", "-R", request, f"{disk}?offset={offset}"], capture_output=True, text=True, check=True)
    return proc.stdout


def test_disk_layout_and_contents(disk_image: Path) -> None:
    parts = _table(disk_image)
    types = [p["type"] for p in parts]
    assert types == [
        "21686148-6449-6E6F-744E-656564454649",  # BIOS boot (reqpart)
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",  # EFI system (reqpart)
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",  # / (part / --grow)
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",  # swap
    ]
    assert [p["start"] for p in parts][:3] == [2048, 4096, 4096 + 200 * 2048]
    assert parts[3]["size"] == 32 * 2048
    root_offset = parts[2]["start"] * 512
    fstab = _debugfs(disk_image, root_offset, "cat /etc/fstab")
    assert re.search(r"^UUID=\S+ / ext4 defaults 0 1$", fstab, re.M)
    assert re.search(r"^UUID=[0-9A-F]{4}-[0-9A-F]{4} /boot/efi vfat ", fstab, re.M)
    assert re.search(r"^UUID=\S+ none swap ", fstab, re.M)
    grub_cfg = _debugfs(disk_image, root_offset, "cat /boot/grub/grub.cfg")
    assert "console=ttyS0 composer.check=poweroff composer.disk=1" in grub_cfg  # bootloader --append
    assert "root=UUID=" in grub_cfg and "linux /boot/vmlinuz-" in grub_cfg
    home = _debugfs(disk_image, root_offset, "stat /home/tester")
    assert re.search(r"User:\s+1500\s+Group:\s+1500", home)  # files keep their owners
    assert re.search(r"volume name:\s+testroot$", _debugfs(disk_image, root_offset, "stats"), re.M)  # part --label
    esp = subprocess.run(
        ["mdir", "-i", f"{disk_image}@@{parts[1]['start'] * 512}", "::/EFI/BOOT"],
        capture_output=True,
        text=True,
        check=True,
        env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"},
    ).stdout
    assert "BOOTX64  EFI" in esp
    assert disk_image.read_bytes()[510:512] == b"\x55\xaa"


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_disk_boots(disk_image: Path, firmware: str, tmp_path: Path) -> None:
    log = tmp_path / f"serial-{firmware}.log"
    result = boot_disk(disk_image, firmware=firmware, memory_mb=512, timeout=900, log=log, marker=BOOT_MARKER)
    serial = log.read_text(errors="replace") if log.exists() else ""
    assert result.ok, f"{result.reason}\n--- serial tail ---\n{serial[-3000:]}"
    m = re.search(r"COMPOSER-DISK-FACTS (.*)", serial)
    assert m, serial[-3000:]
    facts = dict(kv.split("=", 1) for kv in m[1].split())
    assert facts["firmware"] == firmware
    assert facts["root"] == "/dev/vda3" and facts["rootfs"] == "ext4" and facts["rootopts"] == "rw"
    assert facts["efi"] == "vfat" and facts["swap"] == "/dev/vda4,"
    assert facts["host"] == "composer-disk"
    print(f"disk: {firmware} boot to the marker in {result.seconds:.0f}s at 512 MB")


def test_disk_as_an_ordinary_user_keeps_package_owners(testproduct_repo, tmp_path: Path) -> None:
    """The same kickstart built by a user made for the purpose with the `livemedia-creator` it
    pip-installed (composer re-executes in a user namespace): files in the disk keep their
    packages' and the kickstart's owners."""
    import os
    import shutil
    import tempfile

    from builder_user import as_user, ordinary_user, pip_install

    if os.geteuid() != 0:
        pytest.skip("needs root: the test creates an ordinary user with useradd")
    with ordinary_user("composer-rd-") as user:
        base = Path(tempfile.mkdtemp(prefix="composer-rootless-disk-", dir="/var/tmp"))
        try:
            for d in (base, base / "work"):
                d.mkdir(exist_ok=True)
                d.chmod(0o755)
                shutil.chown(d, user.pw_uid, user.pw_gid)
            repo = base / "repo"
            shutil.copytree(testproduct_repo, repo)
            ks = write_kickstart("disk.ks", repo, base)
            lmc = str(pip_install(user, base) / "livemedia-creator")
            argv = [lmc, "--no-virt", "--make-disk", "--ks", str(ks), "--project"]
            argv += ["TestProduct", "--releasever", "1", "--tmp", str(base / "work"), "--resultdir", str(base / "out")]
            proc = as_user(user, [*argv, "--logfile", str(base / "livemedia.log")], {}, timeout=1800)
            assert proc.returncode == 0, proc.stderr[-4000:]
            disk = base / "out" / "disk.img"
            assert disk.stat().st_uid == user.pw_uid  # the output is the user's
            root_offset = _table(disk)[2]["start"] * 512
            assert re.search(r"User:\s+1500\s+Group:\s+1500", _debugfs(disk, root_offset, "stat /home/tester"))
            groups = {
                f[0]: int(f[2])
                for ln in _debugfs(disk, root_offset, "cat /etc/group").splitlines()
                if len(f := ln.split(":")) > 2
            }
            st = _debugfs(disk, root_offset, "stat /usr/bin/chage")
            assert re.search(rf"User:\s+0\s+Group:\s+{groups['shadow']}\b", st) and re.search(r"Mode:\s+02755\b", st), st
        finally:
            shutil.rmtree(base, ignore_errors=True)
