"""Pungi's buildinstall call, unchanged, on `composer lorax`: the argv of Pungi's
LoraxWrapper.get_lorax_cmd (issue 11) with the test product's repository, one of its
packages in --installpkgs and a lorax.conf whose sharedir is the test product's lorax
template set (tools/testproduct/lorax-templates: lorax's language, its x86.tmpl makes the
media with runcmd as lorax's does). Builds once, then checks what Pungi reads; make soak boots the ISO
under SeaBIOS and OVMF. Measured on 2 shared cores at load ~14: build 525 s (xz squashfs; lz4 now),
BIOS boot 127 s, UEFI boot 77 s.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from testproduct import BOOT_MARKER
from tests.conftest import composer

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
VOLID = "TestProduct-S-dvd-x86_64-1"


@pytest.fixture(scope="module")
def pungi_build(testproduct_repo, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("lorax-pungi")
    logs = base / "logs/x86_64/buildinstall-Server-logs"
    logs.mkdir(parents=True)
    conf = logs / "lorax.conf"
    conf.write_text(
        f"[lorax]\nsharedir = {REPO_ROOT}/tools/testproduct/lorax-templates\n[compression]\ntype = lz4\n"
    )  # lorax.conf [compression]; lz4 keeps CI time down
    (base / "extra-runtime.tmpl").write_text('<%page args="ostree_osname"/>\nappend /etc/pungi-extra "${ostree_osname}"\n')
    (base / "extra-arch.tmpl").write_text('<%page args="ksmedia"/>\nappend /ks-name.txt "${ksmedia}"\n')
    out = base / "work/x86_64/buildinstall/Server"
    composer(
        "lorax",
        "--product=TestProduct",
        "--version=1",
        "--release=1",
        f"--source=file://{testproduct_repo}",
        "--variant=Server",
        "--bugurl=https://bugs.example.com",
        "--nomacboot",
        "--noupgrade",
        "--isfinal",
        "--buildarch=x86_64",
        f"--volid={VOLID}",
        "--installpkgs=less",
        f"--add-template={base}/extra-runtime.tmpl",
        f"--add-arch-template={base}/extra-arch.tmpl",
        "--add-template-var=ostree_osname=fedora",
        "--add-arch-template-var=ksmedia=ks.cfg",
        f"--logfile={logs}/lorax.log",
        "--rootfs-size=3",
        "--dracut-arg=--xz",
        "--dracut-arg=--install",
        "--dracut-arg=/.buildstamp",
        "--skip-branding",
        "--squashfs-only",
        "--config",
        str(conf),
        str(out),
        "--rootfs-type=squashfs",
    )
    return base


def test_outputs_pungi_reads(pungi_build):
    import productmd.treeinfo

    out = pungi_build / "work/x86_64/buildinstall/Server"
    logs = pungi_build / "logs/x86_64/buildinstall-Server-logs"
    for rel in (
        "images/boot.iso",
        "images/install.img",
        "images/efiboot.img",
        "images/eltorito.img",
        "images/pxeboot/vmlinuz",
        "images/pxeboot/initrd.img",
        "EFI/BOOT/grub.cfg",
        ".treeinfo",
        ".discinfo",
    ):
        assert (out / rel).is_file(), rel
    ti = productmd.treeinfo.TreeInfo()
    ti.load(str(out / ".treeinfo"))
    assert ti.images.images["xen"] == {"kernel": "images/pxeboot/vmlinuz", "initrd": "images/pxeboot/initrd.img"}
    assert ti.images.images["x86_64"]["eltorito.img"] == "images/eltorito.img"
    assert ti.images.images["x86_64"]["boot.iso"] == "images/boot.iso"
    assert f"CDLABEL={VOLID}" in (out / "EFI/BOOT/grub.cfg").read_text()  # Pungi rewrites this volume id
    inside = subprocess.run(
        ["mtype", "-i", str(out / "images/efiboot.img"), "::EFI/BOOT/grub.cfg"], capture_output=True, text=True, check=True
    ).stdout
    assert f"CDLABEL={VOLID}" in inside  # ... and this one (Pungi's tweak_configs on efiboot.img)
    for name in ("lorax.log", "pylorax.log", "program.log", "dnf.log"):  # dnf's own log, beside --logfile as lorax
        assert (logs / name).stat().st_size > 0, name
    assert "bash" in {p.name for p in (logs / "pkglists").iterdir()}
    assert "/usr/bin/less" in (logs / "pkglists/less").read_text()
    # /.buildstamp in the runtime (squashfs: the tree itself), as lorax writes it
    x = pungi_build / "x"
    subprocess.run(
        ["unsquashfs", "-no-progress", "-d", str(x), str(out / "images/install.img"), ".buildstamp", "etc/pungi-extra"],
        check=True,
        capture_output=True,
    )
    stamp = (x / ".buildstamp").read_text()
    assert "Product=TestProduct\nVersion=1\nBugURL=https://bugs.example.com\nIsFinal=True\n" in stamp
    assert "Variant=Server\n" in stamp
    assert (x / "etc/pungi-extra").read_text() == "fedora\n"
    assert (out / "ks-name.txt").read_text() == "ks.cfg\n"


# make soak: a lorax template set's boot.iso built with Pungi's argv is what test_lorax_stock boots
# under SeaBIOS and OVMF in CI (lorax's stock set, the same argv); this set's boots prove that path again.
@pytest.mark.soak
@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_pungi_boot_iso_boots(pungi_build, firmware, tmp_path):
    from composer.verify import boot_iso

    log = tmp_path / f"serial-{firmware}.log"
    result = boot_iso(
        pungi_build / "work/x86_64/buildinstall/Server/images/boot.iso",
        firmware=firmware,
        memory_mb=512,
        timeout=900,
        log=log,
        marker=BOOT_MARKER,
    )
    serial = log.read_text(errors="replace") if log.exists() else ""
    assert result.ok, f"{firmware}: {result.reason}\n--- serial tail ---\n{serial[-3000:]}"
    assert "COMPOSER-BOOT-OK" in serial
