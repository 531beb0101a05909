"""Pure logic of the Fedora-shaped test product: the name table, path moves, versions,
module lists, and the stand-ins' payloads (tools/testproduct/fedora.py, standins.py)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from testproduct import debrpm, fedora, fedoraproduct, setuppkg, standins
from testproduct import translate as tr

STOCK = Path(__file__).resolve().parents[3] / "shared/peers/lorax-40.5.19/share/templates.d/99-generic"
STOCK_43 = Path(__file__).resolve().parents[3] / "shared/lorax-43.12/99-generic"


def _stock_installpkg_names(text: str) -> set[str]:
    """Names runtime-install.tmpl installs without --optional, for x86_64 (and the
    arch-independent part): the %if blocks of other arches are skipped."""
    names: set[str] = set()
    skip = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("%if"):
            skip = "basearch" in line and "x86_64" not in line and "!=" not in line
            continue
        if line.startswith("%endif"):
            skip = False
            continue
        if skip or not line.startswith("installpkg ") or "--optional" in line:
            continue
        for word in line.split()[1:]:
            names.add(re.split(r"[<>=!]", word)[0])
    return names


@pytest.mark.parametrize("stock", [STOCK, STOCK_43], ids=["40.5.19", "43.12"])
def test_table_covers_stock_runtime_install(stock: Path) -> None:
    if not stock.is_dir():
        pytest.skip(f"lorax's stock templates are not at {stock}")
    wanted = _stock_installpkg_names((stock / "runtime-install.tmpl").read_text())
    assert "grub2-efi-x64-cdboot" in wanted and "shim-x64" in wanted and "anaconda" in wanted
    assert not wanted - set(fedora.by_name()), sorted(wanted - set(fedora.by_name()))


def test_stock_parser_reads_arch_blocks() -> None:
    text = """installpkg a b>=1:2
installpkg --optional c
%if basearch == "aarch64":
    installpkg d
%endif
%if basearch == "x86_64":
    installpkg e
%endif
%if basearch != "s390x":
    installpkg f
%endif
"""
    assert _stock_installpkg_names(text) == {"a", "b", "e", "f"}


def test_table_is_consistent() -> None:
    names = [f.name for f in fedora.FEDORA]
    assert len(names) == len(set(names)), "a Fedora name twice"
    kinds = {f.kind for f in fedora.FEDORA}
    assert kinds <= {"same", "rename", "meta", "standin", "placeholder", "pypi"}
    for f in fedora.FEDORA:
        if f.kind == "rename":
            assert len(f.debian) == 1
        if f.kind == "meta":
            assert f.debian, f.name
        if f.kind in ("placeholder", "standin"):
            assert f.note, f"{f.name}: say what it is"
    built = {p.name for p in standins.all_standins()}
    assert built == {f.name for f in fedora.FEDORA if f.kind == "standin"}
    # the branding lorax looks for: <x>-release providing system-release, and <x>-logos
    release = next(p for p in standins.all_standins() if p.name == "fedora-release")
    assert "system-release" in release.provides and "fedora-logos" in fedora.by_name()


def test_debian_roots() -> None:
    roots = fedora.debian_roots(("bash",))
    assert {"bash", "dnf", "grub-efi-amd64-signed", "shim-signed", "linux-image-amd64", "multipath-tools"} <= set(roots)
    # Fedora names of our own packages and our machinery are never asked of apt
    assert not {"anaconda-core", "kernel-core", "grub2-tools", "testproduct-setup", "kernel"} & set(roots)
    assert list(roots) == sorted(roots)


def test_rename_for_and_collisions() -> None:
    assert fedora.rename_for("linux-image-6.1.0-57-amd64") == "kernel-core"
    assert fedora.rename_for("linux-image-amd64") is None
    assert fedora.rename_for("grub-efi-amd64-signed") == "grub2-efi-x64-cdboot"
    assert fedora.rename_for("bash") is None
    assert fedora.collisions({"bash", "initscripts", "anaconda"}) == ["anaconda", "initscripts"]
    assert fedora.collisions({"dnf", "plymouth"}) == []  # same-named entries are Debian's own


@pytest.mark.parametrize(
    "fed, deb, want",
    [
        ("grub2-tools", "2.06-13+deb12u2", "1:2.06-100.2.06+13+deb12u2"),
        ("grub2-efi-x64-cdboot", "1+2.06+13+deb12u2", "1:2.06-100.1+2.06+13+deb12u2"),
        ("kernel-core", "6.1.192-3", "6.1.192-3"),
    ],
)
def test_fedora_version(fed: str, deb: str, want: str) -> None:
    assert fedora.fedora_version(fed, deb) == want


def test_grub2_version_satisfies_the_templates() -> None:
    # runtime-install.tmpl: installpkg grub2-tools>=1:2.06-67 (and the other grub2-* alike)
    evr = tr.deb_to_evr(fedora.fedora_version("grub2-tools", "2.06-13+deb12u2"))
    assert tr.evr_satisfies(evr, ">=", tr.EVR("1", "2.06", "67"))
    evr = tr.deb_to_evr(fedora.fedora_version("grub2-efi-x64-cdboot", "1+2.06+13+deb12u2"))
    assert tr.evr_satisfies(evr, ">=", tr.EVR("1", "2.06", "67"))


@pytest.mark.parametrize(
    "pkg, path, want",
    [
        ("shim-signed", "/usr/lib/shim/shimx64.efi.signed", ["/boot/efi/EFI/fedora/shimx64.efi"]),
        ("shim-helpers-amd64-signed", "/usr/lib/shim/mmx64.efi.signed", ["/boot/efi/EFI/fedora/mmx64.efi"]),
        (
            "grub-efi-amd64-signed",
            "/usr/lib/grub/x86_64-efi-signed/gcdx64.efi.signed",
            ["/boot/efi/EFI/fedora/gcdx64.efi"],
        ),
        ("grub-efi-amd64-signed", "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed", None),
        (
            "linux-image-6.1.0-57-amd64",
            "/boot/vmlinuz-6.1.0-57-amd64",
            ["/boot/vmlinuz-6.1.0-57-amd64", "/usr/lib/modules/6.1.0-57-amd64/vmlinuz"],
        ),
        (
            "fonts-noto-cjk",
            "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
            ["/usr/share/fonts/google-noto-sans-cjk-fonts/NotoSansCJK-Bold.ttc"],
        ),
        ("fonts-noto-cjk", "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc", []),
        ("x11-common", "/usr/bin/X11", []),
        ("systemd", "/usr/share/systemd/tmp.mount", ["/usr/share/systemd/tmp.mount", "/usr/lib/systemd/system/tmp.mount"]),
        ("bash", "/usr/bin/bash", None),
        ("other", "/usr/lib/shim/shimx64.efi.signed", None),  # rules are per package
    ],
)
def test_relocate(pkg: str, path: str, want: list[str] | None) -> None:
    assert fedora.relocate(pkg, path) == (want if want is not None else [path])


def test_module_lists() -> None:
    rel = [
        "kernel/drivers/ata/ahci.ko",
        "kernel/drivers/scsi/sr_mod.ko",
        "kernel/drivers/nvme/host/nvme.ko",
        "kernel/drivers/net/virtio_net.ko",
        "kernel/drivers/net/ethernet/intel/e1000/e1000.ko",
        "kernel/fs/isofs/isofs.ko",
        "modules.dep",
    ]
    block, net = fedora.module_lists(rel)
    assert block == ["ahci.ko", "nvme.ko", "sr_mod.ko"]
    assert net == ["e1000.ko", "virtio_net.ko"]


# ------------------------------------------------------------- applying the rules


def _staged(tmp_path: Path, name: str, files: dict[str, str]) -> debrpm.Staged:
    root = tmp_path / name
    entries = {}
    for path, text in files.items():
        dst = root / path.lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(text)
        entries[path] = debrpm.Entry(path, path, "f", 0o644, "root", "root")
    return debrpm.Staged(tmp_path / f"{name}.deb", {"Package": name, "Version": "1+2.06+13+deb12u2"}, root, entries, 0)


def test_apply_moves_and_rename(tmp_path: Path) -> None:
    s = _staged(
        tmp_path,
        "grub-efi-amd64-signed",
        {
            "/usr/lib/grub/x86_64-efi-signed/gcdx64.efi.signed": "gcd",
            "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed": "net",
        },
    )
    assert fedoraproduct.apply_moves(s, "grub-efi-amd64-signed") == 1
    assert (s.root / "boot/efi/EFI/fedora/gcdx64.efi").read_text() == "gcd"
    assert not (s.root / "usr/lib/grub/x86_64-efi-signed/gcdx64.efi.signed").exists()
    assert {"/boot", "/boot/efi", "/boot/efi/EFI", "/boot/efi/EFI/fedora"} <= set(s.entries)
    assert "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed" in s.entries
    fedoraproduct.rename(s, "grub2-efi-x64-cdboot")
    assert s.name == "grub2-efi-x64-cdboot"
    assert s.evr == tr.EVR("1", "2.06", "100.1+2.06+13+deb12u2")
    assert tr.translate_provides(s.fields["Provides"]) == [
        ("grub-efi-amd64-signed", tr.deb_to_evr("1+2.06+13+deb12u2")),
    ]


def test_write_module_lists(tmp_path: Path) -> None:
    s = _staged(
        tmp_path,
        "linux-image-6.1.0-57-amd64",
        {
            "/usr/lib/modules/6.1.0-57-amd64/kernel/drivers/ata/ahci.ko": "",
            "/usr/lib/modules/6.1.0-57-amd64/kernel/drivers/net/virtio_net.ko": "",
        },
    )
    s.entries["/usr/lib/modules/6.1.0-57-amd64"] = debrpm.Entry(
        "/usr/lib/modules/6.1.0-57-amd64", "/lib/modules/6.1.0-57-amd64", "d", 0o755, "root", "root"
    )
    written = fedoraproduct.write_module_lists(s)
    assert written == ["/usr/lib/modules/6.1.0-57-amd64/modules.block", "/usr/lib/modules/6.1.0-57-amd64/modules.networking"]
    assert (s.root / "usr/lib/modules/6.1.0-57-amd64/modules.block").read_text() == "ahci.ko\n"


def test_own_packages_versions() -> None:
    staged = [
        debrpm.Staged(Path("k.deb"), {"Package": "kernel-core", "Version": "6.1.192-3"}, Path("/nonexistent"), {}, 0),
        debrpm.Staged(Path("g.deb"), {"Package": "grub2-tools", "Version": "1:2.06-100.x"}, Path("/nonexistent"), {}, 0),
    ]
    pkgs = {p.name: p for p in fedoraproduct.own_packages(staged)}
    assert pkgs["kernel"].evr == tr.EVR(None, "6.1.192", "3")
    assert pkgs["grub2-tools-extra"].evr == tr.EVR("1", "2.06", "100.x")
    assert pkgs["rpm-ostree"].requires == () and not pkgs["rpm-ostree"].files
    assert "testproduct-setup" in pkgs["anaconda-install-img-deps"].requires


# ------------------------------------------------------------------- stand-ins


def test_anaconda_standin_prints_the_marker() -> None:
    core = standins.anaconda_core()
    script = core.files["/usr/libexec/anaconda/anaconda-standin"][1]
    assert setuppkg.BOOT_MARKER in script and "poweroff" in script
    # runtime-cleanup.tmpl removes coreutils' timeout and printf from the runtime
    assert "timeout " not in script and "printf" not in script
    assert "Wants=anaconda.service" in core.files["/usr/lib/systemd/system/anaconda.target"][1]
    assert "/usr/share/anaconda/list-harddrives-stub" in core.files  # postinstall moves it


def _standin_says(live: Path) -> list[str]:
    """The stand-in's lines, run under sh with the boot media at `live`: its `say` echoes
    (not to this host's console) and systemctl does nothing."""
    script = standins.anaconda_core().files["/usr/libexec/anaconda/anaconda-standin"][1]
    script = script.replace("/run/initramfs/live", str(live)).replace("systemctl ", ": ")
    script = script.replace("say() {", 'say() { echo "$1"; }\nunused() {', 1)
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout.splitlines()


def test_anaconda_standin_reports_the_repository_on_its_media(tmp_path: Path) -> None:
    """A DVD's stand-in says it saw the repository it would install from (Pungi's layout:
    Packages/<letter>/); boot.iso's says there is none. The marker comes last."""
    assert _standin_says(tmp_path)[-2] == "anaconda-standin: no repository on the boot media"
    (tmp_path / "repodata").mkdir()
    (tmp_path / "repodata/repomd.xml").write_text("<repomd/>")
    for rel in ("Packages/b/bash-5.2-1.x86_64.rpm", "Packages/k/kernel-6.1-1.x86_64.rpm", "Packages/notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    said = _standin_says(tmp_path)
    assert said[-2] == f"anaconda-standin: repository on the boot media: {tmp_path}/repodata/repomd.xml, 2 packages"
    assert said[-1].startswith(setuppkg.BOOT_MARKER)


def _parse_stage2(tmp_path: Path, cmdline: str) -> dict[str, str]:
    """Run the anaconda-dracut cmdline hook under sh with a stub getarg."""
    hook = standins.anaconda_dracut().files["/usr/lib/dracut/modules.d/80anaconda/parse-anaconda-stage2.sh"][1]
    etc = tmp_path / "etc"
    hook = hook.replace("/etc/cmdline.d", str(etc / "cmdline.d"))
    stub = f"""
getarg() {{ for a in {cmdline}; do case "$a" in "$1"*) echo "${{a#"$1"}}"; return 0 ;; esac; done; return 1; }}
info() {{ :; }}
warn() {{ echo "WARN $*"; }}
root=
"""
    out = subprocess.run(["sh", "-c", stub + hook + '\necho "ROOT=$root"'], capture_output=True, text=True, check=True)
    conf = etc / "cmdline.d/75-anaconda-stage2.conf"
    return {"root": out.stdout.split("ROOT=", 1)[1].strip(), "conf": conf.read_text().strip() if conf.exists() else ""}


@pytest.mark.parametrize(
    "cmdline, root, conf",
    [
        (
            "inst.stage2=hd:LABEL=Fedora-43-x86_64 quiet",
            "live:LABEL=Fedora-43-x86_64",
            "rd.live.dir=images rd.live.squashimg=install.img",
        ),
        ("inst.stage2=hd:LABEL=X:/tree", "live:LABEL=X", "rd.live.dir=tree/images rd.live.squashimg=install.img"),
        ("inst.stage2=hd:sr0:/LiveOS/my.img", "live:/dev/sr0", "rd.live.dir=LiveOS rd.live.squashimg=my.img"),
        ("inst.repo=http://h/f43/", "live:http://h/f43/images/install.img", "rd.live.dir=images"),
        ("quiet", "", ""),
    ],
)
def test_anaconda_dracut_stage2(tmp_path: Path, cmdline: str, root: str, conf: str) -> None:
    got = _parse_stage2(tmp_path, cmdline)
    assert got["root"] == root
    assert got["conf"].startswith(conf)
    if conf:
        assert got["conf"].endswith("rd.live.overlay.overlayfs=1")


def test_standin_payloads_fingerprint() -> None:
    a = standins.fingerprint(standins.all_standins())
    assert a == standins.fingerprint(list(reversed(standins.all_standins())))
    changed = standins.all_standins()
    changed[0].files["/x"] = (0o644, "x")
    assert standins.fingerprint(changed) != a
