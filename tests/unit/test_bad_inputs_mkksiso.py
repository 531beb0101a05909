"""The bad-input catalogue for `composer mkksiso` (issue 20): boot-menu injection through
-c/-r/-R/--volid and the kickstart's label, and an OUTPUT that is a symbolic link.

The cases run as test_bad_inputs.py's do (run_case: the real command line in a
subprocess, one error line, no traceback, nothing left behind); those that get past
the arguments remaster a small real boot.iso (test_mkksiso.make_small_iso: xorriso,
mtools and the host's grub-mkimage, no compose). Then a hypothesis fuzz of the values
that reach the menus: whatever is accepted leaves every menu line one command that
GRUB's own parser (grub-script-check) reads, with inst.ks= a whole argument of every
kernel command line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from composer.pipelines import mkksiso as mk
from composer.run import ComposerError
from tests.unit.test_bad_inputs import Case, inputs, request_cleanup, run_case  # noqa: F401 - fixtures
from tests.unit.test_mkksiso import GRUB_CFG, ISOLINUX_CFG, VOLID, make_small_iso, needs_tools

KS = "inst.ks=hd:LABEL=Test-1-x86_64:/good.ks"
BOOT = "{i}/mk/boot.iso"
OUT = "{t}/out.iso"
M = ("mkksiso", "--ks", "{i}/mk/good.ks")

CASES = [
    # -c: every GRUB `linux` line took the value as it was
    Case(
        "mkksiso-cmdline-semicolon-second-command",
        (*M, "-c", "quiet;reboot", BOOT, OUT),
        "--cmdline 'quiet;reboot': holds ';'; a kernel argument is one word",
    ),
    Case("mkksiso-cmdline-closing-brace", (*M, "-c", "a}", BOOT, OUT), "--cmdline 'a}': holds '}'"),
    Case("mkksiso-cmdline-command-substitution", (*M, "-c", "x=$(reboot)", BOOT, OUT), "--cmdline 'x=$(reboot)': holds '$'"),
    Case("mkksiso-cmdline-comment-hides-inst-ks", (*M, "-c", "#", BOOT, OUT), "--cmdline '#': holds '#'"),
    Case(
        "mkksiso-cmdline-newline-menu-entry",
        (*M, "-c", "quiet\nmenuentry evil {", BOOT, OUT),
        "--cmdline 'quiet\\nmenuentry evil {': holds a newline",
    ),
    Case("mkksiso-cmdline-quoted-space", (*M, "-c", 'inst.cmdline="a b"', BOOT, OUT), "holds '\"'"),
    Case("mkksiso-cmdline-backslash", (*M, "-c", "a\\;b", BOOT, OUT), "--cmdline 'a\\\\;b': holds '\\\\'"),
    Case("mkksiso-cmdline-empty", (*M, "-c", "", BOOT, OUT), "--cmdline '': no kernel argument in it"),
    Case("mkksiso-cmdline-not-ascii", (*M, "-c", "lang=é", BOOT, OUT), "--cmdline 'lang=é': holds 'é'"),
    Case("mkksiso-cmdline-pipe", (*M, "-c", "a|b", BOOT, OUT), "--cmdline 'a|b': holds '|'"),
    # -r: a value of the same kind
    Case("mkksiso-rm-args-empty", (*M, "-r", "", BOOT, OUT), "--rm-args '': no kernel argument in it"),
    Case("mkksiso-rm-args-semicolon", (*M, "-r", "quiet;x", BOOT, OUT), "--rm-args 'quiet;x': holds ';'"),
    # -R: FROM empty mangled every menu; menu syntax in FROM or TO; edits that break a line
    Case("mkksiso-replace-empty-from", (*M, "-R", "", "X", BOOT, OUT), "--replace '' 'X': FROM is empty"),
    Case(
        "mkksiso-replace-to-semicolon",
        (*M, "-R", "quiet", "quiet;reboot", BOOT, OUT),
        "--replace 'quiet' 'quiet;reboot': TO holds ';', which is syntax in boot menus",
    ),
    Case("mkksiso-replace-from-quote", (*M, "-R", "'", "", BOOT, OUT), 'FROM holds "\'"'),
    Case("mkksiso-replace-to-brace", (*M, "-R", "Check", "x }", BOOT, OUT), "TO holds '}'"),
    Case("mkksiso-replace-newline", (*M, "-R", "quiet", "a\nb", BOOT, OUT), "--replace TO 'a\\nb': holds a newline"),
    Case(
        "mkksiso-replace-removes-spaces",
        (*M, "-R", " ", "", BOOT, OUT),
        "the edit leaves 0 kernel command lines of 2; --replace changes text anywhere in a menu",
    ),
    Case("mkksiso-replace-renames-linux", (*M, "-R", "linux", "echo", BOOT, OUT), "kernel command lines of 2"),
    Case(
        "mkksiso-replace-isolinux-append",
        (*M, "-R", "append", "echo", "{i}/mk/isolinux.iso", OUT),
        "isolinux/isolinux.cfg: the edit leaves 0 kernel command lines of 1",
    ),
    # --volid and the label in inst.ks=
    Case("mkksiso-volid-semicolon", (*M, "--volid", "A;reboot", BOOT, OUT), "--volid 'A;reboot': characters ';' not allowed"),
    Case("mkksiso-volid-brace", (*M, "--volid", "A}", BOOT, OUT), "--volid 'A}': characters '}' not allowed"),
    Case(
        "mkksiso-input-volid-not-a-label",
        (*M, "{i}/mk/badlabel.iso", OUT),
        "--ks: the volume id 'Bad Label;x' cannot be written in 'inst.ks=hd:LABEL=Bad\\\\x20Label\\\\x3bx:/good.ks'",
    ),
    Case(
        "mkksiso-updates-input-volid-not-a-label",
        ("mkksiso", "-u", "{i}/mk/good.ks", "{i}/mk/badlabel.iso", OUT),
        "--updates: the volume id 'Bad Label;x' cannot be written",
    ),
    Case(
        "mkksiso-ks-name-semicolon",
        ("mkksiso", "--ks", "{i}/mk/a;b.ks", BOOT, OUT),
        "--ks {i}/mk/a;b.ks: the name 'a;b.ks' goes on the kernel command line; rename the file",
    ),
    # OUTPUT a symbolic link: --force replaced the link's target
    Case(
        "mkksiso-output-symlink",
        (*M, BOOT, "{i}/mk/link.iso"),
        "OUTPUT {i}/mk/link.iso is a symbolic link (to {i}/mk/victim.iso): composer never writes through a link",
    ),
    Case(
        "mkksiso-output-symlink-force",
        (*M, "--force", BOOT, "{i}/mk/link.iso"),
        "OUTPUT {i}/mk/link.iso is a symbolic link (to {i}/mk/victim.iso)",
    ),
    Case(
        "mkksiso-output-dangling-symlink",
        (*M, BOOT, "{i}/mk/dangling.iso"),
        "OUTPUT {i}/mk/dangling.iso is a symbolic link (to {i}/mk/nowhere/x.iso)",
    ),
    Case(
        "mkksiso-output-symlink-to-input",
        (*M, "--force", BOOT, "{i}/mk/input-link.iso"),
        "OUTPUT {i}/mk/input-link.iso is a symbolic link",
    ),
    Case(
        "mkksiso-output-not-a-regular-file",
        (*M, "--force", BOOT, "/dev/null"),
        "OUTPUT /dev/null: not a regular file; --force replaces only an ISO file",
    ),
]


@pytest.fixture(scope="module")
def mk_inputs(inputs: Path) -> Path:  # noqa: F811 - the fixture imported above
    """inputs/mk: small boot ISOs (GRUB and isolinux), one whose volume id is no label,
    kickstarts, and links at OUTPUT."""
    d = inputs / "mk"
    d.mkdir()
    make_small_iso(d, "grub2").rename(d / "boot.iso")
    make_small_iso(d, "isolinux")
    subprocess.run(
        [
            "xorriso",
            "-indev",
            str(d / "boot.iso"),
            "-outdev",
            str(d / "badlabel.iso"),
            "-boot_image",
            "any",
            "replay",
            "-volid",
            "Bad Label;x",
            "-commit",
        ],
        capture_output=True,
        check=True,
    )
    (d / "good.ks").write_text("text\n")
    (d / "a;b.ks").write_text("text\n")
    (d / "victim.iso").write_text("keep me\n")
    (d / "link.iso").symlink_to(d / "victim.iso")
    (d / "dangling.iso").symlink_to(d / "nowhere" / "x.iso")
    (d / "input-link.iso").symlink_to(d / "boot.iso")
    return d


@needs_tools
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_mkksiso(
    case: Case,
    mk_inputs: Path,
    inputs: Path,  # noqa: F811 (the catalogue's fixture, imported)
    tmp_path: Path,
    request_cleanup: list[Path],  # noqa: F811
) -> None:
    run_case(case, inputs, tmp_path, request_cleanup)
    assert (mk_inputs / "victim.iso").read_text() == "keep me\n"


def test_catalogue_ids_are_unique() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 25


# --------------------------------------------------------------------------- fuzz

SCALE = float(os.environ.get("COMPOSER_FUZZ_EXAMPLES", "1"))
GRUB_CHECK = shutil.which("grub-script-check")
# GRUB_CFG and a kernel line with a comment and one followed by another command.
FUZZ_GRUB = GRUB_CFG + "menuentry 'More' {\n  linux /vmlinuz quiet # note\n  linux16 /vmlinuz a=1 ; echo done\n}\n"
NASTY = [
    "",
    " ",
    ";",
    "}",
    "{",
    "#",
    "$(reboot)",
    "${x}",
    "'",
    '"',
    "\\",
    "\n",
    "a;b",
    "quiet",
    "linux",
    "menuentry",
    "Check",
    "Start",
    "--class",
    "' --class",
    "inst.ks=x",
    "a b",
    "\u2028",
    "é",
    "|",
    "&&",
]
TEXT = st.one_of(
    st.sampled_from(NASTY),
    st.lists(st.sampled_from(list(" \n\t;#{}$()'\"\\|&<>=.:/-") + ["a", "quiet", "linux", "x1", "é"]), max_size=8).map("".join),
    st.text(max_size=10),
)


def _grub_parses(text: str) -> bool:
    with tempfile.NamedTemporaryFile("w", suffix=".cfg") as f:
        f.write(text)
        f.flush()
        assert GRUB_CHECK is not None
        return subprocess.run([GRUB_CHECK, f.name], capture_output=True, check=False).returncode == 0


def _assert_kernel_lines_keep(text: str, kind: str, arg: str) -> None:
    """An oracle apart from mkksiso's lexer: on every kernel line, `arg` is a word, and
    before it no word starts a comment or holds an operator."""
    first = ("linux", "linuxefi", "linux16") if kind == "grub" else ("append",)
    lines = [ln.split() for ln in text.splitlines() if ln.split() and ln.split()[0].lower() in first]
    assert lines, text
    for words in lines:
        assert arg in words, words
        before = words[: words.index(arg)]
        assert not any(w.startswith("#") or set(w) & set(";{}|&<>") for w in before), words


@pytest.mark.skipif(GRUB_CHECK is None, reason="grub-script-check missing")
@settings(
    max_examples=max(1, int(300 * SCALE)),
    deadline=None,
    database=None,
    derandomize=os.environ.get("COMPOSER_FUZZ_RANDOM") != "1",
    suppress_health_check=list(HealthCheck),
)
@given(cmdline=TEXT, rm=TEXT, replace=st.lists(st.tuples(TEXT, TEXT), max_size=2))
def test_fuzz_kernel_args_leave_every_menu_line_one_command(cmdline: str, rm: str, replace: list[tuple[str, str]]) -> None:
    opts = mk.MkksisoOptions(
        input=Path("/nonexistent.iso"),
        output=Path("/nonexistent/out.iso"),
        ks=Path("good.ks"),
        cmdline=cmdline,
        rm_args=(rm,) if rm else (),
        replace=tuple(replace),
    )
    try:
        mk.check_menu_options(opts)
        edit = mk.MenuEdit(mk.arg_edit(opts, VOLID), VOLID, VOLID, opts.replace)
        grub, _ = mk.edit_menu(FUZZ_GRUB, "grub", edit, "grub.cfg")
        syslinux, _ = mk.edit_menu(ISOLINUX_CFG, "syslinux", edit, "isolinux.cfg")
    except ComposerError as e:
        assert "\n" not in str(e) and str(e).strip()  # refused, with one line
        return
    assert grub.count("\n") == FUZZ_GRUB.count("\n") and syslinux.count("\n") == ISOLINUX_CFG.count("\n")
    assert _grub_parses(grub), grub
    _assert_kernel_lines_keep(grub, "grub", KS)
    _assert_kernel_lines_keep(syslinux, "syslinux", KS)
