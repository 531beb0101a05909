"""Checks of a build's inputs that take a second, run before the build takes minutes.

Everything here only reads: a bad input stops composer before OUTDIR, the work
directory or the cache exist, with one line naming the option or file:line.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from composer.config import Config
from composer.run import ComposerError


def check_root(command: str) -> None:
    """Composing needs root: dnf refuses to install into a tree otherwise (and rpm must
    give every file its owner). Say so now, not after a minute of work."""
    if os.geteuid() != 0:
        raise ComposerError(f"{command} needs root privileges: dnf installs the packages into the tree as root "
                            "(run it as root or with sudo)")


def _nearest_existing(path: Path) -> Path:
    p = path
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def check_dir_creatable(path: Path, option: str) -> None:
    """`path` is a directory composer may write in, or one it can create."""
    path = Path(os.path.abspath(path))
    if path.exists():
        if not path.is_dir():
            raise ComposerError(f"{option} {path}: not a directory")
        where = path
    else:
        where = _nearest_existing(path.parent)
        if not where.is_dir():
            raise ComposerError(f"{option} {path}: {where} is not a directory")
    if not os.access(where, os.W_OK | os.X_OK):
        raise ComposerError(f"{option} {path}: cannot write in {where} (permission denied or read-only)")


def check_outdir(outdir: Path, *, force: bool, option: str = "OUTDIR") -> None:
    """OUTDIR must not exist (unless --force) and its parent must be writable:
    the output is built beside it and renamed into place."""
    final = Path(os.path.abspath(outdir))
    if os.path.lexists(final):
        if not final.is_dir():
            raise ComposerError(f"{option} {final}: exists and is not a directory")
        if not force:
            raise ComposerError(f"output directory {final} exists (use --force to replace it)")
    parent = _nearest_existing(final.parent)
    if not parent.is_dir():
        raise ComposerError(f"{option} {final}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ComposerError(f"{option} {final}: cannot write in {parent} (permission denied or read-only)")


def check_file(path: Path | None, option: str) -> None:
    if path is None:
        return
    if not path.exists():
        raise ComposerError(f"{option} {path}: no such file")
    if not path.is_file():
        raise ComposerError(f"{option} {path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise ComposerError(f"{option} {path}: not readable (permission denied)")


def check_templates(cfg: Config, templates: Iterable[tuple[Path, str]]) -> None:
    """Render and parse templates (dry run, no tree): syntax errors, unknown commands,
    wrong arguments and `..` escapes are reported with file:line before dnf runs."""
    from composer.runtime import template_variables
    from composer.templates import TemplateRunner

    checker = TemplateRunner(tree=Path("/nonexistent-composer-tree"), templatedir=cfg.template_dir,
                             variables=template_variables(cfg), dry_run=True)
    for path, option in templates:
        if option:
            check_file(path, option)
        checker.run(path.resolve())


def check_compose_inputs(cfg: Config, command: str) -> None:
    """All the cheap checks of `composer runtime|boot-iso|netboot`, in the order a user
    would fix them."""
    from composer.dnf import check_repofile, check_source
    from composer.runtime import CLEANUP_TEMPLATE, INSTALL_TEMPLATE, POSTINSTALL_TEMPLATE

    check_root(command)
    templatedir = cfg.template_dir  # unknown --product
    check_outdir(cfg.outdir, force=cfg.force)
    if cfg.workdir is not None:
        check_dir_creatable(cfg.workdir, "--workdir")
    else:
        check_dir_creatable(Path("/var/tmp"), "work directory")
    check_dir_creatable(cfg.cachedir, "--cachedir")
    if not cfg.sources and not cfg.repofiles:
        raise ComposerError("no package source: give --source URL or --repo FILE")
    for url in cfg.sources:
        check_source(url)
    for f in cfg.repofiles:
        check_repofile(f)
    check_file(cfg.dracut_conf, "--dracut-conf")
    product = [(templatedir / name, "") for name in (INSTALL_TEMPLATE, POSTINSTALL_TEMPLATE, CLEANUP_TEMPLATE)
               if (templatedir / name).is_file()]
    check_templates(cfg, product + [(t, "--add-template") for t in cfg.add_templates])
