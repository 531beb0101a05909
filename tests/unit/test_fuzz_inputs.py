"""Fuzzing of the command line (issue 12, class 6), with hypothesis.

Option values (random text with newlines, quotes, control characters, unicode, huge
sizes, paths that alias the inputs, symlinks) go through every subcommand's early
checks in-process (the parser, then the subcommand's prepare_* function, which is
everything that runs before any work), kickstart and .repo contents through their
loaders, and values through template rendering. The properties:

* never a traceback: the only outcomes are a usage error, a ComposerError, or acceptance;
* never a file touched outside the test's directory, and inside it nothing but what
  the command may write (its inputs are unchanged);
* an accepted value never changes the rendered command lines or boot menus other
  than as data: the same commands, the same menu entries, the value verbatim.

COMPOSER_FUZZ_EXAMPLES scales the example counts (default 1: about half a minute).
The examples are derandomized (the same ones every run, so CI is reproducible) unless
COMPOSER_FUZZ_RANDOM=1 (`make fuzz`), which draws new ones each time.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from composer.cli import _glue_pass_through, build_parser
from composer.product import template_dir
from composer.run import ComposerError
from tests.conftest import ROOT

SCALE = float(os.environ.get("COMPOSER_FUZZ_EXAMPLES", "1"))
COUNTS: dict[str, int] = {}


def examples(n: int) -> settings:
    return settings(
        max_examples=max(1, int(n * SCALE)),
        deadline=None,
        database=None,
        derandomize=os.environ.get("COMPOSER_FUZZ_RANDOM") != "1",
        suppress_health_check=list(HealthCheck),
    )


# --------------------------------------------------------------------------- values

NASTY = [
    "",
    " ",
    "-",
    "--force",
    "1\nruncmd touch INJECTED",
    '1"\nruncmd touch INJECTED',
    "quiet\nlabel evil",
    "'",
    '"',
    "\\",
    "\\n",
    "${x}",
    "$(id)",
    "`id`",
    "a;b",
    "{a,b}",
    "#",
    "a b",
    "\t",
    "\r",
    "\x1b[2J",
    "\x7f",
    "\x85",
    "\u2028",
    "\u2029",
    "\ufeff",
    "\udcff",
    "\ue000",
    "é",
    "日本",
    "🦀",
    "1e400",
    "nan",
    "inf",
    "-1",
    "99999999999999999999",
    "9" * 5000,
    "../../etc",
    "/",
    "/etc/passwd",
    "//",
    ".",
    "..",
    "~",
    "a=b",
    "=x",
    "x=",
    "file:///etc",
    "http://127.0.0.1:9/",
    "http://[::1",
    "%include /etc/passwd",
]
# Command-line values are C strings: no NUL (execve cannot pass one).
ARG_TEXT = st.one_of(
    st.sampled_from(NASTY),
    st.text(st.characters(blacklist_characters="\x00", blacklist_categories=()), max_size=40),
    st.text(st.sampled_from(list("\n\r\t \"'\\${}();#&|<>,*?[]=-/.~:@%") + ["a", "1", "é", "\u2028"]), max_size=20),
)
SIZE_TEXT = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["0", "1", "512M", "1e30", "nan", "inf", "-0", "0x10", "99999999T", "1.5G", "", " 1 "]),
    ARG_TEXT,
)


# --------------------------------------------------------------------------- the world


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[Path]:
    """Inputs for every subcommand, symlinks aliasing them, and a cwd inside."""
    if os.geteuid() != 0:
        pytest.skip("the compose commands' early checks need root")
    w = tmp_path_factory.mktemp("fuzz")
    (w / "repo").mkdir()
    subprocess.run(["createrepo_c", "-q", str(w / "repo")], check=True)
    (w / "cache").mkdir()
    (w / "work").mkdir()
    (w / "home").mkdir()
    (w / "cwd").mkdir()
    (w / "victim").mkdir()
    (w / "victim" / "precious").write_text("keep\n")
    (w / "link-repo").symlink_to(w / "repo")
    (w / "link-victim").symlink_to(w / "victim")
    (w / "link-cache").symlink_to(w / "cache")
    (w / "local.repo").write_text(f"[local]\nbaseurl=file://{w}/repo\ngpgcheck=0\n")
    (w / "ks.ks").write_text(f"url --url=file://{w}/repo\n%packages\nbash\n%end\n")
    (w / "add.tmpl").write_text('log "${x}"\nappend /etc/motd "${x}"\n')
    (w / "dracut.conf").write_text("hostonly=no\n")
    with open(w / "rootfs.img", "wb") as f:
        f.truncate(4 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(w / "rootfs.img")], check=True)
    (w / "medium" / "LiveOS").mkdir(parents=True)
    shutil.copy(w / "rootfs.img", w / "medium" / "LiveOS" / "rootfs.img")
    from composer.live.dmsnap import CowStore

    CowStore.write(w / "medium" / "LiveOS" / "overlay-LIVE-1", 8, [(2, bytes(4096))])
    CowStore.write(w / "store.cow", 8, [(2, bytes(4096))])
    (w / "kernel").write_bytes(bytes(0x202) + b"HdrS" + bytes(1024))
    (w / "initrd").write_bytes(b"\x00" * 4096)
    old_cwd, old_home = os.getcwd(), os.environ.get("HOME")
    # Outside the world: "/" and the directory beside it (fuzzed paths alias both;
    # /etc and /usr are left out: other programs on this machine may change them).
    outside = {d: sorted(os.listdir(d)) for d in ("/", w.parent)}
    os.chdir(w / "cwd")
    os.environ["HOME"] = str(w / "home")
    try:
        yield w
    finally:
        os.chdir(old_cwd)
        if old_home is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = old_home
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(COUNTS.items()))
    print(f"\n  fuzz examples run: {counts} (total {sum(COUNTS.values())})")
    for d, names in outside.items():
        assert sorted(os.listdir(d)) == names, f"the fuzzing touched {d}"


def _fingerprint(w: Path) -> dict[str, str]:
    """Every input file's content (and link target) below the world, outputs excluded."""
    out = {}
    for p in sorted(w.rglob("*")):
        rel = str(p.relative_to(w))
        if rel.startswith(("out", "gen", "cwd", "cache", "work", "home")):
            continue
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def path_value(w: Path) -> st.SearchStrategy[str]:
    """Paths that alias the inputs, protected places, symlinks, and fresh names inside the world."""
    aliases = [
        w / "repo",
        w / "link-repo",
        w / "repo" / "sub",
        w / "cache",
        w / "link-cache",
        w / "cache" / "x",
        w / "work",
        w / "work" / "x",
        w,
        w / "victim",
        w / "link-victim",
        w / "link-victim" / "x",
        w / "home",
        w / "repo" / ".." / "repo",
        Path(f"{w}/cache/"),
        w / "cwd",
        Path("."),
        Path(".."),
        Path("/"),
        Path("/etc"),
        Path("/proc/x"),
        Path("/usr"),
        Path("/dev/null"),
        w / "local.repo",
        w / "ks.ks",
        w / "rootfs.img",
        w / "medium",
        w / "medium" / "LiveOS" / "overlay-LIVE-1",
        w / "store.cow",
        w / "kernel",
    ]

    def fresh_name(t: str) -> str:
        return str(w / "gen" / (t.replace("/", "_").lstrip(".")[:60] or "e"))

    fresh = ARG_TEXT.map(fresh_name)
    return st.one_of(st.sampled_from([str(a) for a in aliases]), fresh, st.integers(0, 5).map(lambda n: str(w / "out" / f"o{n}")))


# --------------------------------------------------------------------------- running the early checks


def early_checks(argv: list[str]) -> str:
    """'usage', 'refused' or 'accepted'; anything else escapes (a traceback: the test fails)."""
    parser = build_parser()
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            args = parser.parse_args(_glue_pass_through(argv))
        except SystemExit as e:
            assert e.code == 2, f"exit {e.code}"
            return "usage"
        except ComposerError:
            return "usage"
    from composer.cli.common import check_logfile

    try:
        check_logfile(args.logfile, "--logfile")
        prepare = getattr(args, "prepare", None)
        if prepare is not None:
            prepare(args)
        elif args.command == "template-check":
            with contextlib.redirect_stdout(io.StringIO()):
                args.func(args)
        else:
            raise AssertionError(f"no early checks for {args.command}")
    except ComposerError as e:
        from composer.cli import one_line

        msg = one_line(str(e))  # what main() prints
        assert msg.isprintable() or not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029]", msg), msg
        return "refused"
    return "accepted"


COMPOSE = {
    "runtime": [],
    "boot-iso": [],
    "netboot": ["--url", "http://10.0.2.2:8000/"],
}
OPTIONS = {
    "--version": ARG_TEXT,
    "--release": ARG_TEXT,
    "--variant": ARG_TEXT,
    "--bugurl": ARG_TEXT,
    "--product": ARG_TEXT,
    "--buildarch": ARG_TEXT,
    "--installpkgs": ARG_TEXT,
    "--excludepkgs": ARG_TEXT,
    "--dracut-arg": ARG_TEXT,
    "--add-template-var": ARG_TEXT.map(lambda v: f"x={v}"),
    "--rootfs-size": SIZE_TEXT,
    "--source-date-epoch": SIZE_TEXT,
    "--source": ARG_TEXT,
}
MEDIA_OPTIONS = {"--kernel-arg": ARG_TEXT, "--add-arch-template-var": ARG_TEXT.map(lambda v: f"x={v}"), "--volid": ARG_TEXT}
PATH_OPTIONS = ("OUTDIR", "--cachedir", "--workdir", "--repo", "--ks", "--add-template", "--dracut-conf", "--logfile")


DEFAULTS = {
    "--version": "1",
    "--release": "1",
    "--variant": "Server",
    "--bugurl": "https://bugs.example.com/",
    "--product": "testproduct",
    "--buildarch": "x86_64",
    "--installpkgs": "bash",
    "--excludepkgs": "vim",
    "--dracut-arg": "--no-hostonly",
    "--add-template-var": "x=1",
    "--rootfs-size": "64M",
    "--source-date-epoch": "1700000000",
    "--kernel-arg": "quiet",
    "--add-arch-template-var": "x=1",
    "--volid": "TEST-1",
    "--url": "http://10.0.2.2:8000/",
}


@st.composite
def compose_case(draw, w: Path) -> tuple[str, dict[str, str], set[str], bool]:
    command = draw(st.sampled_from(sorted(COMPOSE)))
    values: dict[str, str] = {
        "--product": "testproduct",
        "--version": "1",
        "--cachedir": str(w / "cache"),
        "--workdir": str(w / "work"),
        "--source": f"file://{w}/repo",
        "--add-template": str(w / "add.tmpl"),
        "--add-template-var": "x=1",
        "OUTDIR": str(w / "out" / "o0"),
    }
    if command == "netboot":
        values["--url"] = "http://10.0.2.2:8000/"
    # One to three fuzzed options (values, sizes or paths).
    pool = {
        **OPTIONS,
        **(MEDIA_OPTIONS if command == "boot-iso" else {}),
        **({"--kernel-arg": ARG_TEXT, "--url": ARG_TEXT} if command == "netboot" else {}),
        **{p: path_value(w) for p in PATH_OPTIONS},
    }
    fuzzed = set(draw(st.lists(st.sampled_from(sorted(pool)), min_size=1, max_size=3, unique=True)))
    for opt in fuzzed:
        values[opt] = draw(pool[opt])
    return command, values, fuzzed, draw(st.booleans())


def argv_of(command: str, values: dict[str, str], force: bool) -> list[str]:
    argv = [command]
    if "--logfile" in values:
        argv = ["--logfile", values["--logfile"], command]
    for opt, v in values.items():
        if opt not in ("OUTDIR", "--logfile"):
            argv += [f"{opt}={v}"]
    if force:
        argv.append("--force")
    return [*argv, "--", values["OUTDIR"]]


def _menus(command: str, argv: list[str]) -> list[str]:
    """The structure of the boot menus the values make: each line's first word."""
    from composer.cli.bootiso import prepare_boot_iso
    from composer.cli.netboot import prepare_netboot
    from composer.outputs.media import boot_kernels, render_config
    from composer.pipelines.bootiso import config_names, media_variables
    from composer.pipelines.netboot import CONFIGS, netboot_variables

    args = build_parser().parse_args(_glue_pass_through(argv))
    with contextlib.redirect_stderr(io.StringIO()):
        if command == "boot-iso":
            cfg, opts = prepare_boot_iso(args)
            variables = media_variables(cfg, opts, boot_kernels(["6.1.0-sample"]))
            names = list(config_names(opts.bios_loader))
        else:
            cfg, nopts = prepare_netboot(args)
            variables = netboot_variables(cfg, nopts, ["6.1.0-sample"])
            names = list(CONFIGS)
    out = []
    for name in names:
        text = render_config(template_dir(cfg), name, variables)
        out += [f"{name}: {line.split()[0] if line.split() else ''}" for line in text.splitlines()]
    return out


@given(data=st.data())
@examples(150)
def test_compose_early_checks(world, data) -> None:
    import composer.run

    before = _fingerprint(world)
    command, values, fuzzed, force = data.draw(compose_case(world))
    argv = argv_of(command, values, force)
    try:
        outcome = early_checks(argv)
    finally:
        composer.run.stop_logging()  # a boot-iso/netboot --logfile would stay set for later tests
    COUNTS[f"compose:{outcome}"] = COUNTS.get(f"compose:{outcome}", 0) + 1
    assert _fingerprint(world) == before, "an input changed"
    assert not list(world.rglob("INJECTED"))
    if outcome == "accepted":
        out = os.path.realpath(values["OUTDIR"])
        assert out.startswith(str(world) + "/"), f"OUTDIR {values['OUTDIR']} outside the test's directory accepted"
        assert not out.startswith((str(world / "repo"), str(world / "cache"))), out
        # A user's directory may hold a new output, never be replaced by one.
        assert out != str(world / "victim"), out
        if command != "runtime":
            # An accepted value changes no menu line's kind and no line count.
            benign = {k: (DEFAULTS[k] if k in fuzzed and k in DEFAULTS else v) for k, v in values.items()}
            assert _menus(command, argv) == _menus(command, argv_of(command, benign, force))


@st.composite
def other_argv(draw, w: Path) -> list[str]:
    kind = draw(
        st.sampled_from(
            ["verify", "verify-iso", "template-check", "delta-create", "delta-apply", "overlay-status", "overlay-merge"]
        )
    )
    p = path_value(w)
    if kind == "verify":
        argv = ["verify", "--kernel", draw(p), "--initrd", draw(p)]
        for opt, strat in (
            ("--memory", SIZE_TEXT),
            ("--timeout", SIZE_TEXT),
            ("--append", ARG_TEXT),
            ("--range", SIZE_TEXT),
            ("--step", SIZE_TEXT),
            ("--log", p),
        ):
            if draw(st.booleans()):
                v = draw(strat)
                argv += [f"{opt}={v}"]
        if draw(st.booleans()):
            argv.append("--min-memory")
        return argv
    if kind == "verify-iso":
        return ["verify", "--iso", draw(p), f"--memory={draw(SIZE_TEXT)}"]
    if kind == "template-check":
        return ["template-check", f"--add-template-var=x={draw(ARG_TEXT)}", str(w / "add.tmpl")]
    if kind == "delta-create":
        return ["delta", "create", draw(p), "-o", draw(p), f"--chunk-size={draw(SIZE_TEXT)}"]
    if kind == "delta-apply":
        return ["delta", "apply", draw(p), draw(p), "-o", draw(p)]
    if kind == "overlay-status":
        return ["overlay", "status", draw(p), f"--overlay={draw(st.one_of(ARG_TEXT, p))}"]
    return ["overlay", "merge", "--dry-run", draw(p), f"--overlay={draw(st.one_of(ARG_TEXT, p))}"]


@given(data=st.data())
@examples(100)
def test_other_commands_early_checks(world, data) -> None:
    """verify (checks only: prepare_verify), template-check, and the LiveOS tools whose
    work is harmless here (delta into the world, overlay status, merge --dry-run)."""
    from composer.cli.verify import prepare_verify

    before = _fingerprint(world)
    argv = data.draw(other_argv(world))
    parser = build_parser()
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            args = parser.parse_args(_glue_pass_through(argv))
        except (SystemExit, ComposerError) as e:
            assert not isinstance(e, SystemExit) or e.code == 2
            COUNTS["other:usage"] = COUNTS.get("other:usage", 0) + 1
            return
        try:
            if args.command == "verify":
                prepare_verify(args)
            elif args.command == "delta" and not os.path.abspath(args.output).startswith(f"{world}/"):
                from composer.preflight import check_outputs_apart

                check_outputs_apart([("delta: -o", args.output)], [])
                raise AssertionError(f"delta -o {args.output} outside the test's directory was accepted")
            else:
                args.func(args)
            outcome = "accepted"
        except ComposerError:
            outcome = "refused"
    COUNTS[f"other:{outcome}"] = COUNTS.get(f"other:{outcome}", 0) + 1
    after = _fingerprint(world)
    # delta -o may write its output where it was told (a fresh name, never an input).
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert not {k for k in changed if k in before}, f"inputs changed: {changed}"


# --------------------------------------------------------------------------- file contents


_KS_KNOWN = st.sampled_from(
    [
        "url --url=file:///nonexistent",
        "repo --name=a --baseurl=example.com",
        "%packages",
        "%end",
        'bootloader --append="quiet"',
        'bootloader --append="a;b"',
        "bootloader --append='$(x)'",
        "%include SELF",
        "%include /nonexistent.ks",
        "%pre",
        "lang en_US.UTF-8",
        "%ksappend SELF",
        "bash",
        "-vim",
        "@core",
        "url --url=http://[::1",
        "network --bootproto=dhcp",
        "%packages\nbash\n-vim\n%end",
        'bootloader --append="console=ttyS0 quiet"',
        "keyboard us",
        "lang en_US.UTF-8",
    ]
)
# Known lines twice as often as random text, so that some kickstarts get through.
KS_LINES = st.one_of(
    _KS_KNOWN,
    _KS_KNOWN,
    st.text(max_size=30),
    st.text(max_size=20).map(lambda t: f'bootloader --append="{t}"'),
    st.text(max_size=20).map(lambda t: f"%packages\n{t}\n%end"),
)


@given(lines=st.lists(KS_LINES, max_size=8))
@examples(80)
def test_kickstart_contents(world, lines) -> None:
    from composer.kickstart import load_kickstart

    ks = world / "gen" / "fuzz.ks"
    ks.parent.mkdir(exist_ok=True)
    ks.write_text("\n".join(line.replace("SELF", str(ks)) for line in lines) + "\n", errors="surrogateescape")
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            load_kickstart(ks)
        outcome = "accepted"
    except ComposerError as e:
        assert "Traceback" not in str(e)
        outcome = "refused"
    COUNTS[f"kickstart:{outcome}"] = COUNTS.get(f"kickstart:{outcome}", 0) + 1


REPO_LINES = st.one_of(
    st.sampled_from(
        [
            "[r]",
            "[other]",
            "baseurl=http://example.com/",
            "metalink=garbage",
            "mirrorlist=",
            "baseurl=file:///x, http://y/",
            "gpgcheck=1",
            "name=x",
            "baseurl",
            "= x",
            "[",
            "[]",
        ]
    ),
    st.text(max_size=30),
)


@given(lines=st.lists(REPO_LINES, max_size=8))
@examples(80)
def test_repofile_contents(world, lines) -> None:
    from composer.dnf import check_repofile

    f = world / "gen" / "fuzz.repo"
    f.parent.mkdir(exist_ok=True)
    f.write_text("\n".join(lines) + "\n", errors="surrogateescape")
    try:
        check_repofile(f)
        outcome = "accepted"
    except ComposerError:
        outcome = "refused"
    COUNTS[f"repofile:{outcome}"] = COUNTS.get(f"repofile:{outcome}", 0) + 1


# --------------------------------------------------------------------------- template rendering

CONTEXTS = [
    # (template line, expected command name, how the value must come out in the argument: None = any)
    ('append /etc/a "${x}"', "append", "exact"),
    ("append /etc/b '${x}'", "append", "exact"),
    ('append /etc/c "pre ${x} post"', "append", "framed"),
    ("log ${x}", "log", None),
    ("log value: ${x.upper()}", "log", None),
    ("mkdir /d/${x}", "mkdir", None),
    ('treeinfo general name "${x}"', "treeinfo", "exact"),
]


@given(value=st.one_of(st.text(max_size=40), st.sampled_from(NASTY)), idx=st.integers(0, len(CONTEXTS) - 1))
@examples(300)
def test_template_values_are_data(world, value, idx) -> None:
    from composer.templates import TemplateRunner, render_template

    line, name, how = CONTEXTS[idx]
    tdir = world / "gen" / "tmpl"
    tdir.mkdir(parents=True, exist_ok=True)
    t = tdir / f"c{idx}.tmpl"
    t.write_text(f"log start\n{line}\nlog end\n")
    runner = TemplateRunner(tree=Path("/nonexistent-tree"), templatedir=tdir, variables={"x": value}, dry_run=True)
    try:
        text, origins = render_template(t, [tdir], runner._template_data(None), protect_data=True)
        lines = runner._parse(t, text, origins)
    except ComposerError:
        # Refused values are those with a line break or control character, or ones whose
        # unquoted words leave the tree or are no command's arguments.
        COUNTS["template:refused"] = COUNTS.get("template:refused", 0) + 1
        if how == "exact":
            assert re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ue000-\ue01f]", value), f"{line} refused {value!r}"
        return
    COUNTS["template:accepted"] = COUNTS.get("template:accepted", 0) + 1
    assert [ln.name for ln in lines] == ["log", name, "log"], [ln.text for ln in lines]
    if how is not None:
        # Run the one command in a scratch tree and look at what it wrote or recorded.
        tree = world / "gen" / "tree"
        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir()
        live = TemplateRunner(tree=tree, templatedir=tdir, variables={"x": value})
        with contextlib.redirect_stderr(io.StringIO()):
            live.run(t)
        if name == "treeinfo":
            got = live.treeinfo["general"]["name"]
            assert got == value
        else:
            written = next(p for p in (tree / "etc").iterdir()).read_text()
            assert written == (value if how == "exact" else f"pre {value} post") + "\n"


# --------------------------------------------------------------------------- the real command line


@given(
    value=st.sampled_from(NASTY),
    option=st.sampled_from(["--version", "--kernel-arg", "--add-template-var", "--volid", "--release", "--rootfs-size"]),
)
@examples(10)
def test_real_cli(world, value, option) -> None:
    """A few examples through `python -m composer` itself: one error line, no traceback.
    (A value that passes every check starts a real build, which stops at dnf: the
    empty repository has no packages.)"""
    values = {
        "--product": "testproduct",
        "--version": "1",
        "--source": f"file://{world}/repo",
        "--cachedir": str(world / "cache"),
        "--workdir": str(world / "work"),
        option: f"x={value}" if option == "--add-template-var" else value,
        "OUTDIR": str(world / "out" / "real"),
    }
    before = _fingerprint(world)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HOME": str(world / "home")}
    proc = subprocess.run(
        [sys.executable, "-m", "composer", *argv_of("boot-iso", values, False)],
        capture_output=True,
        env=env,
        cwd=world / "cwd",
        timeout=300,
        check=False,
    )
    err = proc.stderr.decode(errors="replace")
    COUNTS["real-cli"] = COUNTS.get("real-cli", 0) + 1
    assert "Traceback" not in err, err
    assert proc.returncode != 0
    assert err.strip().splitlines()[-1].startswith(("composer: error: ", "composer boot-iso: error: ")), err
    assert _fingerprint(world) == before
    assert not (world / "out" / "real").exists()
