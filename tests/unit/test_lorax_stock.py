"""lorax's stock-template semantics (issue 19): mkefiboot, the host's grub tool names, the
pre-cleanup snapshot kept by `replace`, and lorax's anaconda dracut modules."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from composer.cli.options import LORAX_DRACUT_DEFAULT
from composer.images import mkefiboot
from composer.pipelines.lorax import LORAX_ANACONDA_DRACUT, anaconda_dracut_args
from composer.run import ComposerError
from composer.templates import TemplateRunner
from composer.templates.runner import host_argv


def test_lorax_dracut_defaults_are_lorax_40s():
    # pylorax.DRACUT_DEFAULT and Lorax.run's anaconda_args, 40.5.19
    assert LORAX_DRACUT_DEFAULT == ("--xz", "--install", "/.buildstamp", "--no-early-microcode", "--add", "fips")
    assert LORAX_ANACONDA_DRACUT == ("--add", "anaconda pollcdrom qemu qemu-net prefixdevname-tools")


def test_anaconda_dracut_modules_present_in_the_install_root(tmp_path):
    mods = tmp_path / "usr/lib/dracut/modules.d"
    for m in ("80anaconda", "98pollcdrom", "90qemu", "95qemu-net"):
        (mods / m).mkdir(parents=True)
    assert anaconda_dracut_args(tmp_path) == ("--add", "anaconda pollcdrom qemu qemu-net")
    (mods / "71prefixdevname-tools").mkdir()
    assert anaconda_dracut_args(tmp_path) == LORAX_ANACONDA_DRACUT
    assert anaconda_dracut_args(tmp_path / "empty") == ()


def test_grub2_tools_are_debians_grub_tools_where_only_those_exist(monkeypatch):
    have = {"grub-mkimage": "/usr/bin/grub-mkimage"}
    monkeypatch.setattr(shutil, "which", lambda name: have.get(name))
    assert host_argv(["grub2-mkimage", "-O", "i386-pc"]) == ["grub-mkimage", "-O", "i386-pc"]
    have["grub2-mkimage"] = "/usr/bin/grub2-mkimage"  # Fedora: its own name
    assert host_argv(["grub2-mkimage", "-O", "i386-pc"]) == ["grub2-mkimage", "-O", "i386-pc"]
    assert host_argv(["xorrisofs", "-o", "x"]) == ["xorrisofs", "-o", "x"]
    assert host_argv(["grub2-nothere"]) == ["grub2-nothere"]


def test_replace_keeps_a_hard_link_elsewhere(tmp_path):
    """lorax's pre-cleanup snapshot is made of hard links: `replace` in the cleanup must
    leave the snapshot's file as it was (lorax's fileinput rewrite does the same)."""
    tree, snap = tmp_path / "tree", tmp_path / "snap"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/x.conf").write_text("a=1\nb=2\n")
    os.chmod(tree / "etc/x.conf", 0o640)
    subprocess.run(["cp", "-al", str(tree), str(snap)], check=True)
    tdir = tmp_path / "t"
    tdir.mkdir()
    (tdir / "c.tmpl").write_text("replace a=1 a=9 /etc/x.conf\n")
    TemplateRunner(tree=tree, templatedir=tdir, variables={}).run(tdir / "c.tmpl")
    assert (tree / "etc/x.conf").read_text() == "a=9\nb=2\n"
    assert (snap / "etc/x.conf").read_text() == "a=1\nb=2\n"
    assert (tree / "etc/x.conf").stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in (tree / "etc").iterdir()) == ["x.conf"]


def test_mkefiboot_refuses_what_it_does_not_make(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(ComposerError, match="--disk"):
        mkefiboot.main(["--disk", str(tmp_path / "d"), str(tmp_path / "o.img")])
    with pytest.raises(ComposerError, match="not a directory"):
        mkefiboot.main(["--label=ANACONDA", str(tmp_path / "nodir"), str(tmp_path / "o.img")])
    with pytest.raises(ComposerError, match="bad command line"):
        mkefiboot.main(["--nosuch", str(tmp_path / "d"), str(tmp_path / "o.img")])


@pytest.mark.skipif(not all(shutil.which(t) for t in ("mkfs.fat", "mcopy", "mdir")), reason="dosfstools/mtools missing")
def test_mkefiboot_makes_lorax_s_image(tmp_path):
    """lorax's command line (efi.tmpl: --label=ANACONDA --debug EFIBOOTDIR OUTFILE): a FAT
    image labelled ANACONDA with the directory as /EFI/BOOT, subdirectories included."""
    src = tmp_path / "EFI/BOOT"
    (src / "fonts").mkdir(parents=True)
    (src / "BOOTX64.EFI").write_bytes(b"MZ" + b"\0" * 5000)
    (src / "grub.cfg").write_text("menuentry x {}\n")
    (src / "fonts/unicode.pf2").write_bytes(b"f" * 100)
    out = tmp_path / "images/efiboot.img"
    out.parent.mkdir()
    mkefiboot.main(["--label=ANACONDA", "--debug", str(src), str(out)])
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    listing = subprocess.run(["mdir", "-/", "-b", "-i", str(out), "::/"], capture_output=True, text=True, env=env, check=True)
    names = {line.strip().lstrip(":").lstrip("/") for line in listing.stdout.splitlines()}
    assert {"EFI/BOOT/BOOTX64.EFI", "EFI/BOOT/grub.cfg", "EFI/BOOT/fonts/unicode.pf2"} <= names
    label = subprocess.run(["mlabel", "-s", "-i", str(out), "::"], capture_output=True, text=True, env=env, check=True)
    assert "ANACONDA" in label.stdout


def _elf_with_modinfo(modinfo: bytes, before: bytes = b"\x10") -> bytes:
    """A minimal ELF64 with a .modinfo section (what modinfo reads), data before it in another section."""
    import struct

    shstr = b"\0.modinfo\0.shstrtab\0.data\0"
    body = before + modinfo + shstr
    data_off = 64
    mod_off = data_off + len(before)
    str_off = mod_off + len(modinfo)
    shoff = data_off + len(body)
    header = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 4, 3)

    def sh(name: int, off: int, size: int) -> bytes:
        return struct.pack("<IIQQQQIIQQ", name, 1, 0, 0, off, size, 0, 0, 1, 0)

    sections = sh(0, 0, 0) + sh(20, data_off, len(before)) + sh(1, mod_off, len(modinfo)) + sh(10, str_off, len(shstr))
    return header + body + sections


def test_module_info_is_lorax_s(tmp_path):
    from composer.lorax.moduleinfo import module_description, write_module_info

    moddir = tmp_path / "6.1.0-1-amd64"
    (moddir / "kernel/drivers/ata").mkdir(parents=True)
    (moddir / "kernel/drivers/net").mkdir(parents=True)
    (moddir / "kernel/drivers/ata/ahci.ko").write_bytes(
        _elf_with_modinfo(b"license=GPL\0description=AHCI SATA low-level driver\0")
    )
    (moddir / "kernel/drivers/net/e1000.ko").write_bytes(_elf_with_modinfo(b"description=" + b"x" * 80 + b"\0"))
    (moddir / "kernel/drivers/net/nodesc.ko").write_bytes(_elf_with_modinfo(b"license=GPL\0"))
    (moddir / "modules.block").write_text("ahci.ko\n")
    (moddir / "modules.networking").write_text("e1000.ko\nnodesc.ko\n")
    assert module_description(moddir / "kernel/drivers/ata/ahci.ko") == "AHCI SATA low-level driver"
    assert write_module_info(moddir, tmp_path / "module-info") == 3
    assert (tmp_path / "module-info").read_text() == (
        'Version 0\nahci\n\tscsi\n\t"AHCI SATA low-level driver"\n'
        f'e1000\n\teth\n\t"{"x" * 65}"\nnodesc\n\teth\n\t"nodesc driver"\n'
    )


def test_lorax_initramfs_keeps_what_composer_omits(tmp_path):
    """lorax's installer initramfs has lvm, mdraid, crypt, iscsi, nfs, multipath, plymouth:
    composer's omissions (dracut.OMIT_CONF) are bound in for its own runtimes only."""
    from composer.config import RootfsType
    from composer.dracut import OMIT_CONF, DracutInputs, _dracut_confs

    own = {dst for _, dst in _dracut_confs(DracutInputs(RootfsType.SQUASHFS), tmp_path)}
    lorax = {dst for _, dst in _dracut_confs(DracutInputs(RootfsType.SQUASHFS, omits=False), tmp_path)}
    assert f"/etc/dracut.conf.d/{OMIT_CONF}" in own
    assert own - lorax == {f"/etc/dracut.conf.d/{OMIT_CONF}"}


def test_package_commands_read_the_database_as_the_template_found_it(tmp_path):
    """Stock runtime-cleanup.tmpl removes the rpm database halfway through (`remove
    /usr/lib/sysimage/rpm/*`) and runs removefrom after that: lorax reads dnf's package set,
    loaded before the template, so those still remove what they name."""
    tree = tmp_path / "tree"
    (tree / "db").mkdir(parents=True)
    (tree / "db/coreutils").write_text("/usr/bin/base64\n/usr/bin/cat\n")
    (tree / "usr/bin").mkdir(parents=True)
    for f in ("base64", "cat"):
        (tree / "usr/bin" / f).write_text("")

    class DbInTree:
        queries = 0

        def install(self, patterns, *, required, exclude=()):
            pass

        def run_transaction(self):
            pass

        def installed(self):
            self.queries += 1
            return sorted(p.name for p in (tree / "db").iterdir())

        def files_of(self, name):
            p = tree / "db" / name
            return p.read_text().split() if p.exists() else []

        def files_by_package(self):
            return {n: self.files_of(n) for n in self.installed()}

    tdir = tmp_path / "t"
    tdir.mkdir()
    (tdir / "c.tmpl").write_text("remove /db/*\nremovefrom coreutils /usr/bin/base64\n")
    pm = DbInTree()
    TemplateRunner(tree=tree, templatedir=tdir, variables={}, pkgmgr=pm).run(tdir / "c.tmpl")
    assert not (tree / "usr/bin/base64").exists()
    assert (tree / "usr/bin/cat").exists()


def test_discinfo_is_lorax_s(tmp_path):
    from composer.outputs.treeinfo import write_lorax_discinfo

    write_lorax_discinfo(tmp_path / ".discinfo", release="43", basearch="x86_64", timestamp=1700000000)
    assert (tmp_path / ".discinfo").read_text() == "1700000000.000000\n43\nx86_64\n"


def test_treeinfo_is_lorax_s(tmp_path):
    import productmd.treeinfo

    from composer.outputs.treeinfo import write_lorax_treeinfo

    sections = {
        "stage2": {"mainimage": "images/install.img"},
        "images-x86_64": {"kernel": "images/pxeboot/vmlinuz", "boot.iso": "images/boot.iso"},
    }
    write_lorax_treeinfo(
        tmp_path / ".treeinfo", product="Fedora", version="43", variant="", basearch="x86_64", sections=sections, timestamp=1
    )
    text = (tmp_path / ".treeinfo").read_text()
    assert text.startswith(
        "[general]\ntimestamp = 1\nfamily = Fedora\nversion = 43\nname = Fedora-43\nvariant = \narch = x86_64\npackagedir = \n\n"
        "[stage2]\nmainimage = images/install.img\n\n[images-x86_64]\n"
    )
    ti = productmd.treeinfo.TreeInfo()
    ti.load(str(tmp_path / ".treeinfo"))  # what Pungi reads
    assert ti.release.name == "Fedora" and ti.stage2.mainimage == "images/install.img"


def test_pkgsizes_are_lorax_s(tmp_path):
    from composer.lorax.logs import write_pkgsizes

    tree = tmp_path / "tree"
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/a").write_bytes(b"x" * 10)
    (tree / "usr/bin/b").symlink_to("a")
    files = {"anaconda-core.noarch": ["/usr/bin/a", "/usr/bin/gone"], "anaconda.noarch": [], "b.x86_64": ["/usr/bin/b"]}
    write_pkgsizes(tree, files, tmp_path, "final-pkgsizes.txt")
    assert (tmp_path / "final-pkgsizes.txt").read_text() == "anaconda.noarch: 0\nanaconda-core.noarch: 10\nb.x86_64: 1\n"
