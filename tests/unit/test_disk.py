"""`composer livemedia --make-disk`: the partition table planned from the kickstart's `part`
lines, the sizes and offsets, GRUB's BIOS boot code patched in, fstab, and the refusals
(one line, FILE:LINE, before any work)."""

from __future__ import annotations

import os
import re
import struct
import subprocess
from pathlib import Path

import pytest

from composer.images.disk import (
    MiB,
    Partition,
    fit,
    fstab,
    install_bios_boot,
    place,
    plan_disk,
    sfdisk_script,
    write_table,
)
from composer.images.diskboot import early_config
from composer.images.sparse import allocated_size, copy_into, create_sparse
from composer.kickstart import load_live_kickstart
from composer.kickstart.system import Disk, Part
from composer.run import ComposerError
from tests.conftest import composer

ROOT = Path(__file__).resolve().parents[2]
LIVE_KS = ROOT / "tools" / "testproduct" / "live.ks"
HEAD = "url --url=file://{repo}\n%packages --nocore\nbash\n%end\n"


def _disk(tmp_path: Path, layout: str) -> Disk:
    (tmp_path / "repo" / "repodata").mkdir(parents=True, exist_ok=True)
    (tmp_path / "repo" / "repodata" / "repomd.xml").write_text("<repomd/>\n")
    ks = tmp_path / "d.ks"
    ks.write_text(layout + HEAD.format(repo=tmp_path / "repo"))
    return load_live_kickstart(ks).system.disk


def _layout(tmp_path: Path, layout: str):
    return plan_disk(_disk(tmp_path, layout), "d.ks")


def test_reqpart_and_root_laid_out_from_one_mib(tmp_path: Path) -> None:
    lay = _layout(tmp_path, "zerombr\nclearpart --all --disklabel=gpt\nreqpart\npart / --fstype=ext4 --size=2048\n")
    got = [(p.number, p.mountpoint, p.role, p.fstype, p.start // MiB, p.size // MiB) for p in lay.partitions]
    assert got == [
        (1, "biosboot", "biosboot", "", 1, 1),
        (2, "/boot/efi", "efi", "vfat", 2, 200),
        (3, "/", "data", "ext4", 202, 2048),
    ]
    assert lay.size == (1 + 1 + 200 + 2048 + 1) * MiB  # lmc: 2 MiB + the partitions
    assert lay.notes == ()  # reqpart asked for them
    assert lay.boot.mountpoint == "/"


def test_boot_partitions_added_when_missing_and_named(tmp_path: Path) -> None:
    lay = _layout(tmp_path, "part / --size=100 --fstype=btrfs\n")
    assert [p.mountpoint for p in lay.partitions] == ["biosboot", "/boot/efi", "/"]
    assert lay.notes == ("biosboot (1 MiB)", "/boot/efi (200 MiB)")


def test_kickstart_order_after_the_boot_partitions(tmp_path: Path) -> None:
    text = (
        "reqpart --add-boot\npart / --size=500\npart swap --size=64\npart /home --size=10 --label=home\npart biosboot --size=2\n"
    )
    lay = _layout(tmp_path, text)
    assert [(p.mountpoint, p.size // MiB) for p in lay.partitions] == [
        ("biosboot", 2),
        ("/boot/efi", 200),
        ("/boot", 1024),
        ("/", 500),
        ("swap", 64),
        ("/home", 10),
    ]
    assert lay.boot.mountpoint == "/boot"
    assert [p.mountpoint for p in lay.data()] == ["/boot", "/home", "/"]  # deepest first, / last
    starts = [p.start for p in lay.partitions]
    assert all(s % MiB == 0 for s in starts) and starts == sorted(starts)


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        ("part / --fstype=xfs --size=100\n", "d.ks:1: part / --fstype=xfs: --make-disk makes ext4, btrfs"),
        ("part raid.01 --size=100\npart / --size=10\n", "d.ks:1: part raid.01: RAID, LVM and btrfs volumes"),
        ("part / --size=100 --ondisk=sdb\n", "d.ks:1: part / --ondisk: not supported by --make-disk"),
        ("part / --size=100 --encrypted --passphrase=x\n", "part / --encrypted: not supported by --make-disk"),
        ("part /\n", "d.ks:1: part /: give --size (MiB) or --grow"),
        (
            "part / --size=100\npart /boot/efi --size=8 --fstype=efi\n",
            "d.ks:2: part /boot/efi --size=8: too small, at least 16 MiB",
        ),
        (
            "part / --size=100\npart /boot --size=10 --fstype=vfat\n",
            "part /boot --fstype=vfat: the EFI system partition is /boot/efi",
        ),
        ("part / --size=100\npart swap --size=10 --grow\n", "part swap --grow: only a filesystem from the tree can grow"),
        ("part /home --size=100\n", "no `part /`: --make-disk needs the root partition"),
        ("part / --size=100\npart / --size=200\n", "d.ks:2: part /: given twice"),
        ("part /proc --size=100\npart / --size=10\n", "part /proc: not a mount point --make-disk can fill"),
        (
            "clearpart --all --disklabel=msdos\npart / --size=100\n",
            "clearpart --disklabel=msdos: --make-disk makes GPT disks only",
        ),
    ],
)
def test_refused_layouts(tmp_path: Path, layout: str, expected: str) -> None:
    with pytest.raises(ComposerError) as e:
        _layout(tmp_path, layout)
    assert expected in str(e.value)
    assert "\n" not in str(e.value)


def test_grow_takes_what_the_tree_needs_and_a_fixed_size_must_hold_it(tmp_path: Path) -> None:
    lay = _layout(tmp_path, "reqpart\npart / --size=100 --grow\npart /srv --size=50\n")
    grown = fit(lay, {"/": 700 * MiB + 1, "/srv": 50 * MiB})
    by = {p.mountpoint: p for p in grown.partitions}
    assert by["/"].size == 701 * MiB  # rounded up to the MiB
    assert by["/srv"].start == by["/"].start + 701 * MiB  # the rest moves along
    assert grown.size == lay.size + 601 * MiB
    with pytest.raises(ComposerError) as e:
        fit(lay, {"/srv": 80 * MiB})
    assert "d.ks:3: part /srv --size=50: too small for what goes there (about 80 MiB as ext4); raise --size or add --grow" in str(
        e.value
    )


def test_sfdisk_writes_the_planned_table(tmp_path: Path) -> None:
    lay = _layout(tmp_path, "reqpart\npart / --size=40\npart swap --size=8\n")
    guids = {p.number: f"00000000-0000-4000-8000-00000000000{p.number}" for p in lay.partitions}
    disk_guid = "11111111-2222-4333-8444-555555555555"
    assert 'type=21686148-6449-6E6F-744E-656564454649, uuid=00000000-0000-4000-8000-000000000001, name="biosboot"' in (
        sfdisk_script(lay, disk_guid, guids)
    )
    disk = tmp_path / "disk.img"
    write_table(disk, lay, disk_guid, guids)
    assert disk.stat().st_size == lay.size and allocated_size(disk) < MiB  # sparse
    dump = subprocess.run(["sfdisk", "--dump", str(disk)], capture_output=True, text=True, check=True).stdout
    assert "label: gpt" in dump and f"label-id: {disk_guid}" in dump
    table = [tuple(map(int, m)) for m in re.findall(r"start=\s*(\d+), size=\s*(\d+)", dump)]
    assert table == [(p.start // 512, p.size // 512) for p in lay.partitions]
    assert "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" in dump  # / as the x86-64 root type


def test_bios_boot_code_patched_as_grub_install_does(tmp_path: Path) -> None:
    lay = _layout(tmp_path, "reqpart\npart / --size=8\n")
    disk = tmp_path / "disk.img"
    write_table(
        disk,
        lay,
        "11111111-2222-4333-8444-555555555555",
        {p.number: str(p.number) * 8 + "-0000-4000-8000-" + "0" * 12 for p in lay.partitions},
    )
    mbr_before = disk.read_bytes()[:512]
    boot = tmp_path / "boot.img"
    boot.write_bytes(bytes(range(256)) * 2)
    core = tmp_path / "core.img"
    core.write_bytes(b"\xaa" * 512 * 40)
    biosboot = lay.get("biosboot")
    install_bios_boot(disk, boot, core, biosboot)
    with disk.open("rb") as f:
        mbr = f.read(512)
        f.seek(biosboot.start)
        first = f.read(512)
    assert struct.unpack_from("<Q", mbr, 0x5C)[0] == 2048  # core.img's sector in boot.img
    assert mbr[:0x5C] == boot.read_bytes()[:0x5C] and mbr[0x64:440] == boot.read_bytes()[0x64:440]
    assert mbr[440:] == mbr_before[440:]  # disk signature, protective MBR entry, 0x55AA kept
    assert struct.unpack_from("<Q", first, 500)[0] == 2049  # the rest of core.img: the next sector
    with pytest.raises(ComposerError, match="does not fit the BIOS boot partition"):
        core.write_bytes(b"\0" * (2 * MiB))
        install_bios_boot(disk, boot, core, biosboot)


def test_fstab_by_uuid() -> None:
    lay = place(
        [
            Partition(0, "biosboot", "biosboot", "", MiB),
            Partition(0, "/boot/efi", "efi", "vfat", 16 * MiB),
            Partition(0, "/", "data", "btrfs", 99 * MiB),
            Partition(0, "/var", "data", "ext4", 9 * MiB),
            Partition(0, "swap", "swap", "swap", 9 * MiB),
        ]
    )
    text = fstab(lay, {1: "x", 2: "ABCD-0123", 3: "r-uuid", 4: "v-uuid", 5: "s-uuid"})
    assert text.splitlines()[1:] == [
        "UUID=r-uuid / btrfs defaults 0 0",
        "UUID=v-uuid /var ext4 defaults 0 2",
        "UUID=ABCD-0123 /boot/efi vfat umask=0077,shortname=winnt 0 2",
        "UUID=s-uuid none swap defaults 0 0",
    ]


def test_early_config_finds_boot_by_uuid() -> None:
    assert early_config("u-1", "/boot/grub/grub.cfg") == (
        "search --no-floppy --fs-uuid --set=root u-1\nset prefix=($root)/boot/grub\nconfigfile ($root)/boot/grub/grub.cfg\n"
    )


def test_copy_into_keeps_holes(tmp_path: Path) -> None:
    src, dst = tmp_path / "part.img", tmp_path / "disk.img"
    create_sparse(src, 8 * MiB)
    with src.open("r+b") as f:
        f.seek(3 * MiB)
        f.write(b"data")
    create_sparse(dst, 16 * MiB)
    copy_into(src, dst, 4 * MiB)
    with dst.open("rb") as f:
        f.seek(7 * MiB)
        assert f.read(4) == b"data"
    assert allocated_size(dst) <= MiB
    assert os.stat(dst).st_size == 16 * MiB


def test_refused_on_the_command_line_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "repo" / "repodata").mkdir(parents=True)
    (tmp_path / "repo" / "repodata" / "repomd.xml").write_text("<repomd/>\n")
    ks = tmp_path / "live.ks"
    text = LIVE_KS.read_text().replace("@REPO@", f"file://{tmp_path}/repo")
    ks.write_text(text.replace("part / --fstype=ext4 --size=2048", "part / --fstype=xfs --size=2048"))
    where = ("--tmp", str(tmp_path / "tmp"), "--resultdir", str(tmp_path / "out"), "--logfile", str(tmp_path / "lmc.log"))
    proc = composer("livemedia", "--no-virt", "--make-disk", "--ks", str(ks), *where, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "live.ks:" in line and "part / --fstype=xfs: --make-disk makes ext4, btrfs" in line
    assert not (tmp_path / "out").exists()


def test_part_model_reads_the_options(tmp_path: Path) -> None:
    disk = _disk(
        tmp_path, "reqpart --add-boot\nclearpart --all --disklabel=gpt\npart / --size=10 --grow --label=r --maxsize=90\n"
    )
    assert disk.reqpart and disk.reqpart_boot and disk.disklabel == "gpt"
    assert disk.parts == (Part("/", "", 10, grow=True, label="r", lineno=3, unsupported=("--maxsize",)),)


def test_partition_sized_filesystem_with_its_uuid(tmp_path: Path) -> None:
    from composer.config import RootfsType
    from composer.images.rootfs import make_rootfs

    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("disk\n")
    img = tmp_path / "root.img"
    uuid = "0b5e3a58-3c2e-4d7b-9a55-6f7c1d2e3f40"
    make_rootfs(tree, img, RootfsType.EXT4, free=0, label="r", image_size=64 * MiB, fs_uuid=uuid)
    assert img.stat().st_size == 64 * MiB
    header = subprocess.run(["dumpe2fs", "-h", str(img)], capture_output=True, text=True, check=True).stdout
    assert re.search(rf"^Filesystem UUID:\s+{uuid}$", header, re.M)
    (tree / "big").write_bytes(os.urandom(12 * MiB))
    with pytest.raises(ComposerError, match=r"root.img: 8 MiB too small for"):
        make_rootfs(tree, img, RootfsType.EXT4, free=0, image_size=8 * MiB, fs_uuid=uuid)


def test_efi_partition_of_its_size_and_serial(tmp_path: Path) -> None:
    from composer.images.efiboot import make_efiboot

    f = tmp_path / "BOOTX64.EFI"
    f.write_bytes(b"MZ" + b"\0" * 4096)
    img = make_efiboot([(f, "EFI/BOOT/BOOTX64.EFI")], tmp_path / "esp.img", label="EFI", size_kib=32 * 1024, serial="abcd0123")
    assert img.stat().st_size == 32 * MiB
    blkid = subprocess.run(["blkid", "-o", "value", "-s", "UUID", str(img)], capture_output=True, text=True).stdout.strip()
    assert blkid == "ABCD-0123"
    with pytest.raises(ComposerError, match="too small for its files"):
        make_efiboot([(f, "EFI/BOOT/BOOTX64.EFI")], tmp_path / "esp2.img", size_kib=0)
