"""`composer template-check`: render and parse templates without building anything."""

from __future__ import annotations

import argparse
from pathlib import Path

from composer.config import parse_assignments
from composer.lorax.check import check_sharedir
from composer.preflight import check_arch, check_template_vars
from composer.run import DATADIR, ComposerError
from composer.templates import TemplateRunner, iter_template_files, sample_variables


def cmd_template_check(args: argparse.Namespace) -> int:
    """Render and parse templates without building anything: catches errors before a long build."""
    check_arch("--basearch", args.basearch)
    if args.sharedir is not None:
        template_vars = parse_assignments(args.add_template_var)
        check_template_vars("--add-template-var", template_vars)
        if args.templates:
            raise ComposerError("template-check: give --sharedir DIR or TEMPLATE files, not both")
        result = check_sharedir(args.sharedir, extra=dict(template_vars))
        for line in result.checked:
            print(f"checked: {line}")
        for line in result.errors:
            print(line)
        if result.errors:
            raise ComposerError(f"--sharedir {args.sharedir}: {len(result.errors)} error(s) in the template set (listed above)")
        print(f"ok: {args.sharedir}: {len(result.checked)} templates, no errors")
        return 0
    paths = list(args.templates) or list(iter_template_files(DATADIR / "templates"))
    template_vars = parse_assignments(args.add_template_var)
    check_template_vars("--add-template-var", template_vars)
    variables = sample_variables(args.basearch) | dict(template_vars)
    for t in paths:
        if t.is_dir():
            raise ComposerError(f"{t}: a directory, not a template (give its *.tmpl files)")
        if not t.is_file():
            raise ComposerError(f"{t}: no such template")
        TemplateRunner(tree=Path("/nonexistent-tree"), templatedir=t.parent, variables=variables, dry_run=True).run(t)
        print(f"ok: {t}")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("template-check", help="render and parse templates without building (all of templates/ by default)")
    p.add_argument("templates", nargs="*", type=Path, metavar="TEMPLATE")
    p.add_argument("--basearch", default="x86_64")
    p.add_argument(
        "--sharedir",
        type=Path,
        default=None,
        metavar="DIR",
        help="check a whole lorax template set (runtime, arch and included templates) with lorax's variables",
    )
    p.add_argument("--add-template-var", action="append", default=[], metavar="NAME=VALUE")
    p.set_defaults(func=cmd_template_check)
