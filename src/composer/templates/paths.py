"""Path confinement: every path a template names is a place inside a root (no `..` or symlink out of it),
and globs expanded inside the tree."""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from composer.templates.errors import PathEscapeError

MAX_SYMLINK_HOPS = 40


def _components(path: str) -> list[str]:
    comps = [c for c in path.split("/") if c]
    if path.endswith("/") and comps:
        comps.append(".")  # "dir/" means: follow dir if it is a symlink
    return comps


def resolve_in_tree(tree: Path | str, path: str | os.PathLike[str], *, follow_last: bool = True) -> Path:
    """The host path of `path` taken inside `tree`, never outside it.

    `path` is relative to the tree root whether or not it starts with "/". Symlinks
    met on the way are resolved as if the tree were "/": an absolute target starts
    again at the tree root, a relative one from the link's directory. A ".." (in the
    path or in a link) that would climb above the tree root is refused, as are
    symlink loops. With follow_last=False a symlink in the last component is not
    followed (the link itself is meant: remove, symlink NAME, move SRC).
    Components that do not exist are taken literally.
    """
    root = Path(os.path.abspath(tree))
    text = os.fspath(path)
    pending = list(reversed(_components(text)))
    parts: list[str] = []
    hops = 0
    while pending:
        comp = pending.pop()
        if comp == ".":
            continue
        if comp == "..":
            if not parts:
                raise PathEscapeError(f"path leads out of the tree: {text}")
            parts.pop()
            continue
        here = root.joinpath(*parts, comp)
        if (pending or follow_last) and os.path.islink(here):
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                raise PathEscapeError(f"too many levels of symbolic links: {text}")
            target = os.readlink(here)
            if target.startswith("/"):
                parts = []
            pending.extend(reversed(_components(target)))
            continue
        parts.append(comp)
    return root.joinpath(*parts)


def check_lexical(path: str) -> None:
    """Refuse a path whose ".." climbs above the tree root by its text alone.

    Checked when a template is parsed (also in dry runs, with no tree): such a
    path leaves the tree whatever the tree holds. Symlink escapes depend on the
    tree and are caught by resolve_in_tree when the command runs.
    """
    depth = 0
    for comp in path.split("/"):
        if comp == "..":
            depth -= 1
            if depth < 0:
                raise PathEscapeError(f"path leads out of the tree: {path}")
        elif comp not in ("", "."):
            depth += 1


def _has_magic(s: str) -> bool:
    return any(c in s for c in "*?[")


def _tree_dir(tree: Path | str, prefix: str, *, after_wildcard: bool) -> Path | None:
    """The host directory of tree path `prefix`, or None if it is not a directory.

    A link out of the tree is an error in the literal part of a pattern; once a
    wildcard has been expanded it only means no match there."""
    try:
        d = resolve_in_tree(tree, prefix or "/")
    except PathEscapeError:
        if after_wildcard:
            return None
        raise
    return d if d.is_dir() else None


def _dirs_below(d: Path, prefix: str) -> list[str]:
    """ "**": `prefix` and every directory under it (hidden ones and symlinks not followed)."""
    found = []
    for dirpath, dirnames, _ in os.walk(d):
        dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
        rel = os.path.relpath(dirpath, d)
        found.append(prefix if rel == "." else f"{prefix}/{rel}")
    return found


def _entries_matching(d: Path, prefix: str, comp: str) -> list[str]:
    """Entries of `d` that match the wildcard component `comp` (a leading "." only by a "." in it)."""
    try:
        names = sorted(os.listdir(d))
    except OSError:
        return []
    return [
        f"{prefix}/{name}"
        for name in names
        if (comp.startswith(".") or not name.startswith(".")) and fnmatch.fnmatchcase(name, comp)
    ]


def _expand(tree: Path | str, prefixes: list[str], comp: str, *, after_wildcard: bool) -> list[str]:
    """The tree paths that each of `prefixes` followed by pattern component `comp` names."""
    if not _has_magic(comp):
        return [f"{prefix}/{comp}" for prefix in prefixes]  # ".." too: resolve_in_tree checks it
    new: list[str] = []
    for prefix in prefixes:
        d = _tree_dir(tree, prefix, after_wildcard=after_wildcard)
        if d is not None:
            new += _dirs_below(d, prefix) if comp == "**" else _entries_matching(d, prefix, comp)
    return new


def _existing(tree: Path | str, paths: list[str], lead: str, *, after_wildcard: bool) -> list[str]:
    """Those of `paths` that exist in the tree (a dangling link too), written as the pattern was."""
    found = []
    for p in paths:
        try:
            if os.path.lexists(resolve_in_tree(tree, p or "/", follow_last=False)):
                found.append(lead + p.lstrip("/") if p else lead or ".")
        except PathEscapeError:
            if not after_wildcard:
                raise
    return found


def glob_in_tree(tree: Path | str, pattern: str) -> list[str]:
    """Tree paths ("/usr/x", or "usr/x" for a relative pattern) that match `pattern`.

    Matching happens inside the tree with the rules of resolve_in_tree; entries that
    start with "." match only a pattern component that starts with "."; "**" as a
    whole component matches any number of directories (symlinks not followed).
    A pattern without wildcards yields itself if it exists. The result is sorted.
    """
    lead = "/" if pattern.startswith("/") else ""
    prefixes: list[str] = [""]
    after_wildcard = False
    for comp in (c for c in pattern.split("/") if c and c != "."):
        prefixes = list(dict.fromkeys(_expand(tree, prefixes, comp, after_wildcard=after_wildcard)))
        after_wildcard = after_wildcard or _has_magic(comp)
        if not prefixes:
            return []
    return sorted(_existing(tree, prefixes, lead, after_wildcard=after_wildcard))
