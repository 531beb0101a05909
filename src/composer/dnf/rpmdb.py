"""Reading a tree's rpm database: what is installed, and what each path must be.

The queries go through the rpm beside dnf (the database it wrote is the one it reads
best); Rpmdb is given how to run it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path

# Where rpm keeps its database inside the tree. Debian's rpm defaults to ~/.rpmdb,
# so every rpm/dnf call gets a private HOME whose .rpmmacros says this.
RPMDB = "/usr/lib/sysimage/rpm"
# _netsharedpath: rpm leaves /proc alone. During a transaction it is a procfs mount (for
# scriptlets) that only the host's real root may chown, which rpm would try and fail in
# composer's user namespace (composer.userns); put_back gives the directory its packaged
# owner and mode afterwards, as root and as an ordinary user alike.
RPMMACROS = f"%_dbpath {RPMDB}\n%_netsharedpath /proc\n"


def install_macros(install_langs: str | None) -> str:
    """The rpm macros of a build beyond RPMMACROS that change what lands in the tree:
    %_install_langs as anaconda sets it from %packages --instLangs (colon-separated
    languages; an empty list installs no translations)."""
    if install_langs is None:
        return ""
    return f"%_install_langs {install_langs or '%{nil}'}\n"


@dataclasses.dataclass(frozen=True)
class RpmFile:
    """What the rpm database says one path of the tree must be."""

    path: str
    kind: str  # d f l c b p s (as treecheck.Node.kind)
    perm: int  # permission bits, setuid/setgid/sticky included
    user: str
    group: str
    target: str  # symlink target
    package: str


_KINDS = {0o040000: "d", 0o100000: "f", 0o120000: "l", 0o020000: "c", 0o060000: "b", 0o010000: "p", 0o140000: "s"}
# rpm's file flags and states that mean "need not be on disk as listed".
_RPMFILE_GHOST = 1 << 6
_RPMFILE_STATE_NORMAL = 0
# Packaged but left alone by rpm (RPMMACROS' _netsharedpath: /proc): it is still the package's.
_RPMFILE_STATE_NETSHARED = 3
_RPMFILE_STATES_KEPT = (str(_RPMFILE_STATE_NORMAL), str(_RPMFILE_STATE_NETSHARED))
_PACKAGED_FORMAT = (
    "[%{FILENAMES}\\t%{FILEMODES}\\t%{FILEUSERNAME}\\t%{FILEGROUPNAME}\\t%{FILEFLAGS}"
    "\\t%{FILESTATES}\\t%{FILELINKTOS}\\t%{=NAME}\\n]"
)


class Rpmdb:
    """The rpm database of a tree, read with `rpm` (rpm's arguments -> its output)."""

    def __init__(self, rpm: Callable[..., str]) -> None:
        self.rpm = rpm

    def installed(self) -> list[str]:
        return sorted(set(self.rpm("-qa", "--queryformat=%{NAME}\n").split()))

    def files_of(self, name: str) -> list[str]:
        out = self.rpm("-ql", name)
        return [line for line in out.splitlines() if line.startswith("/")]

    def files_by_package(self) -> dict[str, list[str]]:
        """files_of for every installed package, in one query (a package without files has no entry)."""
        files: dict[str, list[str]] = {}
        for line in self.rpm("-qa", "--queryformat=[%{=NAME}\t%{FILENAMES}\n]").splitlines():
            name, _, path = line.partition("\t")
            if path.startswith("/"):
                files.setdefault(name, []).append(path)
        return files

    def packaged_files(self) -> dict[str, list[RpmFile]]:
        """Every path the rpm database says is installed, with its mode, owner and type.

        %ghost files and files rpm did not install (nodocs, other languages) are left out:
        they need not exist. A directory shared by several packages has several entries.
        """
        files: dict[str, list[RpmFile]] = {}
        for line in self.rpm("-qa", f"--queryformat={_PACKAGED_FORMAT}").splitlines():
            fields = line.split("\t")
            if len(fields) != 8 or not fields[0].startswith("/"):
                continue
            path, mode, user, group, flags, state, target, name = fields
            if not flags.isdigit() or int(flags) & _RPMFILE_GHOST or state not in _RPMFILE_STATES_KEPT:
                continue
            m = int(mode)
            files.setdefault(path, []).append(RpmFile(path, _KINDS.get(m & 0o170000, "?"), m & 0o7777, user, group, target, name))
        return files

    def nevras(self) -> list[str]:
        """name-epoch:version-release.arch of everything installed, for the manifest."""
        out = self.rpm("-qa", "--queryformat=%{NAME}-%{EPOCHNUM}:%{VERSION}-%{RELEASE}.%{ARCH}\n")
        return sorted(out.split())


def tree_ids(tree: Path) -> tuple[dict[str, int], dict[str, int]]:
    """User and group names of the tree's /etc/passwd and /etc/group (rpm resolves names there)."""

    def read(name: str) -> dict[str, int]:
        ids: dict[str, int] = {}
        with contextlib.suppress(OSError):
            for line in (tree / "etc" / name).read_text(errors="replace").splitlines():
                fields = line.split(":")
                if len(fields) > 2 and fields[2].isdigit():
                    ids.setdefault(fields[0], int(fields[2]))
        return ids

    return read("passwd"), read("group")


def put_back(tree: Path, made: Sequence[str], owned: dict[str, list[RpmFile]]) -> None:
    """Directories of the tree a run made that were not there (`made`, relative): each
    gets rpm's mode and owner if a package owns it (rpm's chmod of a mount point went to
    the mount on top), else is removed again (it is empty: the mounts kept everything off it)."""
    users, groups = tree_ids(tree)
    for rel in sorted(made, key=lambda p: p.count("/"), reverse=True):
        path = tree / rel
        spec = owned.get(f"/{rel}", [None])[0]
        if spec is not None and spec.kind == "d" and path.is_dir() and not path.is_symlink():
            os.chown(path, users.get(spec.user, 0), groups.get(spec.group, 0))
            os.chmod(path, spec.perm)
        elif spec is None:
            with contextlib.suppress(OSError):
                path.rmdir()
