"""Netboot and boot.iso configs rendered from the product templates (no build)."""

import argparse
import re

import pytest

from composer.config import Config, RootfsType
from composer.outputs.media import boot_kernels, render_config
from composer.pipelines.bootiso import MediaOptions, config_names, media_variables
from composer.pipelines.netboot import CONFIGS, NetbootOptions, netboot_variables, normalize_url
from composer.product import template_dir
from composer.run import ComposerError
from composer.templates import TemplateError

KVERS = ["6.1.0-56-amd64", "6.1.0-40-amd64"]


def cfg(product="TestProduct", tmp_path=None, **kw):
    return Config(product=product, version="1", outdir=tmp_path or "/nonexistent", arch="x86_64", **kw)


def render_netboot(c, opts, kvers=KVERS):
    variables = netboot_variables(c, opts, kvers)
    return {dest: render_config(template_dir(c), name, variables) for name, dest in CONFIGS.items()}


def test_boot_kernels_names():
    ks = boot_kernels(KVERS)
    assert [k.kernel for k in ks] == ["images/pxeboot/vmlinuz", "images/pxeboot/vmlinuz-6.1.0-40-amd64"]
    assert [k.initrd for k in ks] == ["images/pxeboot/initrd.img", "images/pxeboot/initrd-6.1.0-40-amd64.img"]


@pytest.mark.parametrize(
    "url,want",
    [
        ("http://server/path", "http://server/path/"),
        ("http://10.0.2.2:8000/", "http://10.0.2.2:8000/"),
        ("tftp://server/x/", "tftp://server/x/"),
    ],
)
def test_normalize_url(url, want):
    assert normalize_url(url) == want


@pytest.mark.parametrize("url", ["server/path", "file:///srv", "http://", "http://a b/"])
def test_bad_url(url):
    with pytest.raises(ComposerError, match="--url"):
        normalize_url(url)


def test_testproduct_netboot_single_image_every_kernel_has_an_entry():
    out = render_netboot(cfg(), NetbootOptions(url="http://srv/tree/"))
    pxe, grub, ipxe = out["pxelinux.cfg/default"], out["grub2/grub.cfg"], out["boot.ipxe"]
    for text in (pxe, grub, ipxe):
        assert "vmlinuz-6.1.0-40-amd64" in text and "initrd-6.1.0-40-amd64.img" in text
        assert "root=live:/squashfs.img rd.live.image" in text
        assert "install.img" not in text
    assert ipxe.startswith("#!ipxe\n")
    assert "kernel http://srv/tree/images/pxeboot/vmlinuz " in ipxe
    assert "initrd http://srv/tree/images/pxeboot/initrd.img" in ipxe
    assert "goto ${target}" in ipxe
    # the default entry boots unattended and reports on the serial console
    first = re.search(r"label start\n  kernel (\S+)\n  append (.*)", pxe)
    assert first.group(1) == "images/pxeboot/vmlinuz"
    assert "composer.check=poweroff" in first.group(2) and "console=ttyS0" in first.group(2)
    assert "default start" in pxe and "timeout 10" in pxe
    assert "set timeout=1" in grub and "set default=0" in grub
    assert grub.count("menuentry") == 3
    assert "  " not in "".join(line.strip() for line in ipxe.splitlines())


def test_testproduct_netboot_split():
    out = render_netboot(cfg(), NetbootOptions(url="http://srv/tree/", split=True))
    for text in out.values():
        assert "root=live:http://srv/tree/images/install.img" in text and "rd.neednet=1" in text
        assert "root=live:/squashfs.img" not in text


def test_testproduct_netboot_nbd():
    """--nbd: every menu reads install.img from the NBD export on demand, none downloads it."""
    from composer.outputs.nbd import NbdServer, nbd_server_conf
    from composer.pipelines.netboot import check_boot_configs, parse_nbd

    nbd = parse_nbd("10.0.2.2:19809", "TestProduct", "1")
    assert nbd == NbdServer("10.0.2.2", 19809, "TestProduct-1-install.img")
    assert parse_nbd("nbd.example.org", "My Product", "1/2") == NbdServer("nbd.example.org", 10809, "My_Product-1_2-install.img")
    opts = NetbootOptions(url="http://srv/tree/", split=True, nbd=nbd)
    assert opts.transport == "nbd" and NetbootOptions(url="http://s/").transport == "initrd"
    for text in render_netboot(cfg(), opts).values():
        assert "root=live:/dev/live-nbd rd.live.image" in text
        assert "netroot=nbd:10.0.2.2:19809:squashfs:ro:-name,TestProduct-1-install.img" in text
        assert "images/install.img" not in text and "root=live:http" not in text
    conf = nbd_server_conf(nbd, "images/install.img")
    assert "port = 19809\n[TestProduct-1-install.img]\n    exportname = images/install.img\n    readonly = true\n" in conf
    # A product whose menus cannot boot from NBD is refused before any work.
    with pytest.raises(ComposerError, match="--nbd: the Fedora templates' netboot-pxelinux.cfg does not boot from NBD"):
        check_boot_configs(cfg("Fedora"), opts)


@pytest.mark.parametrize("value", ["", ":10809", "host:0", "host:65536", "host:port", "a b", "h;reboot", "[::1]:10809"])
def test_bad_nbd(value):
    from composer.pipelines.netboot import parse_nbd

    with pytest.raises(ComposerError, match="--nbd"):
        parse_nbd(value, "TestProduct", "1")


def test_readonly_rootfs_gets_overlayfs_and_kernel_args():
    out = render_netboot(cfg(rootfs_type=RootfsType.EROFS), NetbootOptions(url="http://srv/", kernel_args=("quiet", "a=b", "c")))
    for text in out.values():
        assert "rd.live.overlay.overlayfs=1" in text
        assert "quiet a=b c" in text
    # One argument holding a space would be two on the kernel's command line: every menu writer refuses it.
    with pytest.raises(ComposerError, match="'a=b c': holds a space"):
        render_netboot(cfg(), NetbootOptions(url="http://srv/", kernel_args=("a=b c",)))


def test_fedora_netboot_templates():
    out = render_netboot(cfg("Fedora"), NetbootOptions(url="http://srv/f/", split=True))
    for text in out.values():
        assert "inst.stage2=http://srv/f/" in text
        assert "composer.check" not in text


def media(c, kvers=KVERS, **kw):
    opts = MediaOptions(volid="TestProduct-1-x86_64", **kw)
    variables = media_variables(c, opts, boot_kernels(kvers))
    return {dest: render_config(template_dir(c), name, variables) for name, dest in config_names(opts.bios_loader).items()}


def test_testproduct_iso_menus():
    out = media(cfg())
    assert set(out) == {"EFI/BOOT/grub.cfg", "boot/grub2/grub.cfg"}
    for text in out.values():
        assert "search --no-floppy --set=root --label 'TestProduct-1-x86_64'" in text
        assert "set timeout=1" in text and "set default=0" in text
        entries = re.findall(r"menuentry '([^']*)'.*?\n\s*linux (.*)\n", text)
        names = [n for n, _ in entries]
        assert names[0] == "Start TestProduct 1" and "Start TestProduct 1 (kernel 6.1.0-40-amd64)" in names
        default_args = entries[0][1]
        assert default_args.startswith("/images/pxeboot/vmlinuz root=live:CDLABEL=TestProduct-1-x86_64 rd.live.image")
        assert "composer.check=poweroff" in default_args and "console=ttyS0" in default_args
        assert "rd.live.dir=images rd.live.squashimg=install.img" in default_args
        assert any("rd.live.check" in a for _, a in entries)
        assert "Troubleshooting" in text and "rescue.target" in text


def test_testproduct_isolinux_menu():
    out = media(cfg(), bios_loader="isolinux")
    text = out["isolinux/isolinux.cfg"]
    assert "default start" in text and "timeout 10" in text
    assert "append initrd=/images/pxeboot/initrd.img root=live:CDLABEL=TestProduct-1-x86_64" in text
    assert "label start-6.1.0-40-amd64" in text and "rd.live.check" in text


def test_fedora_iso_menus_use_inst_stage2():
    for text in media(cfg("Fedora")).values():
        assert "inst.stage2=hd:LABEL=TestProduct-1-x86_64" in text
        assert "rd.live.check" in text and "inst.rescue" in text
        assert "root=live:" not in text


def test_fedora_live_media_menus_boot_the_live_image():
    """composer livemedia --project Fedora: Fedora's live entries (Start, Test this media &
    start), dmsquash-live's root=live: with the live image's place, never anaconda's stage2."""
    for text in media(cfg("Fedora"), stage2="LiveOS/squashfs.img", kernel_args=("console=ttyS0",)).values():
        entries = re.findall(r"menuentry '([^']*)'.*?\n\s*linux (.*)\n", text)
        assert [e[0] for e in entries] == [
            "Start Fedora 1",
            "Test this media & start Fedora 1",
            "Start Fedora 1 in basic graphics mode",
        ]
        live = "root=live:CDLABEL=TestProduct-1-x86_64 rd.live.image rd.live.dir=LiveOS rd.live.squashimg=squashfs.img"
        assert all(live in args and args.endswith("console=ttyS0") for _, args in entries), entries
        assert "rd.live.check" in entries[1][1] and "inst.stage2" not in text and "inst.rescue" not in text


def test_template_error_names_file_and_line(tmp_path, monkeypatch):
    (tmp_path / "grub2-efi.cfg").write_text("set timeout=1\nlinux ${nosuchvar}\n")
    with pytest.raises(TemplateError, match=r"grub2-efi.cfg:2: undefined variable"):
        render_config(tmp_path, "grub2-efi.cfg", {"volid": "x"})
    with pytest.raises(ComposerError, match="has no grub2-bios.cfg"):
        render_config(tmp_path, "grub2-bios.cfg", {})


def test_register_adds_commands():
    from composer.cli import bootiso, netboot

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    bootiso.register(sub)
    netboot.register(sub)
    a = parser.parse_args(
        [
            "boot-iso",
            "-p",
            "TestProduct",
            "-v",
            "1",
            "--volid",
            "X",
            "--ks",
            "k.ks",
            "--add-arch-template",
            "t.tmpl",
            "--logfile",
            "l",
            "out",
        ]
    )
    assert a.volid == "X" and str(a.ks) == "k.ks" and a.bios_loader == "grub2" and str(a.bootiso_logfile) == "l"
    n = parser.parse_args(["netboot", "-p", "TestProduct", "-v", "1", "--url", "http://s/", "--split", "out"])
    assert n.split and n.url == "http://s/"


def test_netboot_dracut_conf_split_adds_livenet_and_handler(tmp_path):
    from composer.outputs.nbd import NbdServer
    from composer.pipelines.netboot import netboot_dracut_conf

    c = cfg(tmp_path=tmp_path / "out")
    assert netboot_dracut_conf(c, NetbootOptions(url="http://s/"), tmp_path) is c  # single: nothing to add
    user = tmp_path / "user.conf"
    user.write_text('compress="zstd"\n')
    split = netboot_dracut_conf(
        cfg(tmp_path=tmp_path / "out", dracut_conf=user), NetbootOptions(url="http://s/", split=True), tmp_path
    )
    text = split.dracut_conf.read_text()
    assert split.dracut_conf.parent == tmp_path and split.dracut_args == ()
    assert 'add_dracutmodules+=" livenet network-legacy "' in text
    assert text.index("livenet") < text.index('compress="zstd"')  # the user's configuration wins
    nbd = netboot_dracut_conf(
        cfg(tmp_path=tmp_path / "out"), NetbootOptions(url="http://s/", split=True, nbd=NbdServer("h")), tmp_path
    )
    text = nbd.dracut_conf.read_text()
    assert 'add_dracutmodules+=" nbd network-legacy "' in text and "livenet" not in text.replace("## ", "#")
    assert 'drivers+=" virtio_net e1000 e1000e r8169 nbd "' in text
    fedora = netboot_dracut_conf(cfg("Fedora", tmp_path / "out"), NetbootOptions(url="http://s/", split=True), tmp_path)
    assert 'add_dracutmodules+=" livenet "' in fedora.dracut_conf.read_text()


def test_netboot_dracut_conf_without_template_falls_back_to_livenet(tmp_path, monkeypatch):
    from composer.pipelines import netboot

    monkeypatch.setattr(netboot, "DRACUT_TEMPLATE", "no-such-file.conf")
    c = netboot.netboot_dracut_conf(cfg(tmp_path=tmp_path), NetbootOptions(url="http://s/", split=True), tmp_path)
    assert c.dracut_args == ("--add", "livenet")


def test_pxelinux_from_the_tree_first(tmp_path):
    from composer.pipelines.netboot import _find_pxelinux

    d = tmp_path / "usr/share/syslinux"
    d.mkdir(parents=True)
    (d / "pxelinux.0").write_bytes(b"p")
    found, origin = _find_pxelinux(tmp_path)
    if origin == "tree":
        pytest.fail("a tree without ldlinux.c32 must not be used: the pair has to match")
    (d / "ldlinux.c32").write_bytes(b"l")
    found, origin = _find_pxelinux(tmp_path)
    assert origin == "tree" and found == {"pxelinux.0": d / "pxelinux.0", "ldlinux.c32": d / "ldlinux.c32"}
