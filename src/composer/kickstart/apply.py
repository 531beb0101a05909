"""Stage `kickstart`: the system part of a kickstart applied to an installed tree, as
anaconda configures an image install, then its %post scripts.

Everything runs with the tree as its root through run.in_tree_argv (bubblewrap: /proc,
/sys and /dev live in a namespace that dies with the command, so no mount outlives it),
the tree's own tools doing the work (useradd, chpasswd, passwd), the way lorax's
templates run `runcmd`. Files are written by a shell in the tree, never by composer
through a path of the tree (a link in the tree must not lead to the host). `services`
uses the host's `systemctl --root` (offline: links only), as the template runner does.
Passwords and keys go to the tree's tools on stdin, never on a command line or in a log.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from pathlib import Path

from composer.kickstart.system import Password, Script, System, User
from composer.run import ComposerError, in_tree_argv, info, run, systemctl_each

SYSROOT = "/mnt/sysroot"  # where anaconda's %post --nochroot finds the installed system
SCRIPT_IN_SANDBOX = "/tmp/ks-script"


def _in_tree(tree: Path, argv: Sequence[str], *, input: bytes | None = None) -> None:
    run(in_tree_argv(tree, list(argv)), input=input)


def write_in_tree(tree: Path, path: str, text: str, mode: str = "644") -> None:
    """Write `path` (absolute, in the tree) from inside the tree."""
    script = 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"'
    _in_tree(tree, ["/bin/sh", "-c", script, "sh", path, mode], input=text.encode())


def append_in_tree(tree: Path, path: str, data: bytes) -> None:
    """Append to `path` (absolute, in the tree) from inside the tree."""
    _in_tree(tree, ["/bin/sh", "-c", 'mkdir -p "$(dirname "$1")" && cat >> "$1"', "sh", path], input=data)


def _exists_in_tree(tree: Path, path: str) -> bool:
    """Whether `path` is in the tree (asked inside it: links resolve in the tree)."""
    proc = run(in_tree_argv(tree, ["/bin/sh", "-c", 'test -e "$1"', "sh", path]), check=False, quiet=True)
    return proc.returncode == 0


def apply_locale(tree: Path, system: System) -> None:
    """lang, keyboard, timezone, network --hostname, selinux: the files anaconda writes."""
    if system.lang:
        write_in_tree(tree, "/etc/locale.conf", f"LANG={system.lang}\n")
    if system.keymap:
        write_in_tree(tree, "/etc/vconsole.conf", f"KEYMAP={system.keymap}\n")
    if system.timezone:
        zone = f"/usr/share/zoneinfo/{system.timezone}"
        if not _exists_in_tree(tree, zone):
            info(f"kickstart timezone {system.timezone}: no {zone} in the tree; /etc/localtime set anyway (as anaconda)")
        _in_tree(tree, ["ln", "-sfn", f"..{zone}", "/etc/localtime"])
        write_in_tree(tree, "/etc/timezone", f"{system.timezone}\n")
        write_in_tree(tree, "/etc/adjtime", f"0.0 0 0.0\n0\n{'UTC' if system.utc else 'LOCAL'}\n")
    if system.hostname:
        write_in_tree(tree, "/etc/hostname", f"{system.hostname}\n")
    if system.selinux:
        if _exists_in_tree(tree, "/etc/selinux/config"):
            _in_tree(tree, ["sed", "-i", f"s/^SELINUX=.*/SELINUX={system.selinux}/", "/etc/selinux/config"])
        else:
            info(f"kickstart selinux {system.selinux}: no /etc/selinux/config in the tree (no SELinux policy); ignored")


def apply_services(tree: Path, system: System) -> None:
    """services --enabled/--disabled with `systemctl --root`; a unit that cannot be
    enabled is reported and the build goes on, as anaconda does."""
    for verb, units in (("enable", system.enabled), ("disable", system.disabled)):
        systemctl_each(tree, verb, units, "anaconda")


def apply_firewall(tree: Path, system: System) -> None:
    if system.firewall is None:
        return
    for tool in ("/usr/bin/firewall-offline-cmd", "/usr/sbin/firewall-offline-cmd"):
        if _exists_in_tree(tree, tool):
            _in_tree(tree, [tool, *system.firewall])
            return
    info("kickstart firewall: no firewalld in the tree (firewall-offline-cmd); ignored, as anaconda does")


def _hash(password: Password) -> str | None:
    """The crypt(3) hash to store: a crypted one as given, plain text hashed (SHA-512) by
    `openssl passwd` reading it on stdin."""
    if password.value is None:
        return None
    if password.crypted:
        return password.value
    proc = run(["openssl", "passwd", "-6", "-stdin"], input=password.value.encode() + b"\n", capture=True, quiet=True)
    return proc.stdout.decode().strip()


def _set_password(tree: Path, name: str, password: Password) -> None:
    hashed = _hash(password)
    if hashed is not None:
        _in_tree(tree, ["chpasswd", "-e"], input=f"{name}:{hashed}\n".encode())
    if password.lock:
        _in_tree(tree, ["passwd", "-q", "-l", name])


def _group_exists(tree: Path, name: str) -> bool:
    proc = run(in_tree_argv(tree, ["getent", "group", name]), check=False, quiet=True, capture=True)
    return proc.returncode == 0


def _add_user(tree: Path, user: User) -> None:
    groups = []
    for g in user.groups:
        name, _, gid = g.partition("(")  # anaconda's --groups=name(gid)
        if not _group_exists(tree, name):
            _in_tree(tree, ["groupadd", *(["-g", gid.rstrip(")")] if gid else []), name])
        groups.append(name)
    argv = ["useradd", "-m"]
    for flag, value in (("-u", user.uid), ("-d", user.homedir), ("-s", user.shell), ("-c", user.gecos)):
        if value is not None:
            argv += [flag, str(value)]
    if user.gid is not None:
        if not _group_exists(tree, user.name):
            _in_tree(tree, ["groupadd", "-g", str(user.gid), user.name])
        argv += ["-g", str(user.gid)]
    if groups:
        argv += ["-G", ",".join(groups)]
    _in_tree(tree, [*argv, user.name])
    _set_password(tree, user.name, user.password)


def apply_accounts(tree: Path, system: System) -> None:
    """group, user, rootpw (no rootpw: root locked, as anaconda), sshkey."""
    for name, gid in system.groups:
        _in_tree(tree, ["groupadd", *(["-g", str(gid)] if gid is not None else []), name])
    for user in system.users:
        _add_user(tree, user)
    _set_password(tree, "root", system.rootpw or Password(lock=True))
    for user_name, key in system.sshkeys:
        script = (
            'home=$(getent passwd "$1" | cut -d: -f6) && [ -n "$home" ] || { echo "no user $1" >&2; exit 1; }; '
            'umask 077; mkdir -p "$home/.ssh" && cat >> "$home/.ssh/authorized_keys" && '
            'chown -R "$1": "$home/.ssh"'
        )
        _in_tree(tree, ["/bin/sh", "-c", script, "sh", user_name], input=f"{key}\n".encode())


def script_argv(script: Script, file: Path, tree: Path | None) -> list[str]:
    """How a script runs: in the tree (chroot), or over the host with the tree at
    /mnt/sysroot (--nochroot; tree None: %pre, before there is a tree). The host-side
    scripts share one /tmp of the build's own (file's directory/tmp), as anaconda's share
    the installer's: %pre leaves a file there that %post --nochroot copies into the system."""
    if script.chroot and tree is not None:
        return in_tree_argv(tree, [script.interpreter, SCRIPT_IN_SANDBOX], ro_binds=[(file, SCRIPT_IN_SANDBOX)])
    shared_tmp = file.parent / "tmp"
    shared_tmp.mkdir(mode=0o1777, exist_ok=True)
    argv = ["bwrap", "--dev-bind", "/", "/", "--bind", str(shared_tmp), "/tmp", "--ro-bind", str(file), SCRIPT_IN_SANDBOX]
    if tree is not None:
        argv += ["--tmpfs", "/mnt", "--bind", str(tree), SYSROOT, "--bind", str(tree), "/mnt/sysimage"]
        argv += ["--setenv", "ANA_INSTALL_PATH", SYSROOT]
    return [*argv, "--die-with-parent", "--", script.interpreter, SCRIPT_IN_SANDBOX]


def keep_log(script: Script, data: bytes, shared_tmp: Path, tree: Path | None, where: str) -> None:
    """anaconda's --log: the script's output appended to that file. A chroot script's path is
    the installed system's. A host-side script's (%pre, --nochroot) is the installer's: under
    /mnt/sysroot or /mnt/sysimage the installed system's, under /tmp the build's shared /tmp
    (where a %post --nochroot finds a %pre's log, as in anaconda); any other path is in the
    installer's own filesystem, which a build has none of: named, not kept."""
    if script.log is None:
        return
    log = posixpath.normpath(script.log)
    if script.chroot:
        if tree is not None:
            append_in_tree(tree, log, data)
        return
    for root in (SYSROOT, "/mnt/sysimage"):
        if tree is not None and log.startswith(root + "/"):
            append_in_tree(tree, log.removeprefix(root), data)
            return
    if log.startswith("/tmp/"):
        dest = shared_tmp / log.removeprefix("/tmp/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with dest.open("ab") as f:
            f.write(data)
        return
    info(f"{where}: --log={script.log}: a file of the installer's own filesystem, which a build has not; not kept")


def run_scripts(kind: str, system: System, work: Path, tree: Path | None) -> None:
    """Every `kind` script in the kickstart's order. A failing one with --erroronfail runs
    the %onerror scripts and stops the build; without it, it is reported and the build goes on."""
    work.mkdir(parents=True, exist_ok=True)
    for n, script in enumerate(s for s in system.scripts if s.kind == kind):
        file = work / f"{kind.lstrip('%')}-{n}"
        file.write_text(script.body)
        where = f"kickstart {kind} (line {script.lineno}{', --nochroot' if not script.chroot else ''})"
        info(f"{where}: running with {script.interpreter}")
        proc = run(script_argv(script, file, tree), check=False)
        if script.log:
            keep_log(script, proc.stdout + proc.stderr, file.parent / "tmp", tree, where)
        if proc.returncode == 0:
            continue
        output = (proc.stdout + proc.stderr).decode(errors="replace").strip().splitlines()
        last = f": {output[-1].strip()}" if output else ""
        if not script.error_on_fail:
            info(f"{where}: exit status {proc.returncode}, going on as anaconda does{last}")
            continue
        run_onerror(system, work, tree)
        raise ComposerError(f"{where}: failed with exit status {proc.returncode} (--erroronfail){last}")


def run_onerror(system: System, work: Path, tree: Path | None) -> None:
    """%onerror scripts (anaconda runs them in the installer, not the tree); their failure is reported only."""
    for n, script in enumerate(s for s in system.scripts if s.kind == "%onerror"):
        file = work / f"onerror-{n}"
        file.write_text(script.body)
        nochroot = Script(script.kind, script.body, script.interpreter, chroot=False)
        proc = run(script_argv(nochroot, file, tree), check=False)
        info(f"kickstart %onerror (line {script.lineno}): exit status {proc.returncode}")


def apply_system(tree: Path, system: System, work: Path) -> None:
    """The kickstart's configuration of the installed tree, in anaconda's order, then %post."""
    apply_locale(tree, system)
    apply_firewall(tree, system)
    apply_services(tree, system)
    apply_accounts(tree, system)
    if system.ignored:
        info(f"kickstart: ignored for an image install, as anaconda does: {', '.join(system.ignored)}")
    run_scripts("%post", system, work, tree)
