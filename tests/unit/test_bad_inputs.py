"""The bad-input catalogue: every subcommand, run as a user would, on input it must refuse.

Each case runs the real command line in a subprocess and must give: a non-zero exit
(1, or 2 for argparse's usage errors), a last stderr line "composer: error: ..." (or
argparse's "composer CMD: error: ...") that names the option or file:line, no
traceback, and nothing left behind (no OUTDIR, nothing in --workdir or beside the
inputs). Everything fails in a second or two: no case builds anything.

"{t}" in a case is its own scratch directory (outputs, --workdir, --cachedir),
"{i}" the shared directory of bad inputs made once for the module.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

# --------------------------------------------------------------------------- inputs

TEMPLATES = {
    "unbalanced.tmpl": "log fine\ninstallpkg kernel-{core,modules\n",
    "unknown.tmpl": "log fine\nfrobnicate /etc\n",
    "argcount.tmpl": "symlink /only-one-argument\n",
    "makosyntax.tmpl": "% if product:\nlog unterminated if\n",
    "undefined.tmpl": "log fine\nlog ${no_such_variable}\n",
    "dotdot.tmpl": "log fine\nmkdir /usr/../../etc/evil\n",
    "installsrc.tmpl": "install ../../../etc/shadow /etc/shadow\n",
    "unclosedquote.tmpl": "append /etc/motd \"no end\n",
    # Lexically fine; only the tree shows that "up" leads out of it.
    "symlinkescape.tmpl": "symlink ../../../../.. /up\nappend /up/etc/evil pwned\n",
}
KICKSTARTS = {
    "noend.ks": "%packages\nvim\n",
    "unknown.ks": "lang en_US.UTF-8\nfrobnicate --now\n",
    "include.ks": "%include /nonexistent/other.ks\n",
    "badquote.ks": 'bootloader --append="console=ttyS0 \\"oops"\n',
}
REPOFILES = {
    "syntax.repo": "[r]\nbaseurl\n",
    "nosection.repo": "baseurl=http://example.com/\n",
    "nobaseurl.repo": "[r]\nname=no way to reach it\n",
    "notaurl.repo": "[r]\nbaseurl=example.com/os\n",
    "unreachable.repo": "[r]\nbaseurl=http://127.0.0.1:9/\ngpgcheck=0\n",
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    i = tmp_path_factory.mktemp("bad-inputs")
    for name, text in {**TEMPLATES, **KICKSTARTS, **REPOFILES}.items():
        (i / name).write_text(text)
    (i / "latin1.tmpl").write_bytes(b"log caf\xe9\n")
    (i / "latin1.ks").write_bytes(b"lang caf\xe9\n")
    (i / "afile").write_text("a file where a directory is expected\n")
    (i / "random.img").write_bytes(os.urandom(64 * 1024))
    (i / "truncated.cow").write_bytes(b"SnAp")
    (i / "notakernel").write_bytes(b"\0" * 4096)
    (i / "initrd").write_bytes(b"\0" * 4096)
    (i / "empty.initrd").write_bytes(b"")
    # A real, empty repository, and one whose repomd.xml is garbage.
    (i / "empty").mkdir()
    subprocess.run(["createrepo_c", "-q", str(i / "empty")], check=True)
    (i / "garbage" / "repodata").mkdir(parents=True)
    (i / "garbage" / "repodata" / "repomd.xml").write_text("<repomd><data type='primary'>\n")
    # A live medium whose persistent overlay was cut short.
    (i / "medium" / "LiveOS").mkdir(parents=True)
    with open(i / "medium" / "LiveOS" / "rootfs.img", "wb") as f:
        f.truncate(1 << 20)
    (i / "medium" / "LiveOS" / "overlay-LIVE-1234").write_bytes(b"SnAp")
    (i / "nomedium" / "LiveOS").mkdir(parents=True)
    (i / "netboot" / "netboot.json").parent.mkdir()
    (i / "netboot" / "netboot.json").write_text("{not json")
    # A product whose templates need no packages: the runtime gets as far as
    # running --add-template on a real (empty) tree in a second.
    mini = i / "data" / "templates" / "mini"
    mini.mkdir(parents=True)
    (mini / "runtime-install.tmpl").write_text("log mini product\n")
    (mini / "runtime-postinstall.tmpl").write_text("log mini product\n")
    return i


# --------------------------------------------------------------------------- cases

C = ("--product", "TestProduct", "--version", "1", "--cachedir", "{t}/cache", "--workdir", "{t}/work")
SRC = ("--source", "file://{i}/empty")
RT = ("runtime", *C, *SRC)
ISO = ("boot-iso", *C, *SRC)
NET = ("netboot", *C, *SRC, "--url", "http://server/os/")
OUT = "{t}/out"
VERIFY = ("verify", "--kernel", "{i}/notakernel", "--initrd", "{i}/initrd")


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    expect: str  # in the last line of stderr
    code: int = 1  # 2: argparse's usage error
    env: tuple[tuple[str, str], ...] = ()
    wrap: str = ""  # "nobody": run unprivileged; "readonly": {t}/ro is a read-only mount


CASES = [
    # template-check: malformed template lines, each named by file:line
    Case("template-unbalanced-brace", ("template-check", "{i}/unbalanced.tmpl"), "unbalanced.tmpl:2: cannot parse"),
    Case("template-unknown-command", ("template-check", "{i}/unknown.tmpl"), "unknown.tmpl:2: unknown command 'frobnicate'"),
    Case("template-wrong-argument-count", ("template-check", "{i}/argcount.tmpl"), "argcount.tmpl:1: symlink: wrong arguments"),
    Case("template-mako-syntax", ("template-check", "{i}/makosyntax.tmpl"), "makosyntax.tmpl:1: template syntax error"),
    Case("template-undefined-variable", ("template-check", "{i}/undefined.tmpl"), "undefined.tmpl:2: undefined variable"),
    Case("template-unclosed-quote", ("template-check", "{i}/unclosedquote.tmpl"), "unclosedquote.tmpl:1: cannot parse"),
    Case("template-dotdot-escape", ("template-check", "{i}/dotdot.tmpl"), "dotdot.tmpl:2: mkdir: path leads out of the tree"),
    Case("template-install-src-escape", ("template-check", "{i}/installsrc.tmpl"),
         "installsrc.tmpl:1: install: path leads out of the tree"),
    Case("template-not-utf8", ("template-check", "{i}/latin1.tmpl"), "latin1.tmpl: template syntax error"),
    Case("template-missing", ("template-check", "{i}/nope.tmpl"), "{i}/nope.tmpl: no such template"),
    Case("template-is-a-directory", ("template-check", "{i}"), "a directory, not a template"),
    Case("template-check-bad-var", ("template-check", "--add-template-var", "=x", "{i}/dotdot.tmpl"), "--add-template-var '=x'"),
    # runtime: templates from the command line
    Case("runtime-add-template-missing", (*RT, "--add-template", "{i}/nope.tmpl", OUT), "--add-template {i}/nope.tmpl: no such file"),
    Case("runtime-add-template-dotdot", (*RT, "--add-template", "{i}/dotdot.tmpl", OUT), "dotdot.tmpl:2: mkdir: path leads out"),
    Case("runtime-add-template-unknown-command", (*RT, "--add-template", "{i}/unknown.tmpl", OUT), "unknown.tmpl:2: unknown command"),
    Case("runtime-add-template-symlink-escape",
         ("runtime", "--product", "mini", "--version", "1", "--cachedir", "{t}/cache", "--workdir", "{t}/work", *SRC,
          "--add-template", "{i}/symlinkescape.tmpl", OUT),
         "symlinkescape.tmpl:2: append: path leads out of the tree", env=(("COMPOSER_DATADIR", "{i}/data"),)),
    # runtime: options
    Case("runtime-rootfs-size-nan", (*RT, "--rootfs-size", "nan", OUT), "--rootfs-size: not a size: 'nan'"),
    Case("runtime-rootfs-size-empty", (*RT, "--rootfs-size=", OUT), "--rootfs-size: not a size: ''"),
    Case("runtime-rootfs-size-too-large", (*RT, "--rootfs-size", "1e30", OUT), "--rootfs-size: '1e30' is too large"),
    Case("runtime-rootfs-type-unknown", (*RT, "--rootfs-type", "zfs", OUT), "argument --rootfs-type: invalid choice", code=2),
    Case("runtime-product-is-a-path", ("runtime", "--product", "../templates/testproduct", "--version", "1", *SRC, OUT),
         "--product '../templates/testproduct': not a product name"),
    Case("runtime-dracut-conf-missing", (*RT, "--dracut-conf", "{i}/nope.conf", OUT), "--dracut-conf {i}/nope.conf: no such file"),
    Case("runtime-source-date-epoch-env-garbage", (*RT, OUT), "SOURCE_DATE_EPOCH='garbage'", env=(("SOURCE_DATE_EPOCH", "garbage"),)),
    Case("runtime-source-date-epoch-too-large", (*RT, "--source-date-epoch", "99999999999", OUT),
         "--source-date-epoch 99999999999: too large"),
    Case("runtime-source-date-epoch-not-a-number", (*RT, "--source-date-epoch", "yesterday", OUT),
         "argument --source-date-epoch: invalid int value", code=2),
    Case("runtime-no-source", ("runtime", *C, OUT), "no package source: give --source URL or --repo FILE"),
    # runtime: repositories and packages
    Case("runtime-missing-package", (*RT, "--installpkgs", "no-such-package", OUT), "no package matches 'no-such-package'"),
    Case("runtime-source-unreachable", ("runtime", *C, "--source", "http://127.0.0.1:9/", OUT),
         "--source http://127.0.0.1:9/: cannot read the repository"),
    Case("runtime-source-malformed-repomd", ("runtime", *C, "--source", "file://{i}/garbage", OUT),
         "--source file://{i}/garbage: malformed repository"),
    Case("runtime-repo-file-syntax", ("runtime", *C, "--repo", "{i}/syntax.repo", OUT), "--repo {i}/syntax.repo:2: not a .repo file"),
    Case("runtime-repo-file-no-section", ("runtime", *C, "--repo", "{i}/nosection.repo", OUT),
         "--repo {i}/nosection.repo:1: not a .repo file"),
    Case("runtime-repo-file-no-baseurl", ("runtime", *C, "--repo", "{i}/nobaseurl.repo", OUT),
         "[r] has no baseurl, mirrorlist or metalink"),
    Case("runtime-repo-file-baseurl-not-a-url", ("runtime", *C, "--repo", "{i}/notaurl.repo", OUT),
         "[r] baseurl 'example.com/os' is not a URL"),
    Case("runtime-repo-file-unreachable", ("runtime", *C, "--repo", "{i}/unreachable.repo", OUT),
         "--repo {i}/unreachable.repo [r]: cannot read the repository"),
    # runtime: kickstarts
    Case("runtime-ks-unterminated-section", (*RT, "--ks", "{i}/noend.ks", OUT), "noend.ks:2: Section %packages does not end"),
    Case("runtime-ks-missing-include", (*RT, "--ks", "{i}/include.ks", OUT), "kickstart {i}/include.ks: Unable to open"),
    Case("runtime-ks-bad-quote", (*RT, "--ks", "{i}/badquote.ks", OUT), "bootloader --append: No closing quotation"),
    Case("runtime-ks-not-utf8", (*RT, "--ks", "{i}/latin1.ks", OUT), "kickstart {i}/latin1.ks: not a text file"),
    Case("runtime-ks-is-a-directory", (*RT, "--ks", "{i}", OUT), "--ks {i}: not a regular file"),
    # runtime: where the output and the work go
    Case("runtime-outdir-is-a-file", (*RT, "{i}/afile"), "OUTDIR {i}/afile: exists and is not a directory"),
    Case("runtime-outdir-parent-is-a-file", (*RT, "{i}/afile/out"), "OUTDIR {i}/afile/out: {i}/afile is not a directory"),
    Case("runtime-outdir-read-only", (*RT, "{t}/ro/out"), "OUTDIR {t}/ro/out: cannot write in {t}/ro", wrap="readonly"),
    Case("runtime-workdir-is-a-file", ("runtime", "--product", "TestProduct", "--version", "1", *SRC,
                                       "--workdir", "{i}/afile", OUT), "--workdir {i}/afile: not a directory"),
    Case("runtime-cachedir-is-a-file", ("runtime", "--product", "TestProduct", "--version", "1", *SRC,
                                        "--cachedir", "{i}/afile", OUT), "--cachedir {i}/afile: not a directory"),
    Case("runtime-not-root", ("runtime", "--product", "TestProduct", "--version", "1", "--source", "file:///x", "/nonexistent/out"),
         "runtime needs root privileges", wrap="nobody"),
    # boot-iso
    Case("boot-iso-default-volid-too-long",
         ("boot-iso", "--product", "TestProduct", "--version", "1.2.3-with-a-long-suffix", *SRC, OUT),
         "the default volume id 'TestProduct-1.2.3-with-a-long-suffix-"),
    Case("boot-iso-volid-slash", (*ISO, "--volid", "a/b", OUT), "--volid 'a/b': characters '/' not allowed"),
    Case("boot-iso-arch-template-var", (*ISO, "--add-arch-template-var", "no-equals", OUT), "--add-arch-template-var 'no-equals'"),
    Case("boot-iso-arch-template-dotdot", (*ISO, "--add-arch-template", "{i}/dotdot.tmpl", OUT), "dotdot.tmpl:2: mkdir: path leads out"),
    Case("boot-iso-arch-without-uefi", (*ISO, "--buildarch", "s390x", OUT), "--buildarch s390x: boot-iso has no UEFI boot"),
    Case("boot-iso-bios-loader-unknown", (*ISO, "--bios-loader", "lilo", OUT), "argument --bios-loader: invalid choice", code=2),
    Case("boot-iso-not-root", ("boot-iso", "--product", "TestProduct", "--version", "1", "--source", "file:///x", "/nonexistent/out"),
         "boot-iso needs root privileges", wrap="nobody"),
    # netboot
    Case("netboot-url-not-a-url", ("netboot", *C, *SRC, "--url", "server/os", OUT), "--url 'server/os': expected e.g. http://"),
    Case("netboot-url-missing", ("netboot", *C, *SRC, OUT), "the following arguments are required: --url", code=2),
    Case("netboot-unknown-product", ("netboot", "--product", "NoSuchOS", "--version", "1", *SRC, "--url", "http://s/", OUT),
         "--product NoSuchOS: no template set"),
    Case("netboot-ks-unknown-command", (*NET, "--ks", "{i}/unknown.ks", OUT), "unknown.ks:2: Unknown command: frobnicate"),
    # verify
    Case("verify-nothing-to-boot", ("verify",), "verify: give --kernel and --initrd"),
    Case("verify-not-a-kernel", VERIFY, "--kernel {i}/notakernel: not a Linux kernel image"),
    Case("verify-empty-initrd", ("verify", "--kernel", "{i}/notakernel", "--initrd", "{i}/empty.initrd"),
         "--initrd {i}/empty.initrd: empty file"),
    Case("verify-range-nonsense", (*VERIFY, "--min-memory", "--range", "lots"), "--range 'lots': expected LO-HI"),
    Case("verify-range-reversed", (*VERIFY, "--min-memory", "--range", "768-128"), "--range '768-128': need 0 < LO <= HI"),
    Case("verify-step-zero", (*VERIFY, "--min-memory", "--step", "0"), "--step 0: must be at least 1 MB"),
    Case("verify-memory-zero", (*VERIFY, "--memory", "0"), "--memory 0: too small"),
    Case("verify-timeout-negative", (*VERIFY, "--timeout", "-5"), "--timeout -5: must be more than 0"),
    Case("verify-log-parent-is-a-file", (*VERIFY, "--log", "{i}/afile/serial.log"), "--log {i}/afile: not a directory"),
    Case("verify-iso-missing", ("verify", "--iso", "{i}/nope.iso"), "--iso {i}/nope.iso: no such file"),
    Case("verify-netboot-not-a-tree", ("verify", "--netboot", "{i}"), "--netboot {i}: not a netboot tree"),
    Case("verify-netboot-garbage-json", ("verify", "--netboot", "{i}/netboot"), "--netboot {i}/netboot: netboot.json is not composer's"),
    # delta
    Case("delta-create-missing-image", ("delta", "create", "{i}/nope.img", "-o", "{t}/osmin.img.gz"), "delta: {i}/nope.img: no such file"),
    Case("delta-create-not-an-image", ("delta", "create", "{i}/random.img", "-o", "{t}/osmin.img.gz"),
         "delta: {i}/random.img holds no recognised filesystem"),
    Case("delta-create-bad-chunk-size", ("delta", "create", "{i}/random.img", "-o", "{t}/o.gz", "--chunk-size", "3"),
         "--chunk-size 3: invalid chunk size"),
    Case("delta-create-output-parent-is-a-file", ("delta", "create", "{i}/random.img", "-o", "{i}/afile/osmin.img.gz"),
         "delta: -o {i}/afile/osmin.img.gz: {i}/afile is not a directory"),
    Case("delta-apply-truncated-cow", ("delta", "apply", "{i}/random.img", "{i}/truncated.cow", "-o", "{t}/min.img"),
         "delta: {i}/truncated.cow: truncated"),
    Case("delta-apply-not-a-cow", ("delta", "apply", "{i}/random.img", "{i}/random.img", "-o", "{t}/min.img"),
         "delta: {i}/random.img: not a dm-snapshot persistent store"),
    Case("delta-without-action", ("delta",), "the following arguments are required: ACTION", code=2),
    # overlay
    Case("overlay-status-not-a-medium", ("overlay", "status", "{i}/nope"), "{i}/nope: no LiveOS/ directory"),
    Case("overlay-status-truncated-cow", ("overlay", "status", "{i}/medium"), "overlay-LIVE-1234: truncated"),
    Case("overlay-merge-truncated-cow", ("overlay", "merge", "--dry-run", "{i}/medium"), "overlay-LIVE-1234: truncated"),
    Case("overlay-merge-no-image", ("overlay", "merge", "{i}/nomedium"), "neither squashfs.img nor rootfs.img found"),
    # sparsify
    Case("sparsify-missing-image", ("sparsify", "{i}/nope.img"), "sparsify: {i}/nope.img: no such file"),
    Case("sparsify-directory", ("sparsify", "{i}"), "sparsify: {i} is not a regular file"),
    Case("sparsify-not-writable", ("sparsify", "{i}/random.img"), "not writable (permission denied)", wrap="nobody"),
    # the command itself
    Case("unknown-subcommand", ("frobnicate",), "argument COMMAND: invalid choice: 'frobnicate'", code=2),
]


# --------------------------------------------------------------------------- running

def _unprivileged_python() -> list[str] | None:
    """An interpreter user nobody can run composer with (this one may live under /root)."""
    if shutil.which("setpriv") is None:
        return None
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for python in (sys.executable, "/usr/bin/python3"):
        probe = subprocess.run([*drop, python, "-c", "import composer.cli"], env=env, cwd="/",
                               capture_output=True, check=False)
        if probe.returncode == 0:
            return [*drop, python]
    return None


@pytest.fixture
def request_cleanup():
    dirs: list[Path] = []
    yield dirs
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


def _snapshot(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, inputs: Path, tmp_path: Path, request_cleanup: list[Path]) -> None:
    t = tmp_path
    (t / "work").mkdir()
    (t / "ro").mkdir()
    sub = {"{t}": str(t), "{i}": str(inputs)}

    def fill(text: str) -> str:
        for k, v in sub.items():
            text = text.replace(k, v)
        return text

    argv = [fill(a) for a in case.args]
    env = {k: v for k, v in os.environ.items() if k not in ("SOURCE_DATE_EPOCH", "COMPOSER_DATADIR")}
    env.update({"PYTHONPATH": str(ROOT / "src"), **{k: fill(v) for k, v in case.env}})
    python = [sys.executable]
    if case.wrap == "nobody":
        if os.geteuid() != 0:
            pytest.skip("already unprivileged")
        python = _unprivileged_python()
        if python is None:
            pytest.skip("no interpreter user nobody can run")
        if case.id == "sparsify-not-writable":
            # A root-owned image where nobody can see it (pytest's tmp dirs are 0700).
            shared = Path(tempfile.mkdtemp(prefix="composer-bad-input-"))
            request_cleanup.append(shared)
            shared.chmod(0o755)
            argv[-1] = str(shared / "root-owned.img")
            shutil.copy(inputs / "random.img", argv[-1])
            os.chmod(argv[-1], 0o644)
    prefix: list[str] = []
    if case.wrap == "readonly":
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            pytest.skip("needs root for a private read-only mount")
        prefix = ["unshare", "--mount", "sh", "-c", 'mount -t tmpfs -o ro tmpfs "$0" && exec "$@"', str(t / "ro")]
    before = _snapshot(inputs), _snapshot(t)

    proc = subprocess.run([*prefix, *python, "-m", "composer", *argv], capture_output=True, text=True,
                          env=env, cwd="/", timeout=120, check=False)

    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == case.code, proc.stderr
    assert lines, "no error message"
    last = lines[-1]
    if case.code == 2:
        assert re.match(r"composer( [\w-]+)*: error: ", last), last
    else:
        assert last.startswith("composer: error: "), last
    assert fill(case.expect) in last, last
    # Nothing left behind: no OUTDIR, no work directory, nothing beside the inputs.
    # (Only dnf's metadata cache may appear, for the cases that reach dnf.)
    assert _snapshot(inputs) == before[0]
    assert {p for p in _snapshot(t) if p != "cache" and not p.startswith("cache/")} == before[1]


def test_catalogue_is_large_and_ids_are_unique() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.args[0] for c in CASES} >= {"runtime", "boot-iso", "netboot", "verify", "template-check",
                                          "delta", "overlay", "sparsify"}
