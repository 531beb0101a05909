"""boot.iso building blocks: volume ids, xorriso command lines, GRUB images, efiboot.img,
and a small real hybrid ISO (xorriso, mtools and grub-mkimage are fast)."""

import shutil
import subprocess
from pathlib import Path

import pytest

from composer.images import efiboot, iso
from composer.run import ComposerError
from tests.isoread import el_torito_platforms, el_torito_report, mbr_partitions

HOST_GRUB = Path("/usr/lib/grub/i386-pc/kernel.img").is_file() and Path("/usr/lib/grub/x86_64-efi/kernel.img").is_file()
TOOLS = all(shutil.which(t) for t in ("xorriso", "mkfs.fat", "mcopy", "mmd", "grub-mkimage", "implantisomd5", "checkisomd5"))
needs_tools = pytest.mark.skipif(not (HOST_GRUB and TOOLS), reason="host grub/xorriso/mtools/isomd5sum missing")


def test_default_volid():
    assert iso.default_volid("TestProduct", "1", "x86_64") == "TestProduct-1-x86_64"
    assert iso.default_volid("Fedora Server", "43", "x86_64") == "Fedora-Server-43-x86_64"


@pytest.mark.parametrize("volid", ["Fedora-43-x86_64", "A", "a.b_c-d", "X" * 32])
def test_good_volids(volid):
    assert iso.check_volid(volid) == volid


@pytest.mark.parametrize(
    "volid,words",
    [
        ("X" * 33, "33 characters, at most 32"),
        ("", "must not be empty"),
        ("Fedora 43", "not allowed"),
        ("a=b", "not allowed"),
        ("lbl'x", "not allowed"),
    ],
)
def test_bad_volids(volid, words):
    with pytest.raises(ComposerError, match=words):
        iso.check_volid(volid)


def test_xorriso_argv_grub2_layout(tmp_path):
    bios = iso.BiosBoot("grub2", "images/eltorito.img", "boot.cat", Path("/g/boot_hybrid.img"))
    argv = iso.xorriso_argv(
        tmp_path / "o.iso", "VOL", [("images/a=b.img", Path("/x/a=b.img"))], bios=bios, efiboot=Path("/e/efiboot.img")
    )
    assert argv[:3] == ["xorriso", "-as", "mkisofs"]
    s = " ".join(argv)
    assert "-V VOL" in s and "-b images/eltorito.img" in s and "--grub2-boot-info" in s
    assert "--grub2-mbr /g/boot_hybrid.img" in s
    assert "-append_partition 2 0xef /e/efiboot.img" in s
    assert "-eltorito-alt-boot -e --interval:appended_partition_2:all:: -no-emul-boot" in s
    assert argv[-1] == "images/a\\=b.img=/x/a\\=b.img"


def test_xorriso_argv_isolinux_layout(tmp_path):
    bios = iso.BiosBoot("isolinux", "isolinux/isolinux.bin", "isolinux/boot.cat", Path("/i/isohdpfx.bin"))
    argv = iso.xorriso_argv(
        tmp_path / "o.iso", "VOL", [], bios=bios, efiboot=Path("/e/efiboot.img"), efiboot_in_iso="images/efiboot.img"
    )
    s = " ".join(argv)
    assert "-isohybrid-mbr /i/isohdpfx.bin" in s
    assert "-e images/efiboot.img -no-emul-boot -isohybrid-gpt-basdat" in s
    assert "-append_partition" not in s
    with pytest.raises(ComposerError, match="inside the ISO"):
        iso.xorriso_argv(tmp_path / "o.iso", "VOL", [], bios=bios, efiboot=Path("/e/efiboot.img"))


def test_find_grub_prefers_the_tree_and_falls_back_to_the_host(tmp_path):
    tree = tmp_path / "tree"
    (tree / "usr/lib/grub/i386-pc").mkdir(parents=True)
    (tree / "usr/lib/grub/i386-pc/kernel.img").write_bytes(b"k")
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/grub2-mkimage").write_text("#!/bin/sh\n")
    src = efiboot.find_grub(tree, "i386-pc")
    assert src.origin == "install tree" and src.tree == tree and src.mkimage == "grub2-mkimage"
    if HOST_GRUB:
        host = efiboot.find_grub(tmp_path / "empty", "x86_64-efi")
        assert host.origin == "host" and host.tree is None
    with pytest.raises(ComposerError, match="no GRUB for nosuch-platform"):
        efiboot.find_grub(tmp_path / "empty", "nosuch-platform")


def test_find_shim(tmp_path):
    d = tmp_path / "boot/efi/EFI/fedora"
    d.mkdir(parents=True)
    assert efiboot.find_shim(tmp_path, "x86_64") is None
    for name in ("shimx64.efi", "grubx64.efi", "mmx64.efi"):
        (d / name).write_bytes(b"x")
    assert set(efiboot.find_shim(tmp_path, "x86_64")) == {"BOOTX64.EFI", "grubx64.efi", "mmx64.efi"}


def test_make_efiboot_needs_files(tmp_path):
    with pytest.raises(ComposerError, match="no files"):
        efiboot.make_efiboot([], tmp_path / "e.img")
    with pytest.raises(ComposerError, match="does not exist"):
        efiboot.make_efiboot([(tmp_path / "nope", "EFI/BOOT/x")], tmp_path / "e.img")


@needs_tools
def test_make_efiboot_with_mtools(tmp_path):
    a = tmp_path / "BOOTX64.EFI"
    a.write_bytes(b"\x4d\x5a" + b"\0" * 300000)
    cfg = tmp_path / "grub.cfg"
    cfg.write_text("set timeout=1\n")
    img = efiboot.make_efiboot([(a, "EFI/BOOT/BOOTX64.EFI"), (cfg, "EFI/BOOT/grub.cfg")], tmp_path / "efiboot.img")
    listing = subprocess.run(
        ["mdir", "-i", str(img), "-b", "::/EFI/BOOT"],
        capture_output=True,
        text=True,
        check=True,
        env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"},
    ).stdout
    assert "BOOTX64.EFI" in listing and "grub.cfg" in listing
    out = tmp_path / "cfg"
    subprocess.run(
        ["mcopy", "-i", str(img), "::/EFI/BOOT/grub.cfg", str(out)],
        check=True,
        env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"},
    )
    assert out.read_text() == "set timeout=1\n"
    blkid = subprocess.run(["blkid", "-o", "value", "-s", "TYPE", str(img)], capture_output=True, text=True, check=True).stdout
    assert blkid.strip() == "vfat"


@needs_tools
def test_small_hybrid_iso_has_bios_and_uefi_images(tmp_path):
    root = tmp_path / "root"
    (root / "images/pxeboot").mkdir(parents=True)
    (root / "images/pxeboot/vmlinuz").write_bytes(b"kernel")
    (root / "boot/grub2").mkdir(parents=True)
    (root / "boot/grub2/grub.cfg").write_text("set timeout=1\n")
    bios_grub = efiboot.find_grub(None, "i386-pc")
    efiboot.grub_mkimage(bios_grub, "i386-pc-eltorito", "/boot/grub2", root / "images/eltorito.img")
    efi_grub = efiboot.find_grub(None, "x86_64-efi")
    efidir = root / "EFI/BOOT"
    efiboot.grub_mkimage(efi_grub, "x86_64-efi", "/EFI/BOOT", efidir / "BOOTX64.EFI")
    (efidir / "grub.cfg").write_text("search --label X\n")
    img = efiboot.make_efiboot(
        [(p, p.relative_to(root).as_posix()) for p in sorted(efidir.iterdir())], root / "images/efiboot.img"
    )
    grafts = [(p.relative_to(root).as_posix(), p) for p in sorted(root.rglob("*")) if p.is_file()]
    out = iso.make_iso(
        tmp_path / "boot.iso",
        "Test-1-x86_64",
        grafts,
        bios=iso.BiosBoot("grub2", "images/eltorito.img", "boot.cat", bios_grub.moddir / "boot_hybrid.img"),
        efiboot=img,
    )
    report = el_torito_report(out)
    assert el_torito_platforms(report) == ["BIOS", "UEFI"]
    assert subprocess.run(["checkisomd5", str(out)], capture_output=True, check=False).returncode == 0
    label = subprocess.run(["blkid", "-o", "value", "-s", "LABEL", str(out)], capture_output=True, text=True, check=True).stdout
    assert label.strip() == "Test-1-x86_64"
    # the appended EFI system partition is in the partition table (USB boot)
    parts = mbr_partitions(out)
    assert [p[1] for p in parts if p[0] == 2] == [0xEF]
    efi_start = next(p[2] for p in parts if p[0] == 2)
    with out.open("rb") as f:
        f.seek(efi_start * 512)
        assert f.read(img.stat().st_size) == img.read_bytes()
    assert not (tmp_path / "boot.iso.tmp").exists()


def test_make_iso_refuses_missing_files_and_no_boot(tmp_path):
    with pytest.raises(ComposerError, match="neither a BIOS nor a UEFI"):
        iso.make_iso(tmp_path / "b.iso", "V", [], bios=None, efiboot=None)
    with pytest.raises(ComposerError, match="does not exist"):
        iso.make_iso(tmp_path / "b.iso", "V", [("x", tmp_path / "nope")], bios=None, efiboot=tmp_path / "e")


def test_qemu_media_argv_cd_and_network(tmp_path):
    from composer import verify

    bios = verify.qemu_media_argv(memory_mb=512, iso=tmp_path / "boot.iso")
    s = " ".join(bios)
    assert "-m 512" in s and f"file={tmp_path / 'boot.iso'},media=cdrom" in s and "-nic none" in s
    assert "pflash" not in s and "-kernel" not in s
    try:
        code, _ = verify.find_ovmf()
    except ComposerError:
        code = None
    if code is not None:
        uefi = " ".join(
            verify.qemu_media_argv(memory_mb=512, firmware="uefi", ovmf_vars=tmp_path / "v.fd", iso=tmp_path / "boot.iso")
        )
        assert f"readonly=on,file={code}" in uefi and f"unit=1,file={tmp_path / 'v.fd'}" in uefi
    net = " ".join(verify.qemu_media_argv(memory_mb=512, tftp_dir=tmp_path, bootfile="boot.ipxe"))
    assert f"user,id=n0,tftp={tmp_path},bootfile=boot.ipxe" in net and "virtio-net-pci" in net
    with pytest.raises(ValueError):
        verify.qemu_media_argv(memory_mb=512)
    with pytest.raises(ComposerError, match="bios or uefi"):
        verify.qemu_media_argv(memory_mb=512, firmware="coreboot", iso=tmp_path / "x")


def test_serve_http_is_loopback_only(tmp_path):
    import urllib.request

    from composer.verify import serve_http

    (tmp_path / "f.txt").write_text("hello")
    with serve_http(tmp_path) as port:
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/f.txt", timeout=10).read() == b"hello"


def test_boot_iso_missing_file(tmp_path):
    from composer.verify import boot_iso, boot_netboot

    with pytest.raises(ComposerError, match="does not exist"):
        boot_iso(tmp_path / "nope.iso", marker="X")
    with pytest.raises(ComposerError, match="boot file"):
        boot_netboot(tmp_path, "boot.ipxe", marker="X")
