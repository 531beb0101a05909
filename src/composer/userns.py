"""Builds as an ordinary user: composer re-executes itself in a user namespace.

rpm gives files their owners, dracut and the image tools record them, bubblewrap
sandboxes the scriptlets: all of it wants root with a whole range of ids. An ordinary
user gets that the way rootless containers do: a user namespace in which the user is
root (0) and the user's subordinate ids from /etc/subuid and /etc/subgid are 1..N.
util-linux `unshare` makes the namespace, the setuid `newuidmap`/`newgidmap` (package
uidmap) write the maps. composer does it once, before any work, by exec'ing itself
under `unshare` (same PID, so signals and the exit status need no relaying). Files the
user writes in the namespace belong to the user outside; files owned by subordinate
ids (the tree in the work directory) are removed from inside, where composer cleans up.
As root nothing changes.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from composer.run import ComposerError

# Set in the environment of the re-executed composer: it is inside the namespace, root
# there but an ordinary user outside (per-user defaults), and must not re-execute again.
MARKER = "COMPOSER_USERNS"

# rpm packages own files as ids up to 65534 (nobody): the rootless-container convention.
MIN_IDS = 65536
# Where useradd starts allocating subordinate ids (login.defs SUB_UID_MIN).
FIRST_SUBID = 100000

SUBUID, SUBGID = Path("/etc/subuid"), Path("/etc/subgid")

# Commands that install packages, run dracut or write files with their owners; the
# others (verify, template-check, delta, sparsify, overlay status, mkksiso) only read,
# boot or transform whole files, and run as the user, with no subordinate ids needed.
NAMESPACE_COMMANDS = frozenset({("runtime",), ("boot-iso",), ("netboot",), ("lorax",), ("livemedia",), ("overlay", "merge")})
_HELP = frozenset({"-h", "--help", "--version"})


@dataclasses.dataclass(frozen=True)
class SubidRange:
    start: int
    count: int

    @property
    def end(self) -> int:
        """The last id of the range."""
        return self.start + self.count - 1


def parse_subid(text: str, user: str, uid: int) -> list[SubidRange]:
    """The ranges of `user` (named, or by number, as shadow allows) in an /etc/subuid
    or /etc/subgid text, in file order; lines that are not NAME:START:COUNT are skipped,
    as newuidmap skips them."""
    out = []
    for line in text.splitlines():
        fields = line.strip().split(":")
        if len(fields) != 3 or not all(f.isascii() and f.isdigit() for f in fields[1:]):
            continue
        owner, start, count = fields[0], int(fields[1]), int(fields[2])
        if (owner == user or owner == str(uid)) and count > 0:
            out.append(SubidRange(start, count))
    return out


def usable_range(ranges: Sequence[SubidRange]) -> SubidRange | None:
    """The first range with room for every id a package may use."""
    return next((r for r in ranges if r.count >= MIN_IDS), None)


def free_start(*texts: str) -> int:
    """A start that no range in the files overlaps (after all of them), for the line we suggest."""
    end = FIRST_SUBID
    for text in texts:
        for line in text.splitlines():
            fields = line.strip().split(":")
            if len(fields) == 3 and all(f.isascii() and f.isdigit() for f in fields[1:]):
                end = max(end, int(fields[1]) + int(fields[2]))
    return end


def unshare_argv(uids: SubidRange, gids: SubidRange) -> list[str]:
    """`unshare` options: the user is 0, its subordinate ids are 1..count (newuidmap writes the maps)."""
    return [
        "unshare",
        "--user",
        "--map-root-user",
        f"--map-users={uids.start},1,{uids.count}",
        f"--map-groups={gids.start},1,{gids.count}",
    ]


def missing_range_error(user: str, uids: list[SubidRange], gids: list[SubidRange], start: int) -> str | None:
    """The one line telling what to add to /etc/subuid and /etc/subgid, or None when both have a usable range."""
    lacking = [str(path) for path, ranges in ((SUBUID, uids), (SUBGID, gids)) if usable_range(ranges) is None]
    if not lacking:
        return None
    have = "" if not (uids or gids) else f" (ranges of fewer than {MIN_IDS} ids do not count)"
    line = f"{user}:{start}:{MIN_IDS}"
    return (
        f"{user} has no range of {MIN_IDS} subordinate ids in {' and '.join(lacking)}{have}, which composer needs "
        f"to build as an ordinary user: as root, add the line {line} to {' and '.join(lacking)} "
        f"(usermod --add-subuids {start}-{start + MIN_IDS - 1} --add-subgids {start}-{start + MIN_IDS - 1} {user} "
        "does both), or run composer as root"
    )


def disabled_error(read: dict[str, str]) -> str | None:
    """The one line naming the sysctl that forbids unprivileged user namespaces, or None.

    `read`: /proc/sys file -> its contents, for the files that exist."""

    def value(path: str) -> str | None:
        v = read.get(path)
        return v.strip() if v is not None else None

    fixes = []
    if value("/proc/sys/kernel/unprivileged_userns_clone") == "0":  # Debian and Ubuntu kernels
        fixes.append("kernel.unprivileged_userns_clone=1")
    if value("/proc/sys/user/max_user_namespaces") == "0":
        fixes.append("user.max_user_namespaces=15000")
    if value("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":  # Ubuntu 23.10+
        fixes.append("kernel.apparmor_restrict_unprivileged_userns=0")
    if not fixes:
        return None
    return (
        f"user namespaces are disabled for ordinary users on this host, and composer needs one to build as an "
        f"ordinary user: as root, add {' and '.join(fixes)} to /etc/sysctl.d/90-composer.conf and run "
        "sysctl --system, or run composer as root"
    )


_SYSCTLS = (
    "/proc/sys/kernel/unprivileged_userns_clone",
    "/proc/sys/user/max_user_namespaces",
    "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
)


def _read_sysctls() -> dict[str, str]:
    out = {}
    for path in _SYSCTLS:
        try:
            out[path] = Path(path).read_text()
        except OSError:
            pass
    return out


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
    except OSError as e:
        raise ComposerError(f"{path}: {e.strerror} (composer reads it to build as an ordinary user)") from None


def needs_namespace(words: Sequence[str], argv: Sequence[str]) -> bool:
    """Whether the command `words` (e.g. ("overlay", "merge")) runs in the namespace;
    asking for help or the version never needs it."""
    if _HELP.intersection(argv) and words[:1] in (("lorax",), ("livemedia",)):
        return False  # lorax's own options are parsed in the namespace: help must not need it
    return tuple(words[:1]) in NAMESPACE_COMMANDS or tuple(words[:2]) in NAMESPACE_COMMANDS


def command_words(args: argparse.Namespace) -> tuple[str, ...]:
    """The subcommand and its action from composer's parsed command line: ("overlay", "merge")."""
    action = getattr(args, f"{args.command}_command", None)
    return (args.command, action) if action else (args.command,)


def inside() -> bool:
    """True in the namespace composer made for itself (root there, an ordinary user outside)."""
    return os.environ.get(MARKER) == "1"


def default_cachedir() -> Path:
    """/var/cache/composer for root; the user's own cache directory for an ordinary user."""
    if os.geteuid() == 0 and not inside():
        return Path("/var/cache/composer")
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"  # XDG: a relative value is ignored
    return base / "composer"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)  # a uid with no passwd entry (containers): /etc/subuid may name it by number


def _probe(argv: list[str]) -> str | None:
    """Run `true` in the namespace: a failure becomes one line here, not unshare's words after exec."""
    try:
        proc = subprocess.run([*argv, "--", "true"], capture_output=True, text=True, timeout=60)
    except OSError as e:
        return f"cannot run {argv[0]}: {e.strerror}"
    if proc.returncode == 0:
        return None
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    if any("unrecognized option" in line for line in lines):
        return (
            "this unshare has no --map-users option: composer needs util-linux 2.38 or later to build as an "
            "ordinary user, or run it as root"
        )
    return f"cannot enter a user namespace with the subordinate ids: {lines[-1] if lines else f'exit {proc.returncode}'}"


def enter_user_namespace(words: Sequence[str], argv: Sequence[str]) -> None:
    """As an ordinary user, for a command that needs it: replace this process with
    composer itself (same Python, same argv and environment) in a user namespace where
    the user is root and the subordinate ids are 1..N. Returns only when nothing is to
    be done (root, or a command that needs no namespace); raises ComposerError with one
    line saying what to add when the host does not allow it."""
    if os.geteuid() == 0 or not needs_namespace(words, argv):
        return
    if inside():
        raise ComposerError(f"still not root (uid {os.geteuid()}) in the user namespace composer entered")
    error = disabled_error(_read_sysctls())
    if error:
        raise ComposerError(error)
    uid = os.getuid()
    user = _user_name(uid)
    subuid, subgid = _read(SUBUID), _read(SUBGID)
    uids, gids = parse_subid(subuid, user, uid), parse_subid(subgid, user, uid)
    error = missing_range_error(user, uids, gids, free_start(subuid, subgid))
    if error:
        raise ComposerError(error)
    missing = [p for p in ("unshare", "newuidmap", "newgidmap") if shutil.which(p) is None]
    if missing:
        raise ComposerError(
            f"{' and '.join(missing)} not found, needed to build as an ordinary user: install "
            "util-linux and uidmap (Debian, Ubuntu) or shadow-utils (Fedora), or run composer as root"
        )
    uid_range, gid_range = usable_range(uids), usable_range(gids)
    assert uid_range is not None and gid_range is not None
    argv_unshare = unshare_argv(uid_range, gid_range)
    error = _probe(argv_unshare)
    if error:
        raise ComposerError(error)
    os.environ[MARKER] = "1"
    # Inside, the user is root: a HOME from the passwd entry would be /root's.
    os.environ.setdefault("HOME", str(Path.home()))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(argv_unshare[0], [*argv_unshare, "--", sys.executable, "-m", "composer", *argv])
