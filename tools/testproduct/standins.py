"""The Fedora-shaped product's own small packages: where Debian 12 has no binary.

Each does the job its Fedora namesake documents, as far as booting the installer media
needs, and nothing more; docs/testproduct.md lists them. Payloads are plain data
(path -> (mode, text), path -> symlink target) so they are fingerprinted and unit-tested;
build_package() turns any of them, and the meta/placeholder packages, into an RPM.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from testproduct import debrpm
from testproduct import translate as tr
from testproduct.setuppkg import BOOT_MARKER

STANDIN_VERSION = "43.0"
SYSTEMD_SYSTEM = "/usr/lib/systemd/system"
DRACUT_MODULES = "/usr/lib/dracut/modules.d"


@dataclass
class Package:
    name: str
    summary: str
    description: str
    evr: tr.EVR = field(default_factory=lambda: tr.EVR(None, STANDIN_VERSION, "1"))
    files: dict[str, tuple[int, str]] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    dirs: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()


# ----------------------------------------------------------------- anaconda-core

ANACONDA_TARGET = """\
[Unit]
Description=Anaconda System Services (composer test product stand-in)
Requires=basic.target
After=basic.target
Wants=anaconda.service
AllowIsolate=yes
"""

ANACONDA_SERVICE = """\
[Unit]
Description=Anaconda stand-in: report the installer environment up, then power off
After=basic.target

[Service]
Type=idle
ExecStart=/usr/libexec/anaconda/anaconda-standin
StandardOutput=journal+console
StandardError=journal+console
"""

# No coreutils `timeout`/`printf` here: runtime-cleanup.tmpl removes both from the runtime.
ANACONDA_STANDIN = r"""#!/bin/sh
# The test product's anaconda: no installer, only proof that the installer environment is
# up (systemd reached anaconda.target in the stage2 image): print the boot marker on the
# serial port and the console, then power off.
PATH=/usr/sbin:/usr/bin
export PATH
failed=$(systemctl list-units --state=failed --no-legend --plain 2>/dev/null | while read -r unit rest; do
    [ "$unit" = "$rest" ] || echo "$unit"
done)
nfailed=0
for unit in $failed; do nfailed=$((nfailed + 1)); done
mem=$(sed -n 's/^MemTotal:[[:space:]]*//p' /proc/meminfo | tr -d ' ')
say() {
    for dev in /dev/ttyS0 /dev/console; do
        [ -c "$dev" ] && echo "$1" > "$dev" 2>/dev/null &
    done
    sleep 1
}
for unit in $failed; do say "anaconda-standin: failed unit $unit"; done
# anaconda installs from the boot media when it holds a repository (a DVD): dmsquash-live left
# that device mounted here. Packages counted by shell glob (Pungi puts them in Packages/<letter>/).
live=/run/initramfs/live
if [ -f "$live/repodata/repomd.xml" ]; then
    n=0
    for rpm in "$live"/Packages/*.rpm "$live"/Packages/*/*.rpm; do [ -f "$rpm" ] && n=$((n + 1)); done
    say "anaconda-standin: repository on the boot media: $live/repodata/repomd.xml, $n packages"
else
    say "anaconda-standin: no repository on the boot media"
fi
say "@MARKER@ kernel=$(uname -r) memtotal=$mem failed=$nfailed anaconda-standin"
systemctl poweroff --no-block || poweroff -f
""".replace("@MARKER@", BOOT_MARKER)

RUN_ANACONDA = """#!/bin/sh
# The "install" user's shell (runtime-postinstall.tmpl): anaconda would start here.
echo "anaconda stand-in: this test product has no installer; starting a shell"
exec /bin/sh -l
"""

ANACONDA_SHELL = """\
[Unit]
Description=Shell on %I (anaconda stand-in)

[Service]
Type=idle
ExecStart=-/bin/sh -l
StandardInput=tty
StandardOutput=tty
TTYPath=/dev/%I
TTYReset=yes
TTYVHangup=yes
Restart=always
"""

LIST_HARDDRIVES = r"""#!/bin/sh
# anaconda's list-harddrives: one line per disk, "NAME SIZE_IN_MB" (no CD-ROMs, no loops).
for d in /sys/block/*; do
    name=${d##*/}
    case "$name" in loop*|ram*|sr*|zram*|dm-*|md*) continue ;; esac
    [ -r "$d/size" ] || continue
    sectors=$(cat "$d/size")
    [ "$sectors" -gt 0 ] || continue
    echo "$name $((sectors / 2048))"
done
"""


def anaconda_core() -> Package:
    return Package(
        name="anaconda-core",
        summary="Installer stand-in: anaconda.target and a service that reports the boot",
        description="No installer. anaconda.target (the runtime's default target) pulls in "
        "anaconda.service, which prints the test product's boot marker and powers off.",
        files={
            f"{SYSTEMD_SYSTEM}/anaconda.target": (0o644, ANACONDA_TARGET),
            f"{SYSTEMD_SYSTEM}/anaconda.service": (0o644, ANACONDA_SERVICE),
            f"{SYSTEMD_SYSTEM}/anaconda-shell@.service": (0o644, ANACONDA_SHELL),
            "/usr/libexec/anaconda/anaconda-standin": (0o755, ANACONDA_STANDIN),
            "/usr/libexec/anaconda/run-anaconda": (0o755, RUN_ANACONDA),
            "/usr/share/anaconda/list-harddrives-stub": (0o755, LIST_HARDDRIVES),
        },
        requires=("systemd", "/bin/sh", "sed"),
    )


# ----------------------------------------------------------------- anaconda-dracut

DRACUT_ANACONDA_SETUP = """#!/bin/bash
# anaconda-dracut stand-in: the 'anaconda' dracut module (lorax adds it with --add).
check() { return 255; }
depends() {
    echo dmsquash-live img-lib
    [ -d "$dracutbasedir/modules.d/90livenet" ] && echo livenet
    return 0
}
install() {
    inst_hook cmdline 25 "$moddir/parse-anaconda-stage2.sh"
    inst_hook pre-pivot 50 "$moddir/anaconda-copy-ks.sh"
    inst_multiple -o mount umount
}
"""

# Sourced by dracut-cmdline (same shell): setting root= here is how dmsquash-live learns it.
PARSE_STAGE2 = r"""#!/bin/sh
# inst.stage2=/inst.repo= as anaconda documents them, handed to dracut's live image boot:
#   hd:LABEL=X[:/path] hd:UUID=X[:/path] hd:/dev/X[:/path] cdrom  -> root=live:<device>
#   http(s)://.../ ftp://.../                                        -> root=live:<url>
# /path (or the URL) names the tree whose images/install.img is the stage2 image, or the
# image itself when it ends in .img. install.img is a squashfs of the root: overlayfs on top.
type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh
stage2=$(getarg inst.stage2=)
[ -n "$stage2" ] || stage2=$(getarg inst.repo=)
if [ -n "$stage2" ] && [ -z "$root" -o "$root" = "anaconda" ]; then
    dir=images img=install.img loc=
    case "$stage2" in
        hd:*)
            spec=${stage2#hd:}
            dev=${spec%%:*}
            path=${spec#"$dev"}
            path=${path#:}
            case "$dev" in LABEL=* | UUID=* | CDLABEL=* | /dev/*) ;; *) dev=/dev/$dev ;; esac
            loc=live:$dev
            ;;
        cdrom | cdrom:*)
            dev=${stage2#cdrom}; dev=${dev#:}
            loc=live:${dev:-/dev/sr0} path=
            ;;
        http://* | https://* | ftp://*)
            case "$stage2" in
                *.img) loc=live:$stage2 ;;
                *) loc=live:${stage2%/}/images/install.img ;;
            esac
            path=
            ;;
        *) warn "anaconda: inst.stage2=$stage2: only hd:, cdrom and http(s)/ftp are supported" ;;
    esac
    if [ -n "$loc" ]; then
        case "$path" in
            *.img) dir=${path%/*}; img=${path##*/} ;;
            /*) dir=${path%/}/images ;;
        esac
        dir=${dir#/}
        root=$loc
        mkdir -p /etc/cmdline.d
        echo "rd.live.dir=${dir:-/} rd.live.squashimg=$img rd.live.overlay.overlayfs=1" > /etc/cmdline.d/75-anaconda-stage2.conf
        info "anaconda: inst.stage2=$stage2 -> root=$root rd.live.dir=${dir:-/} rd.live.squashimg=$img"
    fi
fi
"""

COPY_KS = r"""#!/bin/sh
# inst.ks=hd:<device>:/path or file:/path: copy the kickstart to /run/install/ks.cfg in the
# new root, where anaconda reads it (other locations: anaconda fetches them itself).
type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh
ks=$(getarg inst.ks=)
case "$ks" in
    file:/*)
        src=${ks#file:}
        [ -f "$src" ] && mkdir -p "$NEWROOT/run/install" && cp "$src" "$NEWROOT/run/install/ks.cfg"
        ;;
    hd:*:/*)
        spec=${ks#hd:}; dev=${spec%:/*}; path=/${spec##*:/}
        case "$dev" in
            LABEL=*) dev=/dev/disk/by-label/${dev#LABEL=} ;;
            UUID=*) dev=/dev/disk/by-uuid/${dev#UUID=} ;;
            /dev/*) ;;
            *) dev=/dev/$dev ;;
        esac
        mnt=/run/install/ksdev
        mkdir -p "$mnt" "$NEWROOT/run/install"
        if mount -r "$dev" "$mnt"; then
            [ -f "$mnt$path" ] && cp "$mnt$path" "$NEWROOT/run/install/ks.cfg" || warn "anaconda: no $path on $dev"
            umount "$mnt"
        else
            warn "anaconda: cannot mount $dev for inst.ks"
        fi
        ;;
esac
"""


def anaconda_dracut() -> Package:
    mod = f"{DRACUT_MODULES}/80anaconda"
    return Package(
        name="anaconda-dracut",
        summary="The installer's dracut module (stand-in): inst.stage2=, inst.repo=, inst.ks=",
        description="Hands inst.stage2= (or inst.repo=) to dracut's dmsquash-live as root=live:... "
        "with rd.live.dir/rd.live.squashimg naming images/install.img, and copies an inst.ks= "
        "kickstart from a disk to /run/install/ks.cfg.",
        files={
            f"{mod}/module-setup.sh": (0o755, DRACUT_ANACONDA_SETUP),
            f"{mod}/parse-anaconda-stage2.sh": (0o755, PARSE_STAGE2),
            f"{mod}/anaconda-copy-ks.sh": (0o755, COPY_KS),
        },
        requires=("dracut-live", "dracut-squash"),
    )


# ---------------------------------------------------------------- prefixdevname

PREFIXDEVNAME = r"""#!/bin/sh
# prefixdevname stand-in: with net.ifnames.prefix=PFX, print PFX<N> (the lowest N no
# interface has) for udev to name a new ethernet interface; otherwise print nothing.
prefix=
for arg in $(cat /proc/cmdline); do
    case "$arg" in net.ifnames.prefix=*) prefix=${arg#net.ifnames.prefix=} ;; esac
done
[ -n "$prefix" ] || exit 1
n=0
while [ -e "/sys/class/net/$prefix$n" ]; do n=$((n + 1)); done
echo "$prefix$n"
"""

PREFIXDEVNAME_RULES = """\
# prefixdevname stand-in: name ethernet NICs <prefix>N when net.ifnames.prefix= is given.
ACTION=="add", SUBSYSTEM=="net", ATTR{type}=="1", PROGRAM="/usr/lib/udev/prefixdevname", NAME="%c"
"""

PREFIXDEVNAME_DRACUT = """#!/bin/bash
# prefixdevname stand-in's dracut module (lorax adds prefixdevname-tools with --add).
check() { return 255; }
depends() { return 0; }
install() {
    inst_multiple -o /usr/lib/udev/prefixdevname cat
    inst_rules 71-prefixdevname.rules
}
"""


def prefixdevname() -> Package:
    return Package(
        name="prefixdevname",
        summary="Stand-in: NIC names with a user-defined prefix (net.ifnames.prefix=)",
        description="A udev rule and helper naming ethernet interfaces PREFIX0, PREFIX1, ... when "
        "net.ifnames.prefix=PREFIX is on the kernel command line, and the prefixdevname-tools "
        "dracut module that carries them into the initramfs.",
        files={
            "/usr/lib/udev/prefixdevname": (0o755, PREFIXDEVNAME),
            "/usr/lib/udev/rules.d/71-prefixdevname.rules": (0o644, PREFIXDEVNAME_RULES),
            f"{DRACUT_MODULES}/71prefixdevname-tools/module-setup.sh": (0o755, PREFIXDEVNAME_DRACUT),
        },
        requires=("udev",),
    )


# --------------------------------------------------------------------- others

GRUBBY = r"""#!/bin/sh
# grubby stand-in: --default-kernel and --info=ALL|KERNEL only.
newest() { ls -1 /boot/vmlinuz-* 2> /dev/null | grep -v rescue | sort -V | tail -n 1; }
case "$1" in
    --default-kernel) k=$(newest); [ -n "$k" ] && echo "$k" || exit 1 ;;
    --info=*)
        which=${1#--info=}; i=0
        for k in $(ls -1 /boot/vmlinuz-* 2> /dev/null | sort -V); do
            [ "$which" = ALL ] || [ "$which" = "$k" ] || continue
            v=${k#/boot/vmlinuz-}
            echo "index=$i"; echo "kernel=\"$k\""; echo "initrd=\"/boot/initramfs-$v.img\""
            i=$((i + 1))
        done
        ;;
    *) echo "grubby (composer test product stand-in): $1 is not supported" >&2; exit 1 ;;
esac
"""


def small_standins() -> list[Package]:
    license_text = "The Fedora-shaped test product's own packages: MIT (composer).\n"
    return [
        Package(
            name="grubby",
            summary="Stand-in: report the default kernel (--default-kernel, --info)",
            description="Answers grubby's queries from /boot; changes nothing.",
            files={"/usr/sbin/grubby": (0o755, GRUBBY)},
        ),
        Package(
            name="dracut-config-generic",
            summary="dracut configuration for generic (not host-only) images",
            description="As Fedora's: hostonly=no, so an initramfs boots any machine.",
            files={
                "/usr/lib/dracut/dracut.conf.d/02-generic-image.conf": (0o644, 'hostonly="no"\n'),
            },
            requires=("dracut",),
        ),
        Package(
            name="filesystem",
            summary="Stand-in: the directories of Fedora's layout Debian's packages do not ship",
            description="/mnt, /media, /opt, /srv, /etc/sysconfig (Fedora's filesystem owns them) and "
            "/etc/depmod.d (Fedora's kmod): runtime-postinstall.tmpl writes into them.",
            dirs=("/mnt", "/media", "/opt", "/srv", "/etc/sysconfig", "/etc/depmod.d"),
        ),
        Package(
            name="fedora-repos",
            summary="Stand-in: the repository definitions directory /etc/yum.repos.d",
            description="Fedora's fedora-repos ships /etc/yum.repos.d/*.repo for Fedora's mirrors; this "
            "test product has none to name, so only the directory.",
            dirs=("/etc/yum.repos.d",),
        ),
        Package(
            name="fedora-release",
            summary="Stand-in release package: system-release for lorax's branding",
            description="Provides system-release (lorax picks the branding from it), "
            "/etc/fedora-release, /etc/system-release and the license x86.tmpl copies to the ISO.",
            files={
                "/etc/fedora-release": (0o644, "Fedora release 43 (composer test product)\n"),
                "/usr/share/licenses/fedora-release-common/LICENSE": (0o644, license_text),
            },
            links={"/etc/system-release": "fedora-release"},
            provides=("system-release", "system-release(43)"),
            requires=("fedora-repos",),
        ),
    ]


def all_standins() -> list[Package]:
    return [anaconda_core(), anaconda_dracut(), prefixdevname(), *small_standins()]


def fingerprint(pkgs: Iterable[Package]) -> str:
    h = hashlib.sha256()
    for p in sorted(pkgs, key=lambda p: p.name):
        h.update(repr((p.name, str(p.evr), p.summary, p.description, sorted(p.files.items()))).encode())
        h.update(repr((sorted(p.links.items()), p.dirs, p.requires, p.provides)).encode())
    return h.hexdigest()


def _entries(p: Package, root: Path, closure: dict[str, debrpm.Entry]) -> list[debrpm.Entry]:
    entries: list[debrpm.Entry] = []
    for path in sorted(set(p.files) | set(p.links) | set(p.dirs)):
        if path in closure and path not in p.dirs:
            raise RuntimeError(f"{p.name}: {path} is shipped by a Debian package too")
        dst = root / path.lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        if path in p.dirs and path in closure:
            continue  # a directory a Debian package ships already
        if path in p.files:
            mode, text = p.files[path]
            dst.write_text(text)
            os.chmod(dst, mode)
            entries.append(debrpm.Entry(path, path, "f", mode, "root", "root"))
        elif path in p.links:
            os.symlink(p.links[path], dst)
            entries.append(debrpm.Entry(path, path, "l", 0o777, "root", "root", p.links[path]))
        else:
            dst.mkdir(exist_ok=True)
            entries.append(debrpm.Entry(path, path, "d", 0o755, "root", "root"))
        parent = os.path.dirname(path)
        while parent != "/" and parent not in closure:
            entries.append(debrpm.Entry(parent, parent, "d", 0o755, "root", "root"))
            parent = os.path.dirname(parent)
    return list({e.path: e for e in entries}.values())


def build_package(p: Package, *, workdir: Path, rpmdir: Path, closure: dict[str, debrpm.Entry]) -> None:
    """rpmbuild one of our packages (noarch) into rpmdir. closure: every path the Debian
    packages ship (our packages own only what no Debian package does)."""
    root = workdir / "root" / p.name
    root.mkdir(parents=True)
    entries = _entries(p, root, closure)
    spec = debrpm.spec_for(
        name=p.name,
        evr=p.evr,
        arch="noarch",
        summary=p.summary,
        description=p.description + "\n\nPart of composer's Fedora-shaped test product (docs/testproduct.md).",
        license="MIT",
        requires=p.requires,
        provides=p.provides,
        files=debrpm.files_section(entries, config=[e.path for e in entries if e.path.startswith("/etc/") and e.kind == "f"]),
    )
    specfile = workdir / "specs" / f"{p.name}.spec"
    specfile.parent.mkdir(parents=True, exist_ok=True)
    specfile.write_text(spec)
    debrpm.rpmbuild(specfile, buildroot=root, arch="noarch", rpmdir=rpmdir, workdir=workdir, mtime=0)
