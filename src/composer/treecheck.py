"""The tree check: the tree is what its packages and templates made, nothing else.

After the install stage every path the rpm database lists must be on disk with rpm's
type, mode and owner (what `rpm -V` checks, file digests aside), and nothing may sit in
/dev, /proc or /sys (scriptlets run with them mounted; a file there was written by a
scriptlet into the bare tree). From then on every change to the tree must have been
asked for: each template command records the paths it touches, and commands that can
change anything (runcmd, systemctl, package transactions, composer's own depmod) are
observed as a before/after difference. A change nobody asked for stops the build,
naming the path: it is something of the build host leaking into the image.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from composer.run import ComposerError, debug


@dataclasses.dataclass(frozen=True)
class Node:
    """What a user would notice of one path: its type, mode, owner and link target."""

    kind: str  # d f l c b p s
    perm: int
    uid: int
    gid: int
    target: str = ""

    def describe(self) -> str:
        text = f"{self.kind} {self.perm:04o} {self.uid}:{self.gid}"
        return text + (f" -> {self.target}" if self.kind == "l" else "")


Snapshot = dict[str, Node]  # "/usr/bin/ls" -> Node

_KIND = {
    stat.S_IFDIR: "d",
    stat.S_IFREG: "f",
    stat.S_IFLNK: "l",
    stat.S_IFCHR: "c",
    stat.S_IFBLK: "b",
    stat.S_IFIFO: "p",
    stat.S_IFSOCK: "s",
}
API_DIRS = ("/dev", "/proc", "/sys")


def snapshot(tree: Path) -> Snapshot:
    """Every path below tree (symlinks not followed), as tree-absolute paths."""
    snap: Snapshot = {}
    stack = [(str(tree), "")]
    while stack:
        host, rel = stack.pop()
        try:
            entries = list(os.scandir(host))
        except FileNotFoundError:
            continue
        for e in entries:
            st = e.stat(follow_symlinks=False)
            kind = _KIND.get(stat.S_IFMT(st.st_mode), "?")
            path = f"{rel}/{e.name}"
            target = os.readlink(e.path) if kind == "l" else ""
            snap[path] = Node(kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, target)
            if kind == "d":
                stack.append((e.path, path))
    return snap


class PackagedFile(Protocol):
    # Read-only, so frozen dataclasses (dnf.RpmFile) qualify.
    @property
    def kind(self) -> str: ...
    @property
    def perm(self) -> int: ...
    @property
    def user(self) -> str: ...
    @property
    def group(self) -> str: ...
    @property
    def target(self) -> str: ...
    @property
    def package(self) -> str: ...


def _expected(spec: PackagedFile, users: Mapping[str, int], groups: Mapping[str, int]) -> Node:
    # rpm installs files of unknown users and groups as root.
    return Node(
        spec.kind,
        0o777 if spec.kind == "l" else spec.perm,
        users.get(spec.user, 0),
        groups.get(spec.group, 0),
        spec.target if spec.kind == "l" else "",
    )


def check_packaged(
    snap: Snapshot,
    packaged: Mapping[str, Sequence[PackagedFile]],
    users: Mapping[str, int],
    groups: Mapping[str, int],
    only: set[str] | None = None,
) -> list[str]:
    """Paths whose state differs from what their packages say (all, or those in `only`)."""
    problems = []
    for path, specs in sorted(packaged.items()):
        if only is not None and path not in only:
            continue
        node = snap.get(path)
        if node is None:
            problems.append(f"{path}: missing (package {specs[0].package} installed it)")
            continue
        if node.kind == "l":
            node = dataclasses.replace(node, perm=0o777)
        wanted = [_expected(s, users, groups) for s in specs]
        if node not in wanted:
            problems.append(f"{path}: is {node.describe()}, package {specs[0].package} says {wanted[0].describe()}")
    for path in sorted(snap):
        if only is not None and path not in only:
            continue
        if any(path.startswith(d + "/") for d in API_DIRS) and path not in packaged:
            problems.append(f"{path}: made by no package (written into the tree's {path.split('/')[1]} without it mounted?)")
    return problems


def differences(before: Snapshot, after: Snapshot) -> dict[str, str]:
    """path -> what changed, for every path added, removed or changed."""
    out = {}
    for path in before.keys() | after.keys():
        a, b = before.get(path), after.get(path)
        if a == b:
            continue
        if a is None:
            out[path] = f"appeared ({b.describe()})" if b else "appeared"
        elif b is None:
            out[path] = "disappeared"
        else:
            out[path] = f"changed from {a.describe()} to {b.describe()}"
    return out


class Ledger:
    """Who asked for which change: template commands (file:line) and composer's own steps."""

    def __init__(self, verify_packages: Callable[[set[str]], None] | None = None) -> None:
        self.paths: dict[str, str] = {}  # tree path (and everything below it) -> who
        self.exact: dict[str, str] = {}  # a path seen changing (nothing below it) -> who
        self.observed = 0
        # Called with the paths a package transaction changed (rpm's view of them is checked).
        self.verify_packages = verify_packages

    def record(self, who: str, paths: Sequence[str], *, exact: bool = False) -> None:
        for p in paths:
            p = "/" + p.strip("/") if p.strip("/") else "/"
            (self.exact if exact else self.paths).setdefault(p, who)

    def forget(self) -> None:
        """Start afresh (a new stage is compared with a new snapshot)."""
        self.paths.clear()
        self.exact.clear()

    def who(self, path: str) -> str | None:
        if path in self.exact:
            return self.exact[path]
        p = path
        while True:
            if p in self.paths:
                return self.paths[p]
            if p in ("", "/"):
                return None
            p = p.rsplit("/", 1)[0] or "/"

    def covers_below(self, path: str) -> bool:
        prefix = path.rstrip("/") + "/"
        return any(p.startswith(prefix) for p in (*self.paths, *self.exact))

    @contextlib.contextmanager
    def observe(self, tree: Path, who: str, *, packages: bool = False) -> Iterator[dict[str, str]]:
        """Record every change made inside the block as asked for by `who`; yields the changes.

        packages: the block is a package transaction; what it changed is checked against rpm.
        """
        before = snapshot(tree)
        changes: dict[str, str] = {}
        try:
            yield changes
        finally:
            changes.update(differences(before, snapshot(tree)))
            # Each changed path is listed: a directory made here does not cover later changes below it.
            self.record(who, sorted(changes), exact=True)
            self.observed += 1
        if packages and changes and self.verify_packages is not None:
            self.verify_packages(set(changes))


def check_changes(before: Snapshot, after: Snapshot, ledger: Ledger) -> list[str]:
    """Changes between two snapshots that no recorded command asked for.

    A directory that appeared above a recorded path was made for it (mkdir -p).
    """
    problems = []
    for path, what in sorted(differences(before, after).items()):
        if ledger.who(path) is not None:
            continue
        node = after.get(path)
        if before.get(path) is None and node is not None and node.kind == "d" and ledger.covers_below(path):
            continue
        problems.append(f"{path}: {what}, asked for by no template command")
    return problems


def fail_on(problems: Sequence[str], when: str) -> None:
    for problem in problems:
        debug(f"tree check {when}: {problem}")
    if problems:
        more = f" (and {len(problems) - 1} more; see the log)" if len(problems) > 1 else ""
        raise ComposerError(f"tree check {when}: {problems[0]}{more}")


class TreeCheck:
    """The tree check over one build: its ledger and the snapshots each check compares with.

    `packaged_files` reads the tree's rpm database (path -> what rpm says of it) and `ids`
    gives the tree's user and group ids by name; `protected` are paths the package manager
    keeps (its database) that any later step may change.
    """

    def __init__(
        self,
        tree: Path,
        packaged_files: Callable[[], Mapping[str, Sequence[PackagedFile]]],
        ids: Callable[[Path], tuple[Mapping[str, int], Mapping[str, int]]],
        protected: Sequence[str],
    ) -> None:
        self.tree = tree
        self._packaged_files = packaged_files
        self._ids = ids
        self._protected = protected
        self.packaged_paths = 0  # how many paths rpm's database listed at the last check
        self.installed: Snapshot = {}  # after the install stage
        self.final: Snapshot = {}  # after cleanup
        self.shipped: Snapshot = {}  # what goes into the runtime image (dracut must not change it)
        self.ledger = Ledger(lambda paths: fail_on(self.verify_packages(paths), "after a package transaction"))
        self.ledger.record("rpm (its database)", protected)

    def verify_packages(self, only: set[str] | None = None) -> list[str]:
        """The tree against the rpm database: every packaged path with rpm's type, mode and owner."""
        snap, packaged = snapshot(self.tree), self._packaged_files()
        self.packaged_paths = len(packaged)
        return check_packaged(snap, packaged, *self._ids(self.tree), only=only)

    def check_fresh(self) -> None:
        """Everything in the fresh tree came from a package transaction or a template command."""
        fail_on(check_changes({}, snapshot(self.tree), self.ledger), "after the install stage")

    def installed_now(self) -> None:
        """The install stage is over: later changes are compared with the tree as it is now,
        and what the install stage recorded must be asked for anew."""
        self.installed = snapshot(self.tree)
        self.ledger.forget()
        self.ledger.record("rpm (its database)", self._protected)

    def check_final(self) -> dict[str, int]:
        """Nothing but packages and template commands shaped the tree: no trace of the build
        host. Returns what the check verified (the manifest's tree_check)."""
        self.final = snapshot(self.tree)
        fail_on(check_changes(self.installed, self.final, self.ledger), "after cleanup")
        return {
            "packaged_paths_verified": self.packaged_paths,
            "paths_after_install": len(self.installed),
            "paths_shipped": len(self.final),
            "changed_by_templates": len(differences(self.installed, self.final)),
            "observed_commands": self.ledger.observed,
        }

    def ship(self) -> None:
        """The tree as it goes into the runtime image (after normalizing)."""
        self.shipped = snapshot(self.tree)

    def check_unchanged(self, when: str) -> None:
        """The tree is as shipped (a step that ran in it, e.g. dracut, left it as it found it)."""
        after = differences(self.shipped, snapshot(self.tree))
        fail_on([f"{p}: {what}" for p, what in sorted(after.items())], when)
