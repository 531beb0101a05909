"""The Fedora-shaped test product: which Debian 12 binaries stand for which Fedora package.

lorax's stock template set (99-generic, x86_64: runtime-install.tmpl, runtime-postinstall.tmpl,
runtime-cleanup.tmpl, x86.tmpl, efi.tmpl) installs packages by Fedora's names and reads files at
Fedora's paths. This module is the table that makes a repository of repackaged Debian packages
answer to those names, and the rules that move files to the paths the templates read. Pure data
and pure functions (unit-tested); fedoraproduct.py applies them while it builds.

Kinds of entry (Fed.kind):
    same         Debian has a package of that name: it is taken as it is.
    rename       one Debian package is built under the Fedora name (it still provides its
                 Debian name and version, so Debian dependencies on it resolve).
    meta         a package of the Fedora name with no files that requires Debian packages.
    standin      a small package of our own (standins.py) where Debian has no binary.
    placeholder  a package of the Fedora name with no files and no job: the templates install
                 it, nothing on the boot path uses it, and Debian 12 has no binary for it.
    pypi         a pure-Python package Debian 12 lacks, built from PyPI's release (PYPI pins it);
                 debian: the Debian packages it requires.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

PRODUCT = "Fedora"
VERSION = "43"
# What lorax names the ISO (isolabel "%s-%s-%s" % (product, version, basearch)).
ISOLABEL = f"{PRODUCT}-{VERSION}-x86_64"
# Fedora's grub2 packages are epoch 1; x86.tmpl's installpkg asks for grub2-*>=1:2.06-67.
GRUB2_EPOCH = "1"
GRUB2_RELEASE_BASE = "100"
# Packages of the small test product's machinery that Fedora-named packages may require.
OWN_PACKAGES = frozenset({"testproduct-setup"})


@dataclass(frozen=True)
class Fed:
    name: str  # the Fedora package name
    kind: str  # same, rename, meta, standin, placeholder
    debian: tuple[str, ...] = ()  # rename: (glob of the one Debian package); meta: what it requires
    note: str = ""


def _same(*names: str) -> list[Fed]:
    return [Fed(n, "same", (n,)) for n in names]


def _meta(name: str, *deb: str, note: str = "") -> Fed:
    return Fed(name, "meta", deb, note)


# What composer's own RPM (packaging/composer.spec) requires that the templates do not install:
# a runroot buildroot made from this product installs composer-lorax (issue 22).
COMPOSER: tuple[Fed, ...] = (
    *_same("python3-mako", "xorriso", "mtools", "rpm", "bubblewrap"),
    Fed("python3-kickstart", "pypi", ("python3-requests",), "pykickstart: Debian 12 has none"),
    Fed("python3-productmd", "pypi", (), "productmd: Debian 12 has none"),
)
# What the product's live spin (tools/testproduct/fedora-live.ks, through fedora-comps.xml's
# @core) installs that neither the templates nor composer name: the time zones `timezone` links.
LIVE: tuple[Fed, ...] = (*_same("tzdata"),)
# The PyPI release each pypi entry is built from.
PYPI = {"python3-kickstart": "pykickstart==3.78", "python3-productmd": "productmd==1.51"}

# Every package 99-generic's x86_64 templates install without --optional, plus the branding
# lorax looks up itself (a package providing system-release, and its -logos companion).
FEDORA: tuple[Fed, ...] = (
    Fed("anaconda", "meta", ("anaconda-core",), "the installer: requires the stand-in anaconda-core"),
    Fed("anaconda-core", "standin", note="anaconda.target/.service printing the boot marker, then power off"),
    Fed("anaconda-widgets", "placeholder", note="GTK widgets of the installer's GUI; no GUI here"),
    Fed("kdump-anaconda-addon", "placeholder", note="the installer's kdump screen; no installer here"),
    _meta(
        "anaconda-install-img-deps",
        # anaconda-core first: a meta carries the version of what it requires first, here the
        # stand-ins' (43.0), anaconda's as lorax 43.12 asks for it (>=40.15)
        "anaconda-core",
        "libglib2.0-bin",
        "fontconfig",
        "findutils",
        "lvm2",
        "mdadm",
        "isomd5sum",
        "kmod",
        "testproduct-setup",
        "filesystem",
        note="the tools runtime-postinstall.tmpl runs in the tree and /etc dirs it writes into; "
        "testproduct-setup (Debian's Essential set, users, maintainer-script work): Debian packages never name it",
    ),
    _meta("device-mapper-multipath", "multipath-tools"),
    *_same("dnf", "ostree", "pigz"),
    Fed("rpm-ostree", "placeholder", note="Debian 12 has no rpm-ostree; only the installer's ostree payload uses it"),
    _meta("kernel", "kernel-core", "kernel-modules"),
    Fed("kernel-core", "rename", ("linux-image-[0-9]*-amd64",)),
    _meta("kernel-modules", "kernel-core", note="Debian ships every module in one package (kernel-core here)"),
    _meta("kernel-modules-extra", "kernel-core", note="as kernel-modules"),
    Fed("grubby", "standin", note="--default-kernel and --info only (cleanup removes it from the runtime)"),
    _meta("glibc-all-langpacks", "locales", note="Debian's locales, not locales-all (227 MB): build time"),
    Fed("grub2-tools-efi", "rename", ("grub-efi-amd64-bin",)),
    *_same("efibootmgr"),
    Fed("shim-x64", "rename", ("shim-signed",)),
    Fed("grub2-efi-x64-cdboot", "rename", ("grub-efi-amd64-signed",)),
    Fed("biosdevname", "placeholder", note="Debian 12 has no biosdevname; off unless biosdevname=1 anyway"),
    Fed("grub2-tools", "rename", ("grub-common",)),
    Fed("grub2-tools-minimal", "rename", ("grub2-common",)),
    _meta("grub2-tools-extra", "grub2-tools"),
    Fed("grub2-pc-modules", "rename", ("grub-pc-bin",)),
    *_same("plymouth"),
    Fed("anaconda-dracut", "standin", note="dracut module 'anaconda': inst.stage2=/inst.repo=/inst.ks= for dmsquash-live"),
    *_same("dracut-network"),
    Fed("dracut-config-generic", "standin", note="dracut.conf.d/02-generic-image.conf: hostonly=no"),
    Fed("initscripts", "placeholder", note="Fedora's legacy network scripts; systemd does their work here"),
    *_same("cryptsetup", "rpcbind", "kbd"),
    _meta("kbd-misc", "kbd"),
    *_same("tar"),
    _meta("xz", "xz-utils"),
    *_same("curl", "bzip2"),
    _meta("rsvg-pixbuf-loader", "librsvg2-common"),
    *_same("rsyslog", "xfsprogs", "dosfstools"),
    _meta("device-mapper-persistent-data", "thin-provisioning-tools"),
    *_same("xfsdump", "udisks2"),
    _meta("udisks2-iscsi", "udisks2", "open-iscsi"),
    *_same("hostname"),
    _meta("libblockdev-lvm-dbus", "libblockdev-lvm-dbus2"),
    _meta("volume_key", "volume-key"),
    _meta("nss-tools", "libnss3-tools"),
    _meta("selinux-policy", "selinux-policy-default"),
    _meta("selinux-policy-targeted", "selinux-policy-default"),
    _meta("libselinux-utils", "selinux-utils"),
    _meta("audit", "auditd"),
    *_same("ethtool", "openssh-server"),
    _meta("nfs-utils", "nfs-common"),
    _meta("openssh-clients", "openssh-client"),
    *_same("net-tools"),
    _meta("ipcalc", "ipcalc-ng", note="Fedora's ipcalc is Debian's ipcalc-ng"),
    _meta("nmap-ncat", "ncat"),
    Fed("prefixdevname", "standin", note="udev helper naming NICs <prefix>N for net.ifnames.prefix=, dracut module"),
    *_same("pciutils", "usbutils", "ipmitool", "mt-st", "smartmontools", "hdparm", "rdma-core"),
    _meta("rng-tools", "rng-tools5"),
    *_same("dmidecode", "nvme-cli"),
    _meta("default-fonts-core-sans", "fonts-dejavu-core"),
    _meta("default-fonts-other-sans", "fonts-dejavu-extra"),
    Fed("google-noto-sans-cjk-fonts", "rename", ("fonts-noto-cjk",), "Sans at Fedora's path; Serif dropped"),
    _meta("gdb-gdbserver", "gdbserver"),
    *_same("python3-pyatspi", "nano"),
    _meta("vim-minimal", "vim-tiny"),
    *_same("strace", "lsof", "less", "wget", "rsync"),
    _meta("bind-utils", "bind9-dnsutils"),
    *_same("ftp"),
    _meta("mtr", "mtr-tiny"),
    *_same("spice-vdagent", "hexedit"),
    _meta("sg3_utils", "sg3-utils"),
    _meta("perl-interpreter", "perl"),
    _meta("restore", "dump"),
    # lorax 43.12's runtime-install.tmpl adds these (40.5.19's set names the rest)
    Fed("shim-ia32", "placeholder", note="shim for 32-bit UEFI: Debian 12 signs it only in its i386 archive"),
    Fed(
        "grub2-efi-ia32-cdboot",
        "placeholder",
        note="GRUB for 32-bit UEFI: Debian 12 signs it only in its i386 archive (no gcdia32.efi: x86.tmpl skips ia32)",
    ),
    Fed("amd-ucode-firmware", "placeholder", note="AMD CPU microcode: non-free-firmware in Debian, not loaded under qemu"),
    Fed("b43-openfwwf", "placeholder", note="open firmware for Broadcom b43 Wi-Fi: Debian 12 has none"),
    Fed("libreport-plugin-bugzilla", "placeholder", note="the installer's crash reporting: Debian 12 has no libreport"),
    Fed("libreport-plugin-reportuploader", "placeholder", note="as libreport-plugin-bugzilla"),
    Fed("fpaste", "placeholder", note="a pastebin client for the rescue shell: Debian 12 has none"),
    Fed("nano-default-editor", "placeholder", note="makes nano $EDITOR in Fedora's profile.d; no login shell uses it here"),
    *_same("dump", "bridge-utils", "gdisk"),
    _meta("vconfig", "vlan"),
    _meta("wget2-wget", "wget", note="Fedora's wget command from wget2; Debian's wget does its job"),
    Fed("fedora-release", "standin", note="provides system-release: /etc/fedora-release, /etc/system-release, license"),
    Fed("fedora-repos", "standin", note="/etc/yum.repos.d (postinstall moves it to /etc/anaconda.repos.d)"),
    Fed("filesystem", "standin", note="directories of Fedora's layout the Debian closure lacks (/mnt, /etc/sysconfig, ...)"),
    Fed("fedora-logos", "placeholder", note="lorax installs <release>-logos with the release; no artwork"),
    *COMPOSER,
    *LIVE,
)

# The x86_64 packages runtime-install.tmpl names without --optional (checked by the unit tests
# against the stock templates of lorax 40.5.19 and 43.12) and lorax's branding pair.
TEMPLATE_NAMES = frozenset(f.name for f in FEDORA) - {"anaconda-core", "kernel-core"} - {f.name for f in (*COMPOSER, *LIVE)}


def by_name() -> dict[str, Fed]:
    return {f.name: f for f in FEDORA}


def debian_roots(extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The Debian packages apt must select: what same/meta entries name (metas may name
    other Fedora entries, which are not Debian packages) and the renamed packages' Debian
    names (the kernel by its meta package linux-image-amd64)."""
    fed = by_name()
    roots: set[str] = set(extra)
    for f in FEDORA:
        if f.kind == "same":
            roots.add(f.name)
        elif f.kind in ("meta", "pypi"):
            roots.update(d for d in f.debian if d not in fed and d not in OWN_PACKAGES)
        elif f.kind == "rename":
            glob = f.debian[0]
            roots.add("linux-image-amd64" if "*" in glob else glob)
    return tuple(sorted(roots))


def rename_for(debname: str) -> str | None:
    """The Fedora name a Debian package is built under, or None (keeps its own)."""
    for f in FEDORA:
        if f.kind == "rename" and fnmatch.fnmatchcase(debname, f.debian[0]):
            return f.name
    return None


def collisions(debian_names: set[str]) -> list[str]:
    """Fedora names of our own packages (meta, standin, placeholder, rename targets) that a
    Debian package in the closure already has: two packages of one name cannot coexist."""
    return sorted(f.name for f in FEDORA if f.kind != "same" and f.name in debian_names)


# ----------------------------------------------------------------------- versions


def fedora_version(fedname: str, debversion: str) -> str:
    """The Debian-syntax version a renamed package is built with. Fedora's grub2 packages
    carry epoch 1 and templates ask for >= 1:2.06-67: grub2-* become 1:<upstream>-100.<debian>
    (upstream from the Debian version, e.g. 2.06-13+deb12u2 or 1+2.06+13+deb12u2)."""
    if not fedname.startswith("grub2-"):
        return debversion
    m = re.search(r"(\d+\.\d+(?:\.\d+)?)", debversion.split(":", 1)[-1])
    upstream = m.group(1) if m else "0"
    rest = re.sub(r"[^A-Za-z0-9.+~]", "+", debversion)
    return f"{GRUB2_EPOCH}:{upstream}-{GRUB2_RELEASE_BASE}.{rest}"


# ------------------------------------------------------------------------ paths


@dataclass(frozen=True)
class Move:
    package: str  # Debian package name glob
    pattern: str  # regex on the usr-merged path
    to: str | None  # replacement (re.sub syntax); None: the file is dropped
    copy: bool = False  # keep the original too


EFI_DIR = "/boot/efi/EFI/fedora"

MOVES: tuple[Move, ...] = (
    # efi.tmpl: install boot/efi/EFI/*/shimx64.efi, mmx64.efi, gcdx64.efi; x86.tmpl tests gcdx64.efi
    Move("shim-signed", r"^/usr/lib/shim/(shimx64)\.efi\.signed$", EFI_DIR + r"/\1.efi"),
    Move("shim-helpers-amd64-signed", r"^/usr/lib/shim/(mmx64|fbx64)\.efi\.signed$", EFI_DIR + r"/\1.efi"),
    Move("grub-efi-amd64-signed", r"^/usr/lib/grub/x86_64-efi-signed/(gcdx64|grubx64)\.efi\.signed$", EFI_DIR + r"/\1.efi"),
    # Fedora's kernel-core: /usr/lib/modules/VER/{vmlinuz,System.map,config}; lorax reads
    # /boot/vmlinuz-VER (kernel-install's copy) and /boot/System.map-VER: both kept.
    Move("linux-image-[0-9]*-amd64", r"^/boot/vmlinuz-(.+)$", r"/usr/lib/modules/\1/vmlinuz", copy=True),
    Move("linux-image-[0-9]*-amd64", r"^/boot/System\.map-(.+)$", r"/usr/lib/modules/\1/System.map", copy=True),
    Move("linux-image-[0-9]*-amd64", r"^/boot/config-(.+)$", r"/usr/lib/modules/\1/config", copy=True),
    # runtime-postinstall.tmpl links /lib/systemd/system/tmp.mount into local-fs.target.wants
    Move("systemd", r"^/usr/share/systemd/tmp\.mount$", "/usr/lib/systemd/system/tmp.mount", copy=True),
    # Debian's x11-common links /usr/bin/X11 -> . ; Fedora has no such loop, and
    # runtime-cleanup.tmpl's `find -L /etc /usr` fails on it ("File system loop detected")
    Move("*", r"^/usr/bin/X11$", None),
    # runtime-cleanup.tmpl trims /usr/share/fonts/google-noto-sans-cjk-fonts/NotoSansCJK-*.ttc
    Move(
        "fonts-noto-cjk",
        r"^/usr/share/fonts/opentype/noto/(NotoSansCJK-[^/]+\.ttc)$",
        r"/usr/share/fonts/google-noto-sans-cjk-fonts/\1",
    ),
    Move("fonts-noto-cjk", r"^/usr/share/fonts/opentype/noto/NotoSerifCJK-[^/]+$", None),
)


def relocate(debname: str, path: str, moves: tuple[Move, ...] = MOVES) -> list[str]:
    """Where a file of Debian package `debname` at `path` goes: [] (dropped), [path]
    (stays), [new] (moved) or [path, new] (copied). The first matching rule wins."""
    for mv in moves:
        if not fnmatch.fnmatchcase(debname, mv.package):
            continue
        if not re.match(mv.pattern, path):
            continue
        if mv.to is None:
            return []
        new = re.sub(mv.pattern, mv.to, path)
        return [path, new] if mv.copy else [new]
    return [path]


# ------------------------------------------------------------- kernel module lists

# Fedora's kernel package writes modules.block and modules.networking (lorax's
# generate_module_info reads both). Fedora picks modules by the symbols they use; we pick
# them by where they live in the tree, which names the same drivers for Debian's kernel.
BLOCK_DIRS = (
    "kernel/drivers/ata/",
    "kernel/drivers/block/",
    "kernel/drivers/md/",
    "kernel/drivers/message/fusion/",
    "kernel/drivers/mmc/host/",
    "kernel/drivers/nvme/host/",
    "kernel/drivers/scsi/",
    "kernel/drivers/usb/storage/",
    "kernel/drivers/target/",
)
NET_DIRS = ("kernel/drivers/net/",)


def module_lists(relpaths: list[str]) -> tuple[list[str], list[str]]:
    """(modules.block, modules.networking) lines: module file names (basename, as Fedora
    writes them) from paths relative to /usr/lib/modules/VER."""
    block, net = set(), set()
    for p in relpaths:
        base = p.rsplit("/", 1)[-1]
        if ".ko" not in base:
            continue
        if p.startswith(BLOCK_DIRS):
            block.add(base)
        elif p.startswith(NET_DIRS):
            net.add(base)
    return sorted(block), sorted(net)
