"""A real Pungi compose with composer as its lorax (issue 22, items 1-2): Pungi 4.3.2 from the
peer directory, in a virtual environment of its own, runs `pungi-koji` on tests/pungi/pungi.conf
(pkgset from the Fedora-shaped product's repository, gather deps, createrepo, buildinstall with
lorax's stock templates and the local runroot, createiso) with composer's `lorax` first on PATH
(tools/pungirun.py, `make pungi`). Then productmd loads the compose's metadata, and boot.iso and
the DVD boot under SeaBIOS and OVMF. PUNGI_COMPOSE=DIR checks a compose `make pungi` made
instead of composing again."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from testproduct import BOOT_MARKER
from tests.conftest import BUILD, composer

# A whole compose (~10 min) and four TCG boots: make pungi and make soak, not make test.
pytestmark = [pytest.mark.slow, pytest.mark.soak]


def _compose(*, ssh: bool) -> Path:
    import pungirun
    from testproduct.fedoraproduct import build_fedoraproduct

    if os.geteuid() != 0:
        # a mount namespace of its own (tools/pungirun.py); with ssh also a user and an sshd
        pytest.skip("Pungi runs as root here")
    repo = build_fedoraproduct(BUILD / "fedoraproduct")
    try:
        return pungirun.compose(BUILD, repo, ssh=ssh)
    except pungirun.PungiError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def pungi_compose() -> Path:
    """A fresh compose, or with PUNGI_COMPOSE the one `make pungi` made (its boots are the rest)."""
    made = os.environ.get("PUNGI_COMPOSE")
    if made:
        if not (Path(made) / "STATUS").is_file():
            pytest.fail(f"PUNGI_COMPOSE={made}: not a Pungi compose directory (no STATUS)")
        return Path(made)
    return _compose(ssh=False)


def test_phases_green(pungi_compose):
    import pungirun

    status = (pungi_compose / "STATUS").read_text().strip()
    assert status == "FINISHED", status
    phases = pungirun.phase_timings(pungi_compose)
    assert {"PKGSET", "GATHER", "CREATEREPO", "BUILDINSTALL", "CREATEISO"} <= set(phases), phases
    log = (pungi_compose / "logs/global/pungi.global.log").read_text()
    assert "[FAIL" not in log and "Traceback" not in log


def test_metadata_loads_with_productmd(pungi_compose):
    import productmd.composeinfo
    import productmd.images

    info = productmd.composeinfo.ComposeInfo()
    info.load(str(pungi_compose / "compose/metadata/composeinfo.json"))
    assert info.release.short == "Fedora" and "Everything" in info.variants.variants
    images = productmd.images.Images()
    images.load(str(pungi_compose / "compose/metadata/images.json"))
    kinds = {(img.type, img.bootable) for img in images.images["Everything"]["x86_64"]}
    assert ("boot", True) in kinds and ("dvd", True) in kinds, kinds
    for img in images.images["Everything"]["x86_64"]:
        assert (pungi_compose / "compose" / img.path).is_file(), img.path
        # Pungi lists each ISO's files (isoinfo -R for boot.iso: composer's needs Rock Ridge)
        manifest = (pungi_compose / "compose" / f"{img.path}.manifest").read_text().split()
        assert "/images/install.img" in manifest, (img.path, manifest[:20])


def _boot(iso: Path, firmware: str, log: Path) -> str:
    """iso booted under SeaBIOS or OVMF at 1024 MB (lorax's stock menus wait 60 s in grub:
    Enter starts the default entry at once) to the test product's marker; the time printed for docs/pungi.md. The
    serial log's text."""
    proc = composer("verify", "--iso", str(iso), "--firmware", firmware, "--memory", "1024", "--press-enter", "--log", str(log))
    serial = log.read_text(errors="replace")
    assert BOOT_MARKER in serial
    print(proc.stderr.strip().splitlines()[-1])
    return serial


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_boot_iso_boots(pungi_compose, firmware):
    """buildinstall's boot.iso as lorax made it (Pungi only links it into the compose)."""
    import pungirun

    serial = _boot(pungirun.boot_iso(pungi_compose), firmware, pungi_compose / f"logs/boot-{firmware}-serial.log")
    assert "anaconda-standin: no repository on the boot media" in serial


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_dvd_boots(pungi_compose, firmware):
    """createiso's DVD (the repository on it, Pungi's boot configuration: isolinux with the
    DVD's volume id, tests/pungi/isolinux.tmpl, for BIOS; the efiboot.img whose grub.cfg
    buildinstall rewrote to the DVD's label, for UEFI) boots its installer stand-in, which sees
    the repository on it (tools/testproduct/standins.py)."""
    dvds = sorted((pungi_compose / "compose/Everything/x86_64/iso").glob("*-dvd1.iso"))
    assert dvds, "createiso made no DVD"
    serial = _boot(dvds[0], firmware, pungi_compose / f"logs/dvd-{firmware}-serial.log")
    seen = re.search(r"anaconda-standin: repository on the boot media: \S+/repodata/repomd.xml, (\d+) packages", serial)
    assert seen and int(seen.group(1)) > 0, "the installer stand-in saw no repository on the DVD"


@pytest.fixture(scope="module")
def pungi_ssh_compose() -> Path:
    """The same compose, buildinstall through Pungi's openssh runroot (issue 22, item 3)."""
    return _compose(ssh=True)


def test_buildinstall_over_ssh_as_an_ordinary_user(pungi_ssh_compose):
    """Pungi logged in to the builder as its user and ran lorax there: the outputs are that
    user's (composer made them without root), the phases are green and boot.iso boots."""
    import pungirun

    assert (pungi_ssh_compose / "STATUS").read_text().strip() == "FINISHED"
    logs = pungi_ssh_compose / "logs/x86_64"
    ran = "\n".join(p.read_text(errors="replace") for p in logs.glob("buildinstall-*.log"))
    assert "ssh -oBatchMode=yes -n -l composer-pb-" in ran, ran[-2000:]
    made = pungi_ssh_compose / "work/x86_64/buildinstall/Everything/images/boot.iso"
    assert made.is_file() and made.stat().st_uid != 0, "boot.iso was not made by the builder's user"
    iso = pungirun.boot_iso(pungi_ssh_compose)
    log = pungi_ssh_compose / "logs/boot-bios-serial.log"
    composer("verify", "--iso", str(iso), "--firmware", "bios", "--memory", "1024", "--press-enter", "--log", str(log))
    assert BOOT_MARKER in log.read_text(errors="replace")
