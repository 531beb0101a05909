"""%packages as one package request, the specs anaconda asks dnf for in an image install.

To install, in anaconda's order: the environment (`@^ID`), `@core` unless `--nocore`, each
group (`@ID`; `--nodefaults` and `--optional` as the group's package types, `@ID/TYPES`),
then the packages (names and globs). To exclude: each `-name`, each `-@ID`, and `@core` with
`--nocore` (so an environment does not bring it either). The dnf session carries out the
excludes of groups (DnfSession._groups_to_install); no product knowledge here: which groups
exist is the repositories' comps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from composer.dnf import group_spec
from composer.run import ComposerError

# The package types anaconda installs of a group with --nodefaults and with --optional.
NODEFAULTS_TYPES = ("mandatory", "conditional")
OPTIONAL_TYPES = ("mandatory", "default", "conditional", "optional")
CORE = "core"


@dataclasses.dataclass(frozen=True)
class PackageRequest:
    install: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    lines: tuple[tuple[str, str], ...] = ()  # each group spec of `install` and its FILE:LINE
    core_added: bool = False  # @core is asked for because %packages has no --nocore


def package_request(pkgs: Any, where: Callable[[str], str | None], section: str) -> PackageRequest:
    """The request of pykickstart's %packages. where(token): FILE:LINE of the line starting
    with token (`@ID`, `@^ID`), if one does; section: FILE:LINE of %packages."""
    from pykickstart.constants import GROUP_ALL, GROUP_REQUIRED  # deferred: pykickstart is slow to import

    types = {GROUP_REQUIRED: NODEFAULTS_TYPES, GROUP_ALL: OPTIONAL_TYPES}
    for g in [*pkgs.groupList, *pkgs.excludedGroupList]:
        if "/" in g.name or g.name.startswith("^"):  # a spec's separator, not a comps id's character
            raise ComposerError(f"kickstart {where('@' + g.name) or section}: %packages @{g.name}: not a group id or name")
    excluded = {g.name for g in pkgs.excludedGroupList} | ({CORE} if pkgs.nocore else set())
    groups: list[tuple[str, str]] = []  # (spec, FILE:LINE)
    if getattr(pkgs, "environment", None):
        token = group_spec(pkgs.environment, environment=True)
        groups.append((token, where(token) or section))
    listed = {g.name: g for g in pkgs.groupList}
    if not pkgs.nocore and CORE not in listed:
        groups.append((group_spec(CORE), section))
    # @core first, as anaconda asks; an excluded group is not asked for at all (pykickstart
    # drops only those excluded in the same section).
    for g in sorted(listed.values(), key=lambda g: g.name != CORE):
        if g.name not in excluded:
            groups.append((group_spec(g.name, types=types.get(g.include)), where(f"@{g.name}") or section))
    exclude = [*pkgs.excludedList, *(group_spec(name) for name in sorted(excluded))]
    lines = tuple(dict(groups).items())
    install = tuple(s for s, _ in lines) + tuple(pkgs.packageList)
    return PackageRequest(install, tuple(exclude), lines, core_added=not pkgs.nocore and CORE not in listed)


def missing_group_message(request: PackageRequest, spec: str) -> str:
    """The one line for a group or environment of the request no repository's comps has."""
    where = dict(request.lines).get(spec, "")
    token = spec.partition("/")[0]
    name = token.removeprefix("@").removeprefix("^")
    if request.core_added and token == group_spec(CORE):
        return (
            f"kickstart {where}: %packages: @core (added without --nocore): no group 'core' in the "
            "repositories' comps; add --nocore, or a comps file with a core group to a repository"
        )
    kind = "environment" if token.startswith("@^") else "group"
    return f"kickstart {where}: %packages {token}: no {kind} {name!r} in the repositories' comps (--ignoremissing skips it)"
