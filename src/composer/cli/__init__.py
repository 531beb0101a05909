"""composer's command line: one subcommand per job, errors as one line.

One module per subcommand family: compose (the options every compose shares, and
`runtime`), bootiso, netboot, verify, templatecheck, mkksiso, live (delta, overlay,
sparsify), lorax (lorax's command line), livemedia (livemedia-creator's, --no-virt);
options holds the one table of the options that make a Config, for composer's command
line and lorax's. This module parses, dispatches and turns every error into one line;
every subcommand, `composer lorax` and the `lorax` command (extras/lorax) included,
runs through `_run`: the same signal handling, the same one-line errors and exit
statuses, the same cleanup."""

from __future__ import annotations

import argparse
import re
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from composer import __version__
from composer.cli import bootiso, compose, live, mkksiso, netboot, templatecheck, verify
from composer.cli.common import check_logfile
from composer.cli.livemedia import run_livemedia
from composer.cli.lorax import run_lorax
from composer.cli.options import PASS_THROUGH_OPTIONS
from composer.run import ComposerError, redact, sbin_on_path, set_logging
from composer.userns import command_words, enter_user_namespace


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="composer", description="Build boot and runtime images of RPM-based operating systems.")
    parser.add_argument("--version", action="version", version=f"composer {__version__}")
    parser.add_argument("--verbose", action="store_true", help="show every command and its output")
    parser.add_argument("--logfile", type=Path, default=None, help="write a full log here")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    compose.register(sub)
    verify.register(sub)
    templatecheck.register(sub)
    sub.add_parser("lorax", add_help=False, help="lorax's command line: `composer lorax --help` (a drop-in for lorax)")
    sub.add_parser("livemedia", add_help=False, help="livemedia-creator's command line, --no-virt: `composer livemedia --help`")
    bootiso.register(sub)
    netboot.register(sub)
    mkksiso.register(sub)
    live.register(sub)
    return parser


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _terminate(signum: int, frame: object) -> None:
    """Turn SIGINT/SIGTERM/SIGHUP into one KeyboardInterrupt, so every cleanup runs.

    Later signals are swallowed (not SIG_IGN, which children would inherit): a second
    Ctrl-C must not interrupt the cleanup that removes the half-built output.
    """
    for s in _STOP_SIGNALS:
        signal.signal(s, _swallow)
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _swallow(signum: int, frame: object) -> None:
    pass


def _glue_pass_through(argv: list[str]) -> list[str]:
    """`--dracut-arg --add` -> `--dracut-arg=--add`, so the value can start with '-'.

    `--opt=--` is refused here: argparse drops a "--" value and hands the command a list."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg.startswith("--") and arg.endswith("=--") and arg.count("=") == 1:
            raise ComposerError(f"{arg}: '--' is not a value for {arg[:-3]}")
        value = next(it, None) if arg in PASS_THROUGH_OPTIONS else None
        out.append(arg if value is None else f"{arg}={value}")
    return out


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(message: str) -> str:
    """An error is one line: control characters from a value or path (a newline in a
    file name) are shown escaped, as Python would."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], redact(message))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    sbin_on_path()
    if argv[:1] == ["lorax"]:
        # lorax's own command line (its -v, -V, -c... are not composer's options)
        return _run(("lorax",), argv, lambda: run_lorax(argv[1:]))
    if argv[:1] == ["livemedia"]:
        return _run(("livemedia",), argv, lambda: run_livemedia(argv[1:]))
    parser = build_parser()
    try:
        glued = _glue_pass_through(argv)
    except ComposerError as e:
        parser.error(one_line(str(e)))
    args = parser.parse_args(glued)

    def command() -> int:
        set_logging(verbose=args.verbose, logfile=args.logfile)
        return args.func(args)

    return _run(command_words(args), argv, command, before=lambda: check_logfile(args.logfile, "--logfile"))


def lorax() -> int:
    """The `lorax` command (extras/lorax, what Pungi runs): `composer lorax` by another name.

    This function, not the module composer.cli.lorax, is the package's `lorax` attribute
    (the entry point composer.cli:lorax): it is defined after that module is imported."""
    return main(["lorax", *sys.argv[1:]])


def livemedia_creator() -> int:
    """The `livemedia-creator` command (extras/lorax): `composer livemedia` by another name."""
    return main(["livemedia", *sys.argv[1:]])


def _run(words: Sequence[str], argv: list[str], command: Callable[[], int], before: Callable[[], None] = lambda: None) -> int:
    """Run a subcommand: SIGINT, SIGTERM and SIGHUP (what Ctrl-C, Pungi, Koji and a closed
    terminal send) unwind it, so every cleanup runs; any error ends as one line."""
    previous = {s: signal.signal(s, _terminate) for s in _STOP_SIGNALS}
    try:
        before()
        enter_user_namespace(words, argv)  # as an ordinary user (composer.userns)
        return command()
    except ComposerError as e:
        print(f"composer: error: {one_line(str(e))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        name = str(e) or "SIGINT"
        print(f"composer: interrupted by {name}; cleaned up", file=sys.stderr)
        # Stop signals are ignored from now until exit (every child is gone): one more must
        # not turn the clean exit status into a death by signal, and Python's finalization
        # resets a handler of its own, but not SIG_IGN, to the default.
        for s in _STOP_SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        previous = {}
        return 128 + getattr(signal.Signals, name, signal.SIGINT).value
    except OSError as e:
        where = f" {e.filename}:" if e.filename else ""
        print(one_line(f"composer: error:{where} {e.strerror or e}"), file=sys.stderr)
        return 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main())
