"""The one options table (composer.cli.options) makes every Config both command lines build."""

from __future__ import annotations

import dataclasses

from composer.cli import build_parser
from composer.cli.lorax import lorax_parser
from composer.cli.options import SETTINGS
from composer.config import Config


def _flags(parser) -> set[str]:
    return {name for a in parser._actions for name in (a.option_strings or [a.dest])}


def test_every_row_is_one_config_field():
    fields = [s.field for s in SETTINGS]
    assert len(fields) == len(set(fields))
    assert set(fields) <= {f.name for f in dataclasses.fields(Config)}


def test_both_parsers_add_every_row_they_spell():
    runtime = build_parser()._subparsers._group_actions[0].choices["runtime"]
    lorax = lorax_parser()
    for s in SETTINGS:
        for spelling, parser in ((s.composer, runtime), (s.lorax, lorax)):
            if spelling is not None and spelling.names:
                assert set(spelling.names) <= _flags(parser), f"{s.field}: {spelling.names}"
                assert spelling.dest() in {a.dest for a in parser._actions}, s.field


def test_a_row_made_another_way_on_one_command_line_says_how():
    for s in SETTINGS:
        if s.composer is None or (s.lorax is not None and s.lorax.derive is not None):
            assert s.differs, s.field
