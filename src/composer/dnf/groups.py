"""comps groups and environments in a package request, spelled as dnf and anaconda spell them.

A package request is a list of specs: a name or glob is a package, `@ID` a group, `@^ID`
an environment (the kickstart's spelling; dnf's command lines take `@ID` for either), and
`@ID/TYPE,...` a group with its own package types (anaconda's spelling of a kickstart's
`--nodefaults`/`--optional`). dnf expands groups from the repositories' comps itself; its
command line has no per-group types, so a session installs such groups with
`group_package_types` set (DnfSession.run_transaction). Comps is what the repositories
offer, read from dnf's group listing, to name a missing group before dnf fails with a
message about modules.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re

# The package types dnf installs of a group unless told otherwise (dnf.conf group_package_types).
DEFAULT_TYPES = ("mandatory", "default", "conditional")
TYPES = ("mandatory", "default", "optional", "conditional")


def is_group(spec: str) -> bool:
    return spec.startswith("@")


@dataclasses.dataclass(frozen=True)
class GroupSpec:
    id: str  # a group's or environment's id or name, as the request gives it (dnf matches either)
    environment: bool = False
    types: tuple[str, ...] | None = None  # None: dnf's group_package_types

    @classmethod
    def parse(cls, spec: str) -> GroupSpec:
        """`@ID`, `@^ID` or `@ID/TYPE,...`; a type dnf does not know is an error (ValueError)."""
        body = spec.removeprefix("@")
        environment = body.startswith("^")
        body = body.removeprefix("^")
        name, slash, types = body.partition("/")
        if not name or (slash and environment):
            raise ValueError(f"{spec!r}: not a group (@ID, @ID/TYPES) or an environment (@^ID)")
        if not slash:
            return cls(name, environment)
        wanted = tuple(t for t in types.split(",") if t)
        unknown = [t for t in wanted if t not in TYPES]
        if unknown or not wanted:
            raise ValueError(f"{spec!r}: package types are {', '.join(TYPES)}")
        return cls(name, types=wanted)

    @property
    def dnf_spec(self) -> str:
        """The spec dnf's install command takes: `@ID` for an environment too (neither dnf 4's
        nor dnf5's command line knows `@^`; `@ID` matches groups and environments), the types
        go in group_package_types."""
        return f"@{self.id}"

    def __str__(self) -> str:
        return ("@^" if self.environment else "@") + self.id + (f"/{','.join(self.types)}" if self.types else "")


def group_spec(name: str, *, environment: bool = False, types: tuple[str, ...] | None = None) -> str:
    """The request's spec of a group (types: None for dnf's default) or an environment."""
    return str(GroupSpec(name, environment, None if types == DEFAULT_TYPES else types))


@dataclasses.dataclass(frozen=True)
class Comps:
    """The groups and environments the repositories offer: id -> name."""

    groups: dict[str, str] = dataclasses.field(default_factory=dict)
    environments: dict[str, str] = dataclasses.field(default_factory=dict)

    def ids_of(self, spec: GroupSpec) -> set[str]:
        """The ids dnf would find for `spec`: by id or name, any case, globs allowed (as dnf's
        comps patterns). A plain `@ID` may also name an environment."""
        pools = [self.environments] if spec.environment else [self.groups, self.environments]
        pattern = spec.id.casefold()
        return {
            gid
            for pool in pools
            for gid, name in pool.items()
            if fnmatch.fnmatchcase(gid.casefold(), pattern) or fnmatch.fnmatchcase(name.casefold(), pattern)
        }

    def has(self, spec: GroupSpec) -> bool:
        return bool(self.ids_of(spec))


# dnf 4's `group list --ids`: "   Name (id)", a language group followed by " [lang]".
_DNF4_ITEM = re.compile(r"^\s+(?P<name>.*?) \((?P<id>[^()\s]+)\)(?: \[[^\]]*\])?$")


def read_dnf4_listing(text: str) -> Comps:
    """dnf 4's `group list --ids --hidden`: sections "... Environment Groups:" and "... Groups:"."""
    found = Comps()
    pool = found.groups
    for line in text.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            pool = found.environments if "Environment" in line else found.groups
            continue
        m = _DNF4_ITEM.match(line)
        if m:
            pool[m["id"]] = m["name"]
    return found


def read_dnf5_table(text: str) -> dict[str, str]:
    """dnf5's `group list` / `environment list`: a table "ID  Name  Installed", one row each
    ending in yes or no (the header and the summary line do not)."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[-1] in ("yes", "no"):
            found[words[0]] = " ".join(words[1:-1])
    return found


def read_dnf4_environment(text: str, comps: Comps) -> list[str]:
    """dnf 4's `group info ENV`: the groups under " Mandatory Groups:" (those an install of
    the environment installs), listed by name: their ids from comps."""
    ids = {name.casefold(): gid for gid, name in comps.groups.items()}
    found: list[str] = []
    inside = False
    for line in text.splitlines():
        if line.startswith(" ") and not line.startswith("  "):  # " Section:" headings
            inside = line.strip() == "Mandatory Groups:"
        elif inside and line.strip():
            found.append(ids.get(line.strip().casefold(), line.strip()))
    return found


def read_dnf5_environment(text: str) -> list[str]:
    """dnf5's `environment info ENV`: the ids of "Required groups" (one a line, the key
    left blank after the first)."""
    found: list[str] = []
    key = ""
    for line in text.splitlines():
        name, colon, value = line.partition(":")
        if not colon:
            continue
        key = name.strip() or key
        if key == "Required groups" and value.strip():
            found.append(value.strip())
    return found
