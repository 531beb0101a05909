"""The system part of a kickstart (what anaconda configures in an image install), read
from the same pykickstart handler as the package sources (composer.kickstart).

Each command is honoured, ignored as anaconda ignores it for an image install (named in
one line), or refused (one line with FILE:LINE): composer never drops a request silently.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from composer.run import ComposerError

# Commands this module (or composer.kickstart) reads into the model.
HONOURED = (
    "url",
    "repo",
    "bootloader",
    "lang",
    "keyboard",
    "timezone",
    "rootpw",
    "user",
    "group",
    "sshkey",
    "services",
    "selinux",
    "firewall",
    "network",
    "part",  # the root filesystem type of --make-fsimage; the layout of --make-disk
    "partition",
)

# What anaconda itself ignores or does only in the installer, for an image install: the
# disk layout (no disk here but --make-disk's, not yet), the installer's interface, the end.
IGNORED = (
    "autopart",
    "clearpart",
    "zerombr",
    "reqpart",
    "ignoredisk",
    "logvol",
    "volgroup",
    "raid",
    "btrfs",
    "text",
    "graphical",
    "cmdline",
    "skipx",
    "xconfig",
    "vnc",
    "rdp",
    "reboot",
    "poweroff",
    "shutdown",
    "halt",
    "eula",
    "logging",
    "mediacheck",
    "sshpw",
    "firstboot",
    "install",
    "autostep",
    "deviceprobe",
    "device",
    "snapshot",
)

SCRIPT_KINDS = {0: "%pre", 1: "%post", 2: "%traceback", 3: "%pre-install", 4: "%onerror"}


@dataclasses.dataclass(frozen=True)
class Script:
    kind: str  # %pre, %post, %onerror, ...
    body: str
    interpreter: str = "/bin/sh"
    chroot: bool = True
    error_on_fail: bool = False
    lineno: int = 0
    log: str | None = None  # --log: where its output goes (apply.keep_log)


@dataclasses.dataclass(frozen=True)
class Password:
    """rootpw / user --password: a hash (crypted), plain text (hashed in the tree), or locked."""

    value: str | None = None
    crypted: bool = False
    lock: bool = False

    def __repr__(self) -> str:  # never the password itself in a log or a traceback
        return f"Password(crypted={self.crypted}, lock={self.lock}, value={'***' if self.value else None})"


@dataclasses.dataclass(frozen=True)
class User:
    name: str
    password: Password
    groups: tuple[str, ...] = ()
    homedir: str | None = None
    shell: str | None = None
    uid: int | None = None
    gid: int | None = None
    gecos: str | None = None


@dataclasses.dataclass(frozen=True)
class Part:
    """One `part` line, as --make-disk reads it (composer.images.disk plans the table)."""

    mountpoint: str  # "/", "/boot", "/boot/efi", "swap", "biosboot", ...
    fstype: str  # "" when not given
    size_mib: int | None
    grow: bool = False
    label: str = ""
    lineno: int = 0
    unsupported: tuple[str, ...] = ()  # options given that --make-disk does not honour


@dataclasses.dataclass(frozen=True)
class Disk:
    """The disk layout commands: `part` lines, `reqpart`, `clearpart --disklabel`."""

    parts: tuple[Part, ...] = ()
    reqpart: bool = False
    reqpart_boot: bool = False  # reqpart --add-boot
    disklabel: str = ""  # clearpart --disklabel


@dataclasses.dataclass(frozen=True)
class System:
    lang: str | None = None
    keymap: str | None = None
    timezone: str | None = None
    utc: bool | None = None
    rootpw: Password | None = None
    users: tuple[User, ...] = ()
    groups: tuple[tuple[str, int | None], ...] = ()
    sshkeys: tuple[tuple[str, str], ...] = ()  # (user, key)
    enabled: tuple[str, ...] = ()
    disabled: tuple[str, ...] = ()
    selinux: str | None = None  # enforcing / permissive / disabled
    firewall: tuple[str, ...] | None = None  # firewall-offline-cmd arguments
    hostname: str | None = None
    root_fstype: str | None = None  # part / --fstype
    disk: Disk = Disk()
    scripts: tuple[Script, ...] = ()
    ignored: tuple[str, ...] = ()


def _seen(cmd: Any) -> bool:
    return bool(getattr(cmd, "seen", False))


def _keymap(kb: Any) -> str | None:
    if not _seen(kb):
        return None
    layouts = list(getattr(kb, "x_layouts", []) or [])
    return kb.vc_keymap or getattr(kb, "keyboard", None) or (layouts[0] if layouts else None)


def _rootpw(rp: Any) -> Password | None:
    if not _seen(rp):
        return None
    return Password(value=rp.password or None, crypted=bool(rp.isCrypted), lock=bool(rp.lock))


def _users(handler: Any) -> tuple[User, ...]:
    return tuple(
        User(
            name=u.name,
            password=Password(value=u.password or None, crypted=bool(u.isCrypted), lock=bool(u.lock)),
            groups=tuple(u.groups or ()),
            homedir=u.homedir or None,
            shell=u.shell or None,
            uid=u.uid,
            gid=u.gid,
            gecos=u.gecos or None,
        )
        for u in handler.user.userList
    )


def _firewall(fw: Any) -> tuple[str, ...] | None:
    if not _seen(fw):
        return None
    if not fw.enabled:
        return ("--disabled",)
    args = ["--enabled"]
    args += [f"--service={s}" for s in (*fw.services, *fw.trusts)]
    args += [f"--port={p}" for p in fw.ports]
    args += [f"--remove-service={s}" for s in fw.remove_services]
    return tuple(args)


def _hostname(handler: Any) -> str | None:
    names = [nd.hostname for nd in handler.network.network if getattr(nd, "hostname", None)]
    return names[-1] if names else None


def _root_fstype(handler: Any) -> str | None:
    for p in handler.partition.partitions:
        if p.mountpoint == "/":
            return p.fstype or None
    return None


# part options --make-disk does not act on: (attribute, option, its "not given" value).
_PART_UNSUPPORTED = (
    ("disk", "--ondisk", ""),
    ("onPart", "--onpart", ""),
    ("onbiosdisk", "--onbiosdisk", ""),
    ("encrypted", "--encrypted", False),
    ("maxSizeMB", "--maxsize", 0),
    ("recommended", "--recommended", False),
    ("resize", "--resize", False),
    ("fsopts", "--fsoptions", ""),
    ("mkfsopts", "--mkfsoptions", ""),
    ("fsprofile", "--fsprofile", ""),
)


def _disk(handler: Any) -> Disk:
    parts = tuple(
        Part(
            mountpoint=p.mountpoint,
            fstype=p.fstype or "",
            size_mib=p.size,
            grow=bool(p.grow),
            label=p.label or "",
            lineno=p.lineno or 0,
            unsupported=tuple(opt for attr, opt, unset in _PART_UNSUPPORTED if getattr(p, attr, unset) not in (unset, None)),
        )
        for p in handler.partition.partitions
    )
    rp, cp = handler.reqpart, handler.clearpart
    return Disk(
        parts=parts,
        reqpart=_seen(rp),
        reqpart_boot=_seen(rp) and bool(getattr(rp, "addBoot", False)),
        disklabel=(getattr(cp, "disklabel", "") or "") if _seen(cp) else "",
    )


def _scripts(handler: Any) -> tuple[Script, ...]:
    return tuple(
        Script(
            kind=SCRIPT_KINDS.get(s.type, "%script"),
            body=s.script,
            interpreter=s.interp or "/bin/sh",
            chroot=bool(s.inChroot),
            error_on_fail=bool(s.errorOnFail),
            lineno=s.lineno or 0,
            log=s.logfile or None,
        )
        for s in handler.scripts
    )


def _check_commands(handler: Any, where: Any) -> list[str]:
    """The ignored commands (for the one report line); a refused one raises."""
    ignored: list[str] = []
    for name, cmd in sorted(handler.commands.items()):
        if not _seen(cmd) or name in HONOURED:
            continue
        if name in IGNORED:
            # One object stands under all its aliases (reboot, poweroff...): the one written.
            written = getattr(cmd, "currentCmd", "") or name
            if written not in ignored:
                ignored.append(written)
            continue
        raise ComposerError(
            f"kickstart {where(cmd, name)}: {name}: not supported by composer livemedia (no installer here); remove it"
        )
    return ignored


def read_system(handler: Any, where: Any, path: Path) -> System:
    """The system settings of a parsed kickstart; `where(cmd, name)` gives a command's FILE:LINE."""
    ignored = _check_commands(handler, where)
    for s in handler.scripts:
        if s.type == 3:  # %pre-install: between the layout and the packages, no place here
            raise ComposerError(f"kickstart {path}:{s.lineno}: %pre-install: not supported by composer livemedia")
    services = handler.services
    tz = handler.timezone
    if _seen(tz) and tz.timezone and (tz.timezone.startswith("/") or ".." in tz.timezone.split("/")):
        # It names a file below /usr/share/zoneinfo, never one elsewhere.
        raise ComposerError(f"kickstart {where(tz, 'timezone')}: timezone {tz.timezone!r}: not a time zone name")
    return System(
        lang=handler.lang.lang or None if _seen(handler.lang) else None,
        keymap=_keymap(handler.keyboard),
        timezone=tz.timezone or None if _seen(tz) else None,
        utc=bool(tz.isUtc) if _seen(tz) else None,
        rootpw=_rootpw(handler.rootpw),
        users=_users(handler),
        groups=tuple((g.name, g.gid) for g in handler.group.groupList),
        sshkeys=tuple((k.username, k.key) for k in handler.sshkey.sshUserList),
        enabled=tuple(services.enabled) if _seen(services) else (),
        disabled=tuple(services.disabled) if _seen(services) else (),
        selinux=_selinux(handler.selinux),
        firewall=_firewall(handler.firewall),
        hostname=_hostname(handler),
        root_fstype=_root_fstype(handler),
        disk=_disk(handler),
        scripts=_scripts(handler),
        ignored=tuple(ignored),
    )


def _selinux(se: Any) -> str | None:
    if not _seen(se) or se.selinux is None:
        return None
    return {0: "disabled", 1: "enforcing", 2: "permissive"}.get(se.selinux)
