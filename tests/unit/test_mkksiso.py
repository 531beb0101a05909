"""composer mkksiso: menu editing (pure logic), then real remasters of small hybrid ISOs in
both boot layouts (grub2 and isolinux; xorriso, mtools and grub-mkimage take a second),
and the bad inputs it must refuse with one line and nothing left behind."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from composer.pipelines import mkksiso as mk
from composer.run import ComposerError
from tests.conftest import ROOT

VOLID = "Test-1-x86_64"
EPOCH = 1700000000

GRUB_CFG = f"""\
set timeout=1
search --no-floppy --set=root --label '{VOLID}'
menuentry 'Start {VOLID} now' --class x --id start {{
\tlinux /images/pxeboot/vmlinuz root=live:CDLABEL={VOLID} rd.live.image quiet console=ttyS0
\tinitrd /images/pxeboot/initrd.img
}}
menuentry 'Check' {{
    linuxefi /images/pxeboot/vmlinuz inst.stage2=hd:LABEL={VOLID} rd.live.check quiet
}}
"""
ISOLINUX_CFG = f"""\
default start
label start
  kernel /images/pxeboot/vmlinuz
  append initrd=/images/pxeboot/initrd.img root=live:CDLABEL={VOLID} rd.live.image quiet
label local
  localboot 0x80
"""


# --------------------------------------------------------------------------- pure logic


def test_split_args_keeps_words_as_written():
    text = 'a=1  b "c d" e="f g" h=\'i j\' k\\ l'
    assert mk.split_args(text) == ["a=1", "b", '"c d"', 'e="f g"', "h='i j'", "k\\ l"]
    assert mk.split_args("") == [] and mk.split_args("   ") == []
    assert [mk.unquote(w) for w in mk.split_args(text)] == ["a=1", "b", "c d", "e=f g", "h=i j", "k l"]
    assert mk.arg_key('"inst.ks=hd:LABEL=X:/ks.cfg"') == "inst.ks"


def test_arg_edit_removes_by_name_or_exact_value_and_adds_once():
    words = ["root=live:CDLABEL=X", "quiet", "console=tty0", "console=ttyS0", "rhgb"]
    assert mk.ArgEdit(remove=("quiet", "rhgb")).apply(words) == words[:1] + words[2:4]
    # NAME removes every NAME=...; NAME=VALUE only that one
    assert mk.ArgEdit(remove=("console",)).apply(words) == ["root=live:CDLABEL=X", "quiet", "rhgb"]
    assert mk.ArgEdit(remove=("console=tty0",)).apply(words) == ["root=live:CDLABEL=X", "quiet", "console=ttyS0", "rhgb"]
    # added at the end (the last occurrence wins for the kernel and dracut), never twice
    assert mk.ArgEdit(add=("quiet", "inst.text", "console=ttyS1")).apply(words) == words + ["inst.text", "console=ttyS1"]
    assert mk.ArgEdit(remove=("quiet",), add=("quiet",)).apply(["quiet", "a"]) == ["a", "quiet"]
    assert mk.ArgEdit(remove=("nothere",)).apply(words) == words


def test_replace_volid_only_in_label_references():
    text = (
        f"search --no-floppy --set=root --label '{VOLID}'\n"
        f"search -l {VOLID}\n"
        f"menuentry 'Install {VOLID}' {{\n"
        f"linux /vmlinuz root=live:CDLABEL={VOLID} inst.stage2=hd:LABEL={VOLID}:/images/install.img\n"
        f"linux /vmlinuz root=live:CDLABEL={VOLID}-2 inst.repo=hd:LABEL={VOLID}\n"
    )
    new = mk.replace_volid(text, VOLID, "NEW")
    assert new == (
        "search --no-floppy --set=root --label 'NEW'\n"
        "search -l NEW\n"
        f"menuentry 'Install {VOLID}' {{\n"  # a title, not a label: kept
        "linux /vmlinuz root=live:CDLABEL=NEW inst.stage2=hd:LABEL=NEW:/images/install.img\n"
        f"linux /vmlinuz root=live:CDLABEL={VOLID}-2 inst.repo=hd:LABEL=NEW\n"
    )  # another id: kept
    assert mk.replace_volid(text, VOLID, VOLID) == text


def test_replace_volid_escapes_like_udev():
    assert mk.udev_escape("Fedora 40 x86_64") == "Fedora\\x2040\\x20x86_64"
    text = "search --label 'Fedora 40'\nlinux /k root=live:CDLABEL=Fedora\\x2040 quiet\n"
    assert mk.replace_volid(text, "Fedora 40", "F40") == "search --label 'F40'\nlinux /k root=live:CDLABEL=F40 quiet\n"


def _edit(**kw) -> mk.MenuEdit:
    return mk.MenuEdit(mk.ArgEdit(kw.get("remove", ()), kw.get("add", ())), VOLID, kw.get("volid", VOLID), kw.get("replace", ()))


def test_edit_grub_menu():
    new, count = mk.edit_menu(
        GRUB_CFG,
        "grub",
        _edit(remove=("quiet",), add=("inst.ks=hd:LABEL=NEW:/ks.cfg",), volid="NEW", replace=(("Check", "Verify"),)),
    )
    assert count == 2
    assert new.splitlines() == [
        "set timeout=1",
        "search --no-floppy --set=root --label 'NEW'",
        f"menuentry 'Start {VOLID} now' --class x --id start {{",
        "\tlinux /images/pxeboot/vmlinuz root=live:CDLABEL=NEW rd.live.image console=ttyS0 inst.ks=hd:LABEL=NEW:/ks.cfg",
        "\tinitrd /images/pxeboot/initrd.img",  # initrd lines are not command lines
        "}",
        "menuentry 'Verify' {",
        "    linuxefi /images/pxeboot/vmlinuz inst.stage2=hd:LABEL=NEW rd.live.check inst.ks=hd:LABEL=NEW:/ks.cfg",
        "}",
    ]
    # nothing to do: the text comes back byte for byte
    assert mk.edit_menu(GRUB_CFG, "grub", _edit()) == (GRUB_CFG, 2)


def test_edit_grub_menu_kernel_path_is_not_an_argument():
    text = "linux /vmlinuz\nlinux /boot/quiet quiet\n"
    new, _ = mk.edit_menu(text, "grub", _edit(remove=("quiet", "/vmlinuz"), add=("a=1",)))
    assert new == "linux /vmlinuz a=1\nlinux /boot/quiet a=1\n"


def test_edit_isolinux_menu():
    new, count = mk.edit_menu(ISOLINUX_CFG, "syslinux", _edit(remove=("rd.live.image",), add=("inst.text",), volid="V2"))
    assert count == 1
    assert "  append initrd=/images/pxeboot/initrd.img root=live:CDLABEL=V2 quiet inst.text\n" in new
    assert "  kernel /images/pxeboot/vmlinuz\n" in new and "  localboot 0x80\n" in new
    # syslinux keywords are case-insensitive; GRUB's linux means nothing to it
    assert mk.edit_menu("APPEND a\nlinux /k b\n", "syslinux", _edit(add=("c",)))[0] == "APPEND a c\nlinux /k b\n"


def test_menu_kinds():
    assert mk.menu_kind("EFI/BOOT/grub.cfg") == "grub"
    assert mk.menu_kind("boot/grub2/grub.cfg") == "grub"
    assert mk.menu_kind("isolinux/isolinux.cfg") == "syslinux"
    assert mk.menu_kind("images/install.img") is None
    assert mk.menu_kind("efi/boot/GRUB.CFG", mk.EFIBOOT_MENUS, (), fold_case=True) == "grub"


REPORT = """\
-V 'Test-1-x86_64'
--modification-date='2023111422132000'
--grub2-mbr --interval:local_fs:0s-15s:zero_mbrpt:'/x/boot.iso'
-append_partition 2 0xef --interval:local_fs:6496d-10591d::'/x/boot.iso'
-c '/boot.cat'
-b '/images/eltorito.img'
-no-emul-boot
-eltorito-alt-boot
-e '--interval:appended_partition_2_start_1624s_size_4096d:all::'
-no-emul-boot
""".splitlines()


def test_parse_layout_and_intervals():
    layout = mk.parse_layout(REPORT)
    assert layout.bios_image == "/images/eltorito.img"
    assert layout.efi_partition == 2
    assert layout.appended[2][0] == "0xef"
    iv = mk.parse_interval(layout.appended[2][1])
    assert iv == mk.Interval(Path("/x/boot.iso"), 6496 * 512, 10592 * 512)
    assert iv.end - iv.start == 4096 * 512
    assert mk.parse_interval("--interval:local_fs:0s-15s:zero_mbrpt:/x/boot.iso").end == 16 * 2048
    assert mk.parse_interval("--interval:imported_iso:45056d-47103d::") is None
    isolinux = mk.parse_layout(["-b '/isolinux/isolinux.bin'", "-e '/images/efiboot.img'"])
    assert isolinux.efi_image == "/images/efiboot.img" and isolinux.efi_partition is None
    assert mk.parse_layout([]).bios_image is None


def test_parse_mode():
    assert mk.parse_mode("-rw-r--r--") == 0o644
    assert mk.parse_mode("drwxr-xr-x") == 0o755
    assert mk.parse_mode("-rwsr-x--T") == 0o5750
    assert mk.parse_mode("-rwxr-sr-t") == 0o3755


def test_read_volume_info_refuses_what_is_not_an_iso(tmp_path):
    f = tmp_path / "random.img"
    f.write_bytes(os.urandom(40000))
    with pytest.raises(ComposerError, match="not an ISO 9660 image"):
        mk.read_volume_info(f)
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ComposerError, match="not an ISO 9660 image"):
        mk.read_volume_info(tmp_path / "empty")


# --------------------------------------------------------------------------- small real ISOs

HOST_GRUB = Path("/usr/lib/grub/i386-pc/kernel.img").is_file() and Path("/usr/lib/grub/x86_64-efi/kernel.img").is_file()
TOOLS = all(
    shutil.which(t) for t in ("xorriso", "mkfs.fat", "mcopy", "mtype", "mdir", "grub-mkimage", "implantisomd5", "checkisomd5")
)
ISOLINUX = Path("/usr/lib/ISOLINUX/isolinux.bin").is_file() and Path("/usr/lib/syslinux/modules/bios/ldlinux.c32").is_file()
needs_tools = pytest.mark.skipif(not (HOST_GRUB and TOOLS and ISOLINUX), reason="host grub/isolinux/xorriso/mtools missing")


def make_small_iso(base: Path, layout: str) -> Path:
    """A tiny hybrid boot ISO as `composer boot-iso` lays it out (no kernel: never booted)."""
    from composer.images import efiboot, iso

    root = base / f"root-{layout}"
    (root / "images/pxeboot").mkdir(parents=True)
    (root / "images/pxeboot/vmlinuz").write_bytes(b"not a kernel")
    efidir = root / "EFI/BOOT"
    efidir.mkdir(parents=True)
    efiboot.grub_mkimage(efiboot.find_grub(None, "x86_64-efi"), "x86_64-efi", "/EFI/BOOT", efidir / "BOOTX64.EFI")
    (efidir / "grub.cfg").write_text(GRUB_CFG)
    if layout in ("grub2", "debian"):
        (root / "boot/grub2").mkdir(parents=True)
        (root / "boot/grub2/grub.cfg").write_text(GRUB_CFG)
        grub = efiboot.find_grub(None, "i386-pc")
        efiboot.grub_mkimage(grub, "i386-pc-eltorito", "/boot/grub2", root / "images/eltorito.img")
        bios = iso.BiosBoot("grub2", "images/eltorito.img", "boot.cat", grub.moddir / "boot_hybrid.img")
    else:
        (root / "isolinux").mkdir()
        shutil.copy("/usr/lib/ISOLINUX/isolinux.bin", root / "isolinux/isolinux.bin")
        shutil.copy("/usr/lib/syslinux/modules/bios/ldlinux.c32", root / "isolinux/ldlinux.c32")
        (root / "isolinux/isolinux.cfg").write_text(ISOLINUX_CFG)
        bios = iso.BiosBoot("isolinux", "isolinux/isolinux.bin", "isolinux/boot.cat", Path("/usr/lib/ISOLINUX/isohdpfx.bin"))
    img = efiboot.make_efiboot(
        [(p, p.relative_to(root).as_posix()) for p in sorted(efidir.iterdir())],
        root / "images/efiboot.img",
        source_date_epoch=EPOCH,
        seed="t",
    )
    if layout == "debian":
        # El Torito's UEFI entry is the file, and the same image is appended as partition 2
        # (how Debian's ISOs are made).
        out = base / f"{layout}.iso"
        subprocess.run(
            [
                "xorriso",
                "-as",
                "mkisofs",
                "-o",
                str(out),
                "-V",
                VOLID,
                "-R",
                "-J",
                "-iso-level",
                "3",
                "-b",
                "images/eltorito.img",
                "-c",
                "boot.cat",
                "-no-emul-boot",
                "-boot-load-size",
                "4",
                "-boot-info-table",
                "--grub2-boot-info",
                "--grub2-mbr",
                str(bios.mbr),
                "-append_partition",
                "2",
                "0xef",
                str(img),
                "-eltorito-alt-boot",
                "-e",
                "images/efiboot.img",
                "-no-emul-boot",
                str(root),
            ],
            capture_output=True,
            check=True,
        )
        shutil.rmtree(root)
        return out
    grafts = [(p.relative_to(root).as_posix(), p) for p in sorted(root.rglob("*")) if p.is_file()]
    out = iso.make_iso(
        base / f"{layout}.iso",
        VOLID,
        grafts,
        bios=bios,
        efiboot=img,
        efiboot_in_iso="images/efiboot.img",
        source_date_epoch=EPOCH,
        seed="t",
    )
    shutil.rmtree(root)
    return out


@pytest.fixture(scope="module")
def small_isos(tmp_path_factory) -> dict[str, Path]:
    if not (HOST_GRUB and TOOLS and ISOLINUX):
        pytest.skip("host grub/isolinux/xorriso/mtools missing")
    base = tmp_path_factory.mktemp("small-isos")
    return {layout: make_small_iso(base, layout) for layout in ("grub2", "isolinux", "debian")}


def composer(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    env["PYTHONPATH"] = str(ROOT / "src")
    env.update(kw.pop("env", {}))
    return subprocess.run(
        [sys.executable, "-m", "composer", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=120,
        check=False,
        **kw,
    )


def report(iso: Path) -> list[str]:
    out = subprocess.run(
        ["xorriso", "-indev", str(iso), "-report_el_torito", "as_mkisofs"], capture_output=True, text=True, check=True
    ).stdout
    # the lines naming the image file itself (its path, the partition's place) differ
    return [ln for ln in out.splitlines() if "local_fs" not in ln and "appended_partition_" not in ln]


def extract(iso: Path, path: str, dest: Path) -> Path:
    subprocess.run(
        ["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", path, str(dest)], capture_output=True, check=True
    )
    return dest


def efi_partition(iso: Path) -> bytes | None:
    data = iso.read_bytes()
    for i in range(4):
        entry = data[446 + 16 * i : 462 + 16 * i]
        if entry[4] == 0xEF:
            start, count = struct.unpack("<II", entry[8:16])
            return data[start * 512 : (start + count) * 512]
    return None


def remaster_inputs(tmp_path: Path) -> tuple[Path, Path]:
    ks = tmp_path / "ks.cfg"
    ks.write_text("# composer test kickstart\ntext\nlang en_US.UTF-8\n%include /tmp/part-include\n")
    extra = tmp_path / "extra"
    (extra / "sub").mkdir(parents=True)
    (extra / "sub" / "hello.txt").write_text("hello\n")
    (extra / "sub" / "hello.txt").chmod(0o660)  # as a umask of 007 leaves it: normalized on the ISO
    return ks, extra


@needs_tools
@pytest.mark.parametrize("layout", ["grub2", "isolinux", "debian"])
def test_remaster_small_iso(small_isos, layout, tmp_path):
    src = small_isos[layout]
    ks, extra = remaster_inputs(tmp_path)
    out = tmp_path / "out.iso"
    args = (
        "mkksiso",
        "--ks",
        str(ks),
        "-a",
        str(extra),
        "-c",
        "inst.text no_timer_check",
        "-r",
        "quiet",
        "--volid",
        "NEW-1",
        "--source-date-epoch",
        str(EPOCH),
        str(src),
        str(out),
    )
    proc = composer(*args)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extra", "ks.cfg", "out.iso"]  # no scratch left

    # the boot layout is the input's: El Torito BIOS + UEFI, hybrid MBR (GPT for isolinux)
    assert report(out) == [ln.replace(f"'{VOLID}'", "'NEW-1'") for ln in report(src)]
    assert subprocess.run(["checkisomd5", str(out)], capture_output=True).returncode == 0
    label = subprocess.run(["blkid", "-o", "value", "-s", "LABEL", str(out)], capture_output=True, text=True).stdout
    assert label.strip() == "NEW-1"

    line = "root=live:CDLABEL=NEW-1 rd.live.image"
    added = " inst.text no_timer_check inst.ks=hd:LABEL=NEW-1:/ks.cfg\n"
    menus = ["EFI/BOOT/grub.cfg", "isolinux/isolinux.cfg" if layout == "isolinux" else "boot/grub2/grub.cfg"]
    for n, menu in enumerate(menus):
        text = extract(out, "/" + menu, tmp_path / f"menu{n}").read_text()
        assert line in text and added in text, text
        assert "quiet" not in text and VOLID not in text.replace(f"'Start {VOLID} now'", "")
    # the menu inside efiboot.img, and every copy of efiboot.img (El Torito, partition, file)
    img = extract(out, "/images/efiboot.img", tmp_path / "efiboot.img")
    inner = subprocess.run(
        ["mtype", "-i", str(img), "::/EFI/BOOT/grub.cfg"],
        capture_output=True,
        text=True,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
        check=True,
    ).stdout
    assert line in inner and added in inner and "search --no-floppy --set=root --label 'NEW-1'" in inner
    part = efi_partition(out)
    assert part is not None and part[: img.stat().st_size] == img.read_bytes()
    if layout == "debian":  # El Torito's own copy of the image is the edited one too
        boot = subprocess.run(
            ["xorriso", "-indev", str(out), "-report_el_torito", "plain"], capture_output=True, text=True, check=True
        ).stdout
        lba, blocks = (
            int(x)
            for x in re.search(r"El Torito boot img :\s+2\s+UEFI\s+y\s+none\s+\S+\s+\S+\s+(\d+)\s+(\d+)", boot).groups()[::-1]
        )
        with out.open("rb") as f:
            f.seek(lba * 2048)
            assert f.read(img.stat().st_size) == img.read_bytes()
    # the added files, at the root, root's, dated at the epoch
    assert extract(out, "/ks.cfg", tmp_path / "ks.out").read_text() == ks.read_text()
    assert extract(out, "/extra/sub/hello.txt", tmp_path / "hello.out").read_text() == "hello\n"
    listing = subprocess.run(
        [
            "xorriso",
            "-indev",
            str(out),
            "-lsdl",
            "/ks.cfg",
            "/extra",
            "/extra/sub/hello.txt",
            "/EFI/BOOT/grub.cfg",
            "/images/efiboot.img",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert [ln.split()[0] for ln in listing] == ["-rw-r--r--", "drwxr-xr-x", "-rw-r--r--", "-rw-r--r--", "-rw-r--r--"]
    assert all(ln.split()[2:4] == ["0", "0"] for ln in listing), listing
    assert os.stat(tmp_path / "ks.out").st_mtime == EPOCH

    # reproducible: the same inputs (touched since) give the same bytes
    os.utime(ks)
    again = tmp_path / "again.iso"
    proc = composer(*args[:-1], str(again))
    assert proc.returncode == 0, proc.stderr
    assert again.read_bytes() == out.read_bytes()


@needs_tools
def test_remaster_replaces_an_earlier_kickstart_and_keeps_other_args(small_isos, tmp_path):
    ks, _ = remaster_inputs(tmp_path)
    first, second = tmp_path / "first.iso", tmp_path / "second.iso"
    assert composer("mkksiso", "--ks", str(ks), str(small_isos["grub2"]), str(first)).returncode == 0
    other = tmp_path / "other.ks"
    other.write_text("text\n")
    updates = tmp_path / "updates.img"
    updates.write_bytes(b"\0" * 4096)
    # mkksiso's older form: KICKSTART INPUT OUTPUT
    proc = composer("mkksiso", "-u", str(updates), "--skip-mkefiboot", str(other), str(first), str(second))
    assert proc.returncode == 0, proc.stderr
    text = extract(second, "/EFI/BOOT/grub.cfg", tmp_path / "g.cfg").read_text()
    assert "inst.ks=hd:LABEL=Test-1-x86_64:/other.ks" in text and "/ks.cfg" not in text
    assert "inst.updates=hd:LABEL=Test-1-x86_64:/updates.img" in text
    assert extract(second, "/updates.img", tmp_path / "u.img").read_bytes() == updates.read_bytes()
    assert "quiet" in text
    # --skip-mkefiboot: efiboot.img is the first remaster's
    img = extract(second, "/images/efiboot.img", tmp_path / "e.img")
    assert img.read_bytes() == extract(first, "/images/efiboot.img", tmp_path / "e0.img").read_bytes()


@needs_tools
def test_remaster_an_other_architectures_uefi_only_iso(tmp_path):
    """An aarch64-style medium (UEFI only, BOOTAA64.EFI): nothing on it is run, so the
    host's architecture does not matter."""
    from composer.images import efiboot, iso

    root = tmp_path / "root"
    (root / "EFI/BOOT").mkdir(parents=True)
    (root / "EFI/BOOT/BOOTAA64.EFI").write_bytes(b"MZ not really an arm64 grub")
    (root / "EFI/BOOT/grub.cfg").write_text(GRUB_CFG)
    img = efiboot.make_efiboot(
        [(p, p.relative_to(root).as_posix()) for p in sorted((root / "EFI/BOOT").iterdir())], tmp_path / "efiboot.img"
    )
    src = iso.make_iso(
        tmp_path / "aa64.iso",
        VOLID,
        [(p.relative_to(root).as_posix(), p) for p in sorted(root.rglob("*")) if p.is_file()],
        bios=None,
        efiboot=img,
    )
    out = tmp_path / "out.iso"
    proc = composer("mkksiso", "-c", "inst.text", "--volid", "AA64", str(src), str(out))
    assert proc.returncode == 0, proc.stderr
    assert report(out) == [ln.replace(f"'{VOLID}'", "'AA64'") for ln in report(src)]
    part = efi_partition(out)
    assert part is not None
    (tmp_path / "part.img").write_bytes(part)
    inner = subprocess.run(
        ["mtype", "-i", str(tmp_path / "part.img"), "::/EFI/BOOT/grub.cfg"],
        capture_output=True,
        text=True,
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
        check=True,
    ).stdout
    assert "root=live:CDLABEL=AA64 rd.live.image quiet console=ttyS0 inst.text\n" in inner
    assert extract(out, "/EFI/BOOT/grub.cfg", tmp_path / "g.cfg").read_text() == inner


@needs_tools
def test_interrupted_remaster_leaves_nothing(small_isos, tmp_path, monkeypatch):
    ks, _ = remaster_inputs(tmp_path)
    out = tmp_path / "out.iso"

    def interrupt(*_a, **_k):  # after xorriso wrote the new ISO, before implantisomd5
        raise KeyboardInterrupt("SIGINT")

    monkeypatch.setattr(mk, "supported_iso", interrupt)
    with pytest.raises(KeyboardInterrupt):
        mk.remaster(mk.MkksisoOptions(input=small_isos["grub2"], output=out, ks=ks))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extra", "ks.cfg"]


# --------------------------------------------------------------------------- bad input

BAD = [
    # (id, argv with {i} inputs dir / {t} scratch dir, expected text in the one error line)
    ("not-an-iso", ("--ks", "{i}/good.ks", "{i}/random.img", "{t}/out.iso"), "{i}/random.img: not an ISO 9660 image"),
    ("no-el-torito", ("--ks", "{i}/good.ks", "{i}/plain.iso", "{t}/out.iso"), "{i}/plain.iso: no El Torito boot record"),
    (
        "truncated-iso",
        ("--ks", "{i}/good.ks", "{i}/truncated.iso", "{t}/out.iso"),
        "INPUT {i}/truncated.iso: xorriso cannot read it",
    ),
    (
        "bad-kickstart",
        ("--ks", "{i}/bad.ks", "{i}/boot.iso", "{t}/out.iso"),
        "kickstart {i}/bad.ks:2: Unknown command: frobnicate",
    ),
    ("output-exists", ("--ks", "{i}/good.ks", "{i}/boot.iso", "{i}/exists.iso"), "OUTPUT {i}/exists.iso: exists (use --force"),
    ("output-is-input", ("--force", "--ks", "{i}/good.ks", "{i}/boot.iso", "{i}/boot.iso"), "is the INPUT"),
    ("input-missing", ("--ks", "{i}/good.ks", "{i}/nope.iso", "{t}/out.iso"), "INPUT {i}/nope.iso: no such file"),
    ("nothing-to-do", ("{i}/boot.iso", "{t}/out.iso"), "nothing to do"),
    ("add-missing", ("-a", "{i}/nope", "{i}/boot.iso", "{t}/out.iso"), "--add {i}/nope: no such file or directory"),
    ("volid-bad", ("--volid", "a b", "{i}/boot.iso", "{t}/out.iso"), "--volid 'a b': characters ' ' not allowed"),
    ("ks-name-with-space", ("--ks", "{i}/my ks.cfg", "{i}/boot.iso", "{t}/out.iso"), "rename the file"),
    (
        "same-name-twice",
        ("--ks", "{i}/good.ks", "-a", "{i}/good.ks", "{i}/boot.iso", "{t}/out.iso"),
        "already puts /good.ks on the ISO",
    ),
    ("output-dir-missing", ("--ks", "{i}/good.ks", "{i}/boot.iso", "{t}/no/out.iso"), "does not exist"),
]


@pytest.fixture(scope="module")
def bad_inputs(small_isos, tmp_path_factory) -> Path:
    i = tmp_path_factory.mktemp("mkksiso-bad")
    (i / "good.ks").write_text("text\n")
    (i / "my ks.cfg").write_text("text\n")
    (i / "bad.ks").write_text("text\nfrobnicate --now\n")
    (i / "random.img").write_bytes(os.urandom(64 * 1024))
    (i / "plain").mkdir()
    (i / "plain" / "a").write_text("a\n")
    subprocess.run(
        ["xorriso", "-as", "mkisofs", "-o", str(i / "plain.iso"), "-V", "PLAIN", str(i / "plain")],
        capture_output=True,
        check=True,
    )
    shutil.copy(small_isos["grub2"], i / "boot.iso")
    (i / "truncated.iso").write_bytes((i / "boot.iso").read_bytes()[:200_000])
    (i / "exists.iso").write_bytes(b"keep me")
    return i


def _snapshot(d: Path) -> dict[str, int]:
    return {str(p.relative_to(d)): p.stat().st_size for p in d.rglob("*")}


@needs_tools
@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input(case, bad_inputs, tmp_path):
    _, argv, expect = case

    def fill(text: str) -> str:
        return text.replace("{i}", str(bad_inputs)).replace("{t}", str(tmp_path))

    before = _snapshot(bad_inputs), _snapshot(tmp_path)
    proc = composer("mkksiso", *map(fill, argv))
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("composer: error:")]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr
    assert fill(expect) in errors[0], errors[0]
    assert (_snapshot(bad_inputs), _snapshot(tmp_path)) == before


# --------------------------------------------------------------------------- menu injection (issue 20)


def test_grub_lexer_sees_commands_comments_and_blocks():
    text = "set a='x y' ; linux /k quiet # inst.ks=gone\nmenuentry 'T' {\n  linux /k \"b c\" d\\ e ${root}/x\n}\n"
    assert mk.grub_commands(text) == [
        (0, ["set", "a=x y"]),
        (0, ["linux", "/k", "quiet"]),
        (1, ["menuentry", "T"]),
        (2, ["linux", "/k", "b c", "d e", "${root}/x"]),
    ]
    assert mk.grub_tokens("echo 'open\n")[1] is True
    assert mk.grub_command_end("/k quiet ; reboot") == 9
    assert mk.grub_command_end("/k 'a;b' \"#\" x#y # c") == 17
    assert mk.grub_command_end("/k quiet") == len("/k quiet")


def test_edit_grub_menu_adds_before_a_comment_or_a_next_command():
    """Before: inst.ks= went after `# comment` (commented out) or after `; echo` (echo's argument)."""
    text = "linux /vmlinuz quiet # keep\nlinux /vmlinuz a ; echo hi\n"
    new, count = mk.edit_menu(text, "grub", _edit(add=("inst.ks=hd:LABEL=X:/ks.cfg",)))
    assert count == 2
    assert new == (
        "linux /vmlinuz quiet inst.ks=hd:LABEL=X:/ks.cfg # keep\nlinux /vmlinuz a inst.ks=hd:LABEL=X:/ks.cfg ; echo hi\n"
    )


@pytest.mark.parametrize(
    ("replace", "expect"),
    [
        ((" ", ""), "leaves 0 kernel command lines of 2"),  # linux/images/pxeboot/vmlinuz...
        (("{", ""), "g.cfg:3: the edited line \"menuentry 'Start Test-1-x86_64 now' --class x --id start\" is no longer"),
        (("' --class", " --class"), "g.cfg:3: the edited line"),  # a quote left open
        (("linux", "echo"), "leaves 0 kernel command lines of 2"),
        (("quiet", "x\ny"), "changes its number of lines"),
    ],
)
def test_edited_menu_that_would_not_boot_as_meant_is_refused(replace, expect):
    with pytest.raises(ComposerError, match=re.escape(expect)):
        mk.edit_menu(GRUB_CFG, "grub", _edit(add=("inst.ks=hd:LABEL=X:/ks.cfg",), replace=(replace,)), "g.cfg")


@pytest.mark.parametrize(
    ("field", "value", "expect"),
    [
        ("cmdline", "quiet;reboot", "--cmdline 'quiet;reboot': holds ';'"),
        ("cmdline", "a}", "--cmdline 'a}': holds '}'"),
        ("cmdline", "$(reboot)", "--cmdline '$(reboot)': holds '$'"),
        ("cmdline", "#", "--cmdline '#': holds '#'"),
        ("cmdline", "a\nb", "holds a newline"),
        ("cmdline", 'x="a b"', "holds '\"'"),
        ("rm_args", ("quiet;x",), "--rm-args 'quiet;x': holds ';'"),
        ("rm_args", ("",), "--rm-args '': no kernel argument"),
        ("replace", (("", "x"),), "--replace '' 'x': FROM is empty"),
        ("replace", (("quiet", "quiet;reboot"),), "TO holds ';'"),
        ("replace", (("'", ""),), 'FROM holds "\'"'),
    ],
)
def test_menu_values_are_checked_as_kernel_arguments(field, value, expect):
    """Before: each of these reached every menu as it was (exit 0)."""
    opts = mk.MkksisoOptions(input=Path("/nonexistent"), output=Path("/nonexistent.iso"), **{field: value})
    with pytest.raises(ComposerError, match=re.escape(expect)):
        mk.check_menu_options(opts)


@needs_tools
@pytest.mark.parametrize("force", [False, True])
def test_output_symlink_is_refused_and_its_target_kept(small_isos, tmp_path, force):
    """Before: --force renamed the new ISO over the link's target (OUTPUT was resolved)."""
    ks, _ = remaster_inputs(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    (tmp_path / "out.iso").symlink_to(victim)
    proc = composer(
        "mkksiso", *(["--force"] if force else []), "--ks", str(ks), str(small_isos["grub2"]), str(tmp_path / "out.iso")
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"OUTPUT {tmp_path}/out.iso is a symbolic link (to {victim})" in proc.stderr.splitlines()[-1]
    assert victim.read_text() == "keep me\n" and os.readlink(tmp_path / "out.iso") == str(victim)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extra", "ks.cfg", "out.iso", "victim"]


@needs_tools
def test_scratch_name_is_not_predictable(small_isos, tmp_path):
    """Before: the scratch was .NAME.partial-PID: a link planted there made the run fail
    (rmtree of a link) or, as a directory of another user's, be deleted."""
    ks, _ = remaster_inputs(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("keep\n")
    (tmp_path / f".out.iso.partial-{os.getpid()}").symlink_to(elsewhere)
    mk.remaster(mk.MkksisoOptions(input=small_isos["grub2"], output=tmp_path / "out.iso", ks=ks, implant_md5=False))
    assert (elsewhere / "precious").read_text() == "keep\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f".out.iso.partial-{os.getpid()}",
        "elsewhere",
        "extra",
        "ks.cfg",
        "out.iso",
    ]


@needs_tools
def test_force_replaces_a_regular_output_only_when_complete(small_isos, tmp_path, monkeypatch):
    ks, _ = remaster_inputs(tmp_path)
    out = tmp_path / "out.iso"
    out.write_text("old\n")

    def fail(*_a, **_k):
        raise ComposerError("implantisomd5 failed")

    monkeypatch.setattr(mk, "supported_iso", fail)
    with pytest.raises(ComposerError):
        mk.remaster(mk.MkksisoOptions(input=small_isos["grub2"], output=out, ks=ks, force=True))
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extra", "ks.cfg", "out.iso"]
    monkeypatch.undo()
    mk.remaster(mk.MkksisoOptions(input=small_isos["grub2"], output=out, ks=ks, force=True))
    assert out.stat().st_size > 100_000 and not out.is_symlink()


def test_boot_iso_and_netboot_menus_take_only_checked_kernel_arguments():
    """The same check at the menu writers' door (extra_args), whoever calls them."""
    from composer.outputs.media import join_args

    assert join_args(("quiet", "console=ttyS0,115200n8"), "inst.text") == "quiet console=ttyS0,115200n8 inst.text"
    for bad in ("a;reboot", "x}", "#", "$(id)"):
        with pytest.raises(ComposerError, match=re.escape(f"kernel argument {bad!r}: holds")):
            join_args((bad,))
