"""testproduct-setup: the package that does what Debian's maintainer scripts would have done.

Repackaged Debian packages carry no scriptlets. This package ships the usr-merge
links (/bin -> usr/bin ...), /var/run -> ../run, the boot-check unit (enabled),
default.target -> multi-user.target, PAM's common-* files, and a fix-up script
that %posttrans runs once at the end of the transaction that installs it:
passwd/group/shadow from base-passwd + systemd-sysusers, an empty root password,
ownership of the few non-root files, /etc/machine-id, update-alternatives
links, ldconfig, depmod for every kernel, the udev hwdb. File triggers rerun
depmod/ldconfig when kernels or libraries arrive in a later transaction.
It requires Debian's Essential packages (dpkg assumes them, so no Debian package
names them) and the other base packages (mawk, mount, passwd, PAM); nothing
requires it: the runtime template installs it explicitly.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from testproduct import debrpm
from testproduct import translate as tr

NAME = "testproduct-setup"
VERSION = "1.0"
LIBEXEC = "/usr/libexec/testproduct"
UNIT = "composer-boot-check.service"
# What the boot check prints once the system is up, and the kernel argument that asks for it
# (`composer verify --marker/--check-args` default to these).
BOOT_MARKER = "COMPOSER-BOOT-OK"
CHECK_ARGS = "composer.check=poweroff"

BOOT_CHECK_UNIT = f"""\
[Unit]
Description=composer boot check: print {BOOT_MARKER} on the console and power off
ConditionKernelCommandLine={CHECK_ARGS}
After=multi-user.target

[Service]
Type=idle
ExecStart={LIBEXEC}/boot-check
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
"""

BOOT_CHECK = r"""#!/bin/sh
# Prints COMPOSER-BOOT-OK (and COMPOSER-BOOT-FAILED <unit> for failed units) on the
# serial port and the console, then powers the machine off. Before it: COMPOSER-CMDLINE,
# and COMPOSER-KS / COMPOSER-LIST for media with inst.ks=hd:LABEL= (see below).
PATH=/usr/sbin:/usr/bin
export PATH
say() {
    for dev in /dev/ttyS0 /dev/console; do
        [ -c "$dev" ] || continue
        timeout 5 sh -c 'printf "%s\r\n" "$1" > "$2"' sh "$1" "$dev" 2>/dev/null || :
    done
}
failed=$(systemctl list-units --state=failed --no-legend --plain 2>/dev/null | while read -r unit rest; do
    [ "$unit" = "$rest" ] || printf '%s ' "$unit"
done)
nfailed=0
for unit in $failed; do
    nfailed=$((nfailed + 1))
    say "COMPOSER-BOOT-FAILED $unit"
done
# What the boot loader passed, and (for remastered media, composer mkksiso) whether the
# kickstart named by inst.ks=hd:LABEL=X:/PATH is on medium X, and the files under the
# medium's directory named by composer.list=/DIR.
cmdline=$(cat /proc/cmdline)
say "COMPOSER-CMDLINE $cmdline"
ks= list=
set -f
for arg in $cmdline; do
    case "$arg" in
        inst.ks=hd:LABEL=*:/*) ks=${arg#inst.ks=hd:LABEL=} ;;
        composer.list=/*) list=${arg#composer.list=} ;;
    esac
done
set +f
if [ -n "$ks" ]; then
    mnt=/run/composer-medium
    mkdir -p "$mnt"
    if mount -r -L "${ks%%:*}" "$mnt"; then
        f="$mnt${ks#*:}"
        if [ -f "$f" ]; then say "COMPOSER-KS found $ks first=$(head -n 1 "$f")"; else say "COMPOSER-KS missing $ks"; fi
        [ -z "$list" ] || say "COMPOSER-LIST $list: $(cd "$mnt$list" && find . -type f | sort | tr '\n' ' ')"
        umount "$mnt"
    else
        say "COMPOSER-KS cannot mount LABEL=${ks%%:*}"
    fi
fi
mem=$(sed -n 's/^MemTotal:[[:space:]]*//p' /proc/meminfo | tr -d ' ')
say "COMPOSER-BOOT-OK kernel=$(uname -r) memtotal=$mem failed=$nfailed"
systemctl poweroff --no-block || poweroff -f
"""

SCRIPT_UNIT = "composer-script.service"
SCRIPT_MARKER = "COMPOSER-SCRIPT-DONE"

# Test harness hook: with composer.script=1 on the kernel command line, run run.sh from
# the first virtio disk (an ext4 image the host prepared) and power off. Ordered before
# the boot check, whose poweroff would otherwise race it; the boot check stays as it is.
SCRIPT_UNIT_TEXT = f"""\
[Unit]
Description=composer test script: run run.sh from the first virtio disk and power off
ConditionKernelCommandLine=composer.script=1
After=multi-user.target
Before={UNIT}

[Service]
Type=oneshot
TimeoutStartSec=infinity
ExecStart={LIBEXEC}/run-script
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
"""

RUN_SCRIPT = r"""#!/bin/sh
# Mounts /dev/vda (ext4, prepared by the host) at /mnt/composer, runs its run.sh with
# the output on the serial port, unmounts, prints COMPOSER-SCRIPT-DONE rc=<rc>, powers off.
PATH=/usr/sbin:/usr/bin
export PATH
DISK=/dev/vda
MNT=/mnt/composer
say() {
    for dev in /dev/ttyS0 /dev/console; do
        [ -c "$dev" ] || continue
        timeout 5 sh -c 'printf "\r\n%s\r\n" "$1" > "$2"' sh "$1" "$dev" 2>/dev/null || :
        break
    done
}
out=/dev/ttyS0
[ -c "$out" ] || out=/dev/console
rc=0
modprobe virtio_blk 2>/dev/null || :
i=0
while [ ! -b "$DISK" ] && [ $i -lt 60 ]; do
    udevadm settle --timeout=5 2>/dev/null || :
    [ -b "$DISK" ] || sleep 1
    i=$((i + 1))
done
if [ ! -b "$DISK" ]; then
    say "composer-script: no $DISK"
    rc=253
elif ! { mkdir -p "$MNT" && mount -t ext4 "$DISK" "$MNT"; }; then
    say "composer-script: cannot mount $DISK"
    rc=254
else
    if [ -f "$MNT/run.sh" ]; then
        # The serial getty hangs up ttyS0 when it starts (vhangup), which would cut off
        # an fd opened before: reopen the port for every line instead (as say does).
        { (cd "$MNT" && sh "$MNT/run.sh") < /dev/null 2>&1; echo $? > /run/composer-script.rc; } |
            while IFS= read -r line || [ -n "$line" ]; do
                timeout 5 sh -c 'printf "%s\r\n" "$1" > "$2"' sh "$line" "$out" 2>/dev/null || :
            done
        rc=$(cat /run/composer-script.rc 2>/dev/null || echo 250)
    else
        say "composer-script: no run.sh on $DISK"
        rc=252
    fi
    sync
    umount "$MNT" || { say "composer-script: cannot unmount $MNT"; rc=251; }
fi
sync
say "@MARKER@ rc=$rc"
systemctl poweroff --no-block || poweroff -f
""".replace("@MARKER@", SCRIPT_MARKER)

# update-alternatives links Debian's postinst scripts would make: (name, link, target)
ALTERNATIVES = (
    ("awk", "/usr/bin/awk", "/usr/bin/mawk"),
    ("nawk", "/usr/bin/nawk", "/usr/bin/mawk"),
    ("pager", "/usr/bin/pager", "/usr/bin/less"),
    ("which", "/usr/bin/which", "/usr/bin/which.debianutils"),
    ("lzma", "/usr/bin/lzma", "/usr/bin/xz"),
    ("unlzma", "/usr/bin/unlzma", "/usr/bin/unxz"),
    ("lzcat", "/usr/bin/lzcat", "/usr/bin/xzcat"),
)

FIXUPS_HEAD = r"""#!/bin/sh
# testproduct-setup: side effects of Debian's maintainer scripts (idempotent).
# Usage: setup-fixups [all|kernels|ldconfig]
PATH=/usr/sbin:/usr/bin
export PATH
warn() { echo "testproduct-setup: warning: $*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }

users() {
    for f in passwd group; do
        if [ ! -e /etc/$f ] && [ -e /usr/share/base-passwd/$f.master ]; then
            cp /usr/share/base-passwd/$f.master /etc/$f && chmod 0644 /etc/$f
        fi
    done
    if [ -e /etc/passwd ] && [ ! -e /etc/shadow ] && have pwconv; then pwconv || warn "pwconv failed"; fi
    if [ -e /etc/group ] && [ ! -e /etc/gshadow ] && have grpconv; then grpconv || warn "grpconv failed"; fi
    if have systemd-sysusers; then systemd-sysusers >/dev/null 2>&1 || warn "systemd-sysusers failed"; fi
    # a test system: root logs in without a password (serial console)
    if [ -e /etc/shadow ] && grep -q '^root:[*!]*:' /etc/shadow; then
        sed -i 's/^root:[^:]*:/root::/' /etc/shadow
    fi
}

owners() {
    while read -r owner mode path; do
        [ -e "$path" ] || [ -L "$path" ] || continue
        chown -h "$owner" "$path" 2>/dev/null && chmod "$mode" "$path" || warn "cannot chown $owner $path"
    done <<'EOF'
@OWNERS@EOF
}

alternatives() {
    while read -r name link target; do
        [ -e "$target" ] || continue
        [ -e "$link" ] || [ -L "$link" ] && continue
        mkdir -p /etc/alternatives
        ln -sfn "$target" "/etc/alternatives/$name"
        ln -sfn "/etc/alternatives/$name" "$link"
    done <<'EOF'
@ALTERNATIVES@EOF
}

kernels() {
    for d in /usr/lib/modules/*; do
        [ -f "$d/modules.order" ] || continue
        if [ ! -e "$d/modules.dep" ] || [ "$d/modules.order" -nt "$d/modules.dep" ]; then
            have depmod && { depmod -a "${d##*/}" || warn "depmod ${d##*/} failed"; }
        fi
    done
}

run_ldconfig() {
    if have ldconfig; then ldconfig || warn "ldconfig failed"; fi
}

misc() {
    [ -e /etc/machine-id ] || : > /etc/machine-id
    if have systemd-hwdb && [ ! -e /etc/udev/hwdb.bin ]; then systemd-hwdb update || warn "systemd-hwdb update failed"; fi
}

case "${1:-all}" in
    all) users; owners; alternatives; run_ldconfig; kernels; misc ;;
    kernels) kernels ;;
    ldconfig) run_ldconfig ;;
    *) warn "unknown step $1"; exit 1 ;;
esac
exit 0
"""

SCRIPTS = f"""\
%posttrans
{LIBEXEC}/setup-fixups all

%transfiletriggerin -- /usr/lib/modules
{LIBEXEC}/setup-fixups kernels

%transfiletriggerin -- /usr/lib/x86_64-linux-gnu /usr/lib64
{LIBEXEC}/setup-fixups ldconfig
"""

PAM = {
    "common-auth": (
        "auth\t[success=1 default=ignore]\tpam_unix.so nullok\n"
        "auth\trequisite\t\t\tpam_deny.so\n"
        "auth\trequired\t\t\tpam_permit.so\n"
    ),
    "common-account": (
        "account\t[success=1 new_authtok_reqd=done default=ignore]\tpam_unix.so\n"
        "account\trequisite\t\t\tpam_deny.so\n"
        "account\trequired\t\t\tpam_permit.so\n"
    ),
    "common-password": (
        "password\t[success=1 default=ignore]\tpam_unix.so obscure yescrypt\n"
        "password\trequisite\t\t\tpam_deny.so\n"
        "password\trequired\t\t\tpam_permit.so\n"
    ),
    "common-session": (
        "session\t[default=1]\t\t\tpam_permit.so\n"
        "session\trequisite\t\t\tpam_deny.so\n"
        "session\trequired\t\t\tpam_permit.so\n"
        "session\trequired\t\t\tpam_unix.so\n"
    ),
}
PAM["common-session-noninteractive"] = PAM["common-session"]

# groups Debian's udev postinst adds (its rules name them)
SYSUSERS = "g input - -\ng kvm - -\ng render - -\ng sgx - -\n"

SYSTEMD_SYSTEM = "/usr/lib/systemd/system"

# Priority: required packages testproduct-setup pulls in besides the Essential set
BASE_EXTRA = ("mawk", "mount", "passwd", "login", "libpam-runtime", "libpam-modules", "usr-is-merged")


def payload() -> tuple[dict[str, tuple[int, str]], dict[str, str]]:
    """(files: path -> (mode, text), symlinks: path -> target); owner fix-ups excluded."""
    files: dict[str, tuple[int, str]] = {
        f"{SYSTEMD_SYSTEM}/{UNIT}": (0o644, BOOT_CHECK_UNIT),
        f"{LIBEXEC}/boot-check": (0o755, BOOT_CHECK),
        f"{SYSTEMD_SYSTEM}/{SCRIPT_UNIT}": (0o644, SCRIPT_UNIT_TEXT),
        f"{LIBEXEC}/run-script": (0o755, RUN_SCRIPT),
        "/usr/lib/sysusers.d/testproduct.conf": (0o644, SYSUSERS),
    }
    for name, text in PAM.items():
        files[f"/etc/pam.d/{name}"] = (0o644, "# generated by testproduct-setup\n" + text)
    links = {f"/{d}": f"usr/{d}" for d in ("bin", "sbin", "lib", "lib64")}
    links.update({"/var/run": "../run", "/var/lock": "../run/lock", "/etc/mtab": "../proc/self/mounts"})
    links["/etc/systemd/system/default.target"] = f"{SYSTEMD_SYSTEM}/multi-user.target"
    links[f"/etc/systemd/system/multi-user.target.wants/{UNIT}"] = f"{SYSTEMD_SYSTEM}/{UNIT}"
    links[f"/etc/systemd/system/multi-user.target.wants/{SCRIPT_UNIT}"] = f"{SYSTEMD_SYSTEM}/{SCRIPT_UNIT}"
    links["/etc/systemd/system/getty.target.wants/getty@tty1.service"] = f"{SYSTEMD_SYSTEM}/getty@.service"
    return files, links


def fixups_script(owner_fixups: Iterable[tuple[str, str, str, int]]) -> str:
    owners = "".join(f"{u}:{g} {mode:04o} {p}\n" for p, u, g, mode in sorted(owner_fixups))
    alts = "".join(f"{n} {link} {t}\n" for n, link, t in ALTERNATIVES)
    return FIXUPS_HEAD.replace("@OWNERS@", owners).replace("@ALTERNATIVES@", alts)


def fingerprint() -> str:
    """Changes whenever what this module generates could change."""
    files, links = payload()
    h = hashlib.sha256()
    for k in sorted(files):
        h.update(f"{k}\0{files[k][0]}\0{files[k][1]}\0".encode())
    for k in sorted(links):
        h.update(f"{k}\0{links[k]}\0".encode())
    h.update(FIXUPS_HEAD.encode())
    h.update(SCRIPTS.encode())
    h.update(repr(ALTERNATIVES).encode())
    h.update(repr(BASE_EXTRA).encode())
    return h.hexdigest()


def build(
    *,
    workdir: Path,
    rpmdir: Path,
    release: str,
    closure: dict[str, debrpm.Entry],
    owner_fixups: Iterable[tuple[str, str, str, int]],
    base: Iterable[str] = (),
) -> None:
    """Build testproduct-setup into rpmdir. closure: every path the Debian packages ship;
    base: packages it requires (Debian's Essential set is never named as a dependency,
    dpkg assumes it; this package stands in for that assumption)."""
    root = workdir / "root" / NAME
    root.mkdir(parents=True)
    files, links = payload()
    files[f"{LIBEXEC}/setup-fixups"] = (0o755, fixups_script(owner_fixups))
    entries: list[debrpm.Entry] = []
    config = []
    for path in sorted(set(files) | set(links)):
        if path in closure:
            raise RuntimeError(f"{NAME}: {path} is shipped by a Debian package too")
        dst = root / path.lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        if path in files:
            mode, text = files[path]
            dst.write_text(text)
            os.chmod(dst, mode)
            entries.append(debrpm.Entry(path, path, "f", mode, "root", "root"))
            if path.startswith("/etc/"):
                config.append(path)
        else:
            os.symlink(links[path], dst)
            entries.append(debrpm.Entry(path, path, "l", 0o777, "root", "root", links[path]))
        # own the parent directories no Debian package owns
        parent = os.path.dirname(path)
        while parent != "/" and parent not in closure:
            entries.append(debrpm.Entry(parent, parent, "d", 0o755, "root", "root"))
            parent = os.path.dirname(parent)
    unique = {e.path: e for e in entries}
    spec = debrpm.spec_for(
        name=NAME,
        evr=tr.EVR(None, VERSION, release),
        arch="noarch",
        summary="Test product set-up: what Debian's maintainer scripts would have done",
        description=__doc__.strip(),
        license="MIT",
        requires=sorted({"/bin/sh", "coreutils", "sed", "grep", "base-passwd", *base}),
        files=debrpm.files_section(unique.values(), config=config),
        scripts=SCRIPTS,
    )
    specfile = workdir / "specs" / f"{NAME}.spec"
    specfile.parent.mkdir(parents=True, exist_ok=True)
    specfile.write_text(spec)
    debrpm.rpmbuild(specfile, buildroot=root, arch="noarch", rpmdir=rpmdir, workdir=workdir, mtime=0)
