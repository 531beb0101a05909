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

from composer.run import DATADIR, OUTPUT_MARKER
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
    "unclosedquote.tmpl": 'append /etc/motd "no end\n',
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
    _defence_inputs(i)
    # Where a log is asked for: a link planted to a victim file, a FIFO nobody reads.
    (i / "loglink").symlink_to(i / "victimdir" / "precious")
    os.mkfifo(i / "fifo")
    mini = i / "data" / "templates" / "mini"
    mini.mkdir(parents=True)
    (mini / "runtime-install.tmpl").write_text("log mini product\n")
    (mini / "runtime-postinstall.tmpl").write_text("log mini product\n")
    return i


def _defence_inputs(i: Path) -> None:
    """Inputs of issue 12's classes (outputs vs inputs, values, formats, messages)."""
    import gzip

    from composer.live.dmsnap import CowStore

    # An ext4 origin that `delta -o` must never replace, and a COW store over it.
    with open(i / "victim.img", "wb") as f:
        f.truncate(4 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", str(i / "victim.img")], check=True)
    (i / "zeros.gz").write_bytes(gzip.compress(bytes(64 << 10)))
    (i / "zeros16").write_bytes(bytes(16))
    # A user's directory (and a link to it) that --force must leave alone.
    (i / "victimdir").mkdir()
    (i / "victimdir" / "precious").write_text("keep me\n")
    (i / "outlink").symlink_to(i / "victimdir")
    (i / "home").mkdir()
    # Kickstarts: include loops and depth, bad sources with their line.
    (i / "self.ks").write_text(f"lang en_US.UTF-8\n%include {i}/self.ks\n")
    (i / "loop-a.ks").write_text(f"%include {i}/loop-b.ks\n")
    (i / "loop-b.ks").write_text(f"lang en_US.UTF-8\n%include {i}/loop-a.ks\n")
    for n in range(20):
        (i / f"deep{n}.ks").write_text(f"%include {i}/deep{n + 1}.ks\n" if n < 19 else "lang en_US.UTF-8\n")
    (i / "badurl.ks").write_text("url --url=file:///nonexistent/os\n")
    (i / "badrepo.ks").write_text(f"url --url=file://{i}/empty\nrepo --name=extra --baseurl=example.com/os\n")
    (i / "quote.ks").write_text('lang en_US.UTF-8\nkeyboard "us\n')
    (i / "ksdir").mkdir()
    (i / "ksdir" / "ok.ks").write_text("lang en_US.UTF-8\n")
    (i / "ksdir" / OUTPUT_MARKER).write_text("")  # as if composer had made it: only the --ks inside stops --force
    (i / "menuarg.ks").write_text('lang en_US.UTF-8\nbootloader --append="quiet;reboot"\n')
    # .repo files: a garbage metalink (librepo asserts on it), a control character.
    (i / "metalink.repo").write_text("[r]\nname=r\nmetalink=garbage\n")
    (i / "local.repo").write_text(f"[local]\nbaseurl=file://{i}/empty\ngpgcheck=0\n")
    (i / "control.repo").write_text("[r]\nbaseurl=http://example.com/\x07os/\n")
    # Templates that use a variable: as a word, and as a whole line.
    (i / "usevar.tmpl").write_text('log "${x}"\nappend /etc/motd "${x}"\n')
    (i / "linevar.tmpl").write_text("log fine\n${x}\n")
    # Media: an overlay outside LiveOS/, a symlinked overlay, an overlay that is an
    # ext4 image, a garbage rootfs.img with a real COW overlay.
    for name in ("medium2", "medium3", "medium4", "medium5"):
        (i / name / "LiveOS").mkdir(parents=True)
        shutil.copy(i / "victim.img", i / name / "LiveOS" / "rootfs.img")
    CowStore.write(i / "foreign.cow", 8, [(0, bytes(4096))])
    (i / "medium3" / "LiveOS" / "overlay-LIVE-1").symlink_to(i / "foreign.cow")
    shutil.copy(i / "victim.img", i / "medium4" / "LiveOS" / "overlay-LIVE-ext4")
    (i / "medium5" / "LiveOS" / "rootfs.img").write_bytes(os.urandom(4 << 20))
    CowStore.write(i / "medium5" / "LiveOS" / "overlay-LIVE-2", 8, [(3, bytes(4096))])


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
    defence: str = ""  # issue 12's class: outputs, values, formats, messages


CASES = [
    # template-check: malformed template lines, each named by file:line
    Case("template-unbalanced-brace", ("template-check", "{i}/unbalanced.tmpl"), "unbalanced.tmpl:2: cannot parse"),
    Case("template-unknown-command", ("template-check", "{i}/unknown.tmpl"), "unknown.tmpl:2: unknown command 'frobnicate'"),
    Case("template-wrong-argument-count", ("template-check", "{i}/argcount.tmpl"), "argcount.tmpl:1: symlink: wrong arguments"),
    Case("template-mako-syntax", ("template-check", "{i}/makosyntax.tmpl"), "makosyntax.tmpl:1: template syntax error"),
    Case("template-undefined-variable", ("template-check", "{i}/undefined.tmpl"), "undefined.tmpl:2: undefined variable"),
    Case("template-unclosed-quote", ("template-check", "{i}/unclosedquote.tmpl"), "unclosedquote.tmpl:1: cannot parse"),
    Case("template-dotdot-escape", ("template-check", "{i}/dotdot.tmpl"), "dotdot.tmpl:2: mkdir: path leads out of the tree"),
    Case(
        "template-install-src-escape",
        ("template-check", "{i}/installsrc.tmpl"),
        "installsrc.tmpl:1: install: path leads out of the tree",
    ),
    Case("template-not-utf8", ("template-check", "{i}/latin1.tmpl"), "latin1.tmpl: template syntax error"),
    Case("template-missing", ("template-check", "{i}/nope.tmpl"), "{i}/nope.tmpl: no such template"),
    Case("template-is-a-directory", ("template-check", "{i}"), "a directory, not a template"),
    Case("template-check-bad-var", ("template-check", "--add-template-var", "=x", "{i}/dotdot.tmpl"), "--add-template-var '=x'"),
    # runtime: templates from the command line
    Case(
        "runtime-add-template-missing",
        (*RT, "--add-template", "{i}/nope.tmpl", OUT),
        "--add-template {i}/nope.tmpl: no such file",
    ),
    Case("runtime-add-template-dotdot", (*RT, "--add-template", "{i}/dotdot.tmpl", OUT), "dotdot.tmpl:2: mkdir: path leads out"),
    Case(
        "runtime-add-template-unknown-command",
        (*RT, "--add-template", "{i}/unknown.tmpl", OUT),
        "unknown.tmpl:2: unknown command",
    ),
    Case(
        "runtime-add-template-symlink-escape",
        (
            "runtime",
            "--product",
            "mini",
            "--version",
            "1",
            "--cachedir",
            "{t}/cache",
            "--workdir",
            "{t}/work",
            *SRC,
            "--add-template",
            "{i}/symlinkescape.tmpl",
            OUT,
        ),
        "symlinkescape.tmpl:2: append: path leads out of the tree",
        env=(("COMPOSER_DATADIR", "{i}/data"),),
    ),
    # runtime: options
    Case("runtime-rootfs-size-nan", (*RT, "--rootfs-size", "nan", OUT), "--rootfs-size: not a size: 'nan'"),
    Case("runtime-rootfs-size-empty", (*RT, "--rootfs-size=", OUT), "--rootfs-size: not a size: ''"),
    Case("runtime-rootfs-size-too-large", (*RT, "--rootfs-size", "1e30", OUT), "--rootfs-size: '1e30' is too large"),
    Case("runtime-rootfs-type-unknown", (*RT, "--rootfs-type", "zfs", OUT), "argument --rootfs-type: invalid choice", code=2),
    Case(
        "runtime-product-is-a-path",
        ("runtime", "--product", "../templates/testproduct", "--version", "1", *SRC, OUT),
        "--product '../templates/testproduct': not a product name",
    ),
    Case(
        "runtime-dracut-conf-missing", (*RT, "--dracut-conf", "{i}/nope.conf", OUT), "--dracut-conf {i}/nope.conf: no such file"
    ),
    Case(
        "runtime-source-date-epoch-env-garbage",
        (*RT, OUT),
        "SOURCE_DATE_EPOCH='garbage'",
        env=(("SOURCE_DATE_EPOCH", "garbage"),),
    ),
    Case("runtime-proxy-not-a-url", (*RT, "--proxy", "http://", OUT), "--proxy 'http://': not a proxy URL"),
    Case(
        "runtime-mirrorlist-missing-file",
        (*RT, "--mirrorlist", "file://{i}/nope", OUT),
        "--mirrorlist file://{i}/nope: cannot read it: No such file or directory",
    ),
    Case("runtime-enablerepo-with-space", (*RT, "--enablerepo", "a b", OUT), "--enablerepo 'a b': not a repository id or glob"),
    Case(
        "runtime-source-date-epoch-env-5000-digits",
        (*RT, OUT),
        "SOURCE_DATE_EPOCH=99999999999999999999: too large",
        env=(("SOURCE_DATE_EPOCH", "9" * 5000),),
    ),
    Case(
        "runtime-source-date-epoch-too-large",
        (*RT, "--source-date-epoch", "99999999999", OUT),
        "--source-date-epoch 99999999999: too large",
    ),
    Case(
        "runtime-source-date-epoch-not-a-number",
        (*RT, "--source-date-epoch", "yesterday", OUT),
        "argument --source-date-epoch: invalid int value",
        code=2,
    ),
    Case("runtime-no-source", ("runtime", *C, OUT), "no package source: give --source URL or --repo FILE"),
    # runtime: repositories and packages
    Case("runtime-missing-package", (*RT, "--installpkgs", "no-such-package", OUT), "no package matches 'no-such-package'"),
    Case(
        "runtime-source-unreachable",
        ("runtime", *C, "--source", "http://127.0.0.1:9/", OUT),
        "--source http://127.0.0.1:9/: cannot read the repository",
    ),
    Case(
        "runtime-source-malformed-repomd",
        ("runtime", *C, "--source", "file://{i}/garbage", OUT),
        "--source file://{i}/garbage: malformed repository",
    ),
    Case(
        "runtime-repo-file-syntax",
        ("runtime", *C, "--repo", "{i}/syntax.repo", OUT),
        "--repo {i}/syntax.repo:2: not a .repo file",
    ),
    Case(
        "runtime-repo-file-no-section",
        ("runtime", *C, "--repo", "{i}/nosection.repo", OUT),
        "--repo {i}/nosection.repo:1: not a .repo file",
    ),
    Case(
        "runtime-repo-file-no-baseurl",
        ("runtime", *C, "--repo", "{i}/nobaseurl.repo", OUT),
        "[r] has no baseurl, mirrorlist or metalink",
    ),
    Case(
        "runtime-repo-file-baseurl-not-a-url",
        ("runtime", *C, "--repo", "{i}/notaurl.repo", OUT),
        "[r] baseurl 'example.com/os' is not a URL",
    ),
    Case(
        "runtime-repo-file-unreachable",
        ("runtime", *C, "--repo", "{i}/unreachable.repo", OUT),
        "--repo {i}/unreachable.repo [r]: cannot read the repository",
    ),
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
    Case(
        "runtime-workdir-is-a-file",
        ("runtime", "--product", "TestProduct", "--version", "1", *SRC, "--workdir", "{i}/afile", OUT),
        "--workdir {i}/afile: not a directory",
    ),
    Case(
        "runtime-cachedir-is-a-file",
        ("runtime", "--product", "TestProduct", "--version", "1", *SRC, "--cachedir", "{i}/afile", OUT),
        "--cachedir {i}/afile: not a directory",
    ),
    Case(
        "runtime-not-root",
        ("runtime", "--product", "TestProduct", "--version", "1", "--source", "file:///x", "/nonexistent/out"),
        # an ordinary user builds in a user namespace (composer.userns): nobody has no subordinate ids
        "nobody has no range of 65536 subordinate ids in /etc/subuid and /etc/subgid",
        wrap="nobody",
    ),
    # boot-iso
    Case(
        "boot-iso-default-volid-too-long",
        ("boot-iso", "--product", "TestProduct", "--version", "1.2.3-with-a-long-suffix", *SRC, OUT),
        "the default volume id 'TestProduct-1.2.3-with-a-long-suffix-",
    ),
    Case("boot-iso-volid-slash", (*ISO, "--volid", "a/b", OUT), "--volid 'a/b': characters '/' not allowed"),
    Case(
        "boot-iso-arch-template-var", (*ISO, "--add-arch-template-var", "no-equals", OUT), "--add-arch-template-var 'no-equals'"
    ),
    Case(
        "boot-iso-arch-template-dotdot",
        (*ISO, "--add-arch-template", "{i}/dotdot.tmpl", OUT),
        "dotdot.tmpl:2: mkdir: path leads out",
    ),
    Case("boot-iso-arch-without-uefi", (*ISO, "--buildarch", "s390x", OUT), "--buildarch s390x: boot-iso has no UEFI boot"),
    Case("boot-iso-bios-loader-unknown", (*ISO, "--bios-loader", "lilo", OUT), "argument --bios-loader: invalid choice", code=2),
    Case(
        "boot-iso-not-root",
        ("boot-iso", "--product", "TestProduct", "--version", "1", "--source", "file:///x", "/nonexistent/out"),
        # an ordinary user builds in a user namespace (composer.userns): nobody has no subordinate ids
        "nobody has no range of 65536 subordinate ids in /etc/subuid and /etc/subgid",
        wrap="nobody",
    ),
    # netboot
    Case("netboot-url-not-a-url", ("netboot", *C, *SRC, "--url", "server/os", OUT), "--url 'server/os': expected e.g. http://"),
    Case("netboot-url-missing", ("netboot", *C, *SRC, OUT), "the following arguments are required: --url", code=2),
    Case(
        "netboot-unknown-product",
        ("netboot", "--product", "NoSuchOS", "--version", "1", *SRC, "--url", "http://s/", OUT),
        "--product NoSuchOS: no template set",
    ),
    Case("netboot-ks-unknown-command", (*NET, "--ks", "{i}/unknown.ks", OUT), "unknown.ks:2: Unknown command: frobnicate"),
    # verify
    Case("verify-nothing-to-boot", ("verify",), "verify: give --kernel and --initrd"),
    Case("verify-not-a-kernel", VERIFY, "--kernel {i}/notakernel: not a Linux kernel image"),
    Case(
        "verify-empty-initrd",
        ("verify", "--kernel", "{i}/notakernel", "--initrd", "{i}/empty.initrd"),
        "--initrd {i}/empty.initrd: empty file",
    ),
    Case("verify-range-nonsense", (*VERIFY, "--min-memory", "--range", "lots"), "--range 'lots': expected LO-HI"),
    Case("verify-range-reversed", (*VERIFY, "--min-memory", "--range", "768-128"), "--range '768-128': need 0 < LO <= HI"),
    Case("verify-step-zero", (*VERIFY, "--min-memory", "--step", "0"), "--step 0: must be at least 1 MB"),
    Case("verify-memory-zero", (*VERIFY, "--memory", "0"), "--memory 0: too small"),
    Case("verify-timeout-negative", (*VERIFY, "--timeout", "-5"), "--timeout -5: must be more than 0"),
    Case("verify-log-parent-is-a-file", (*VERIFY, "--log", "{i}/afile/serial.log"), "--log {i}/afile: not a directory"),
    Case("verify-iso-missing", ("verify", "--iso", "{i}/nope.iso"), "--iso {i}/nope.iso: no such file"),
    Case("verify-netboot-not-a-tree", ("verify", "--netboot", "{i}"), "--netboot {i}: not a netboot tree"),
    Case(
        "verify-netboot-garbage-json",
        ("verify", "--netboot", "{i}/netboot"),
        "--netboot {i}/netboot: netboot.json is not composer's",
    ),
    # delta
    Case(
        "delta-create-missing-image",
        ("delta", "create", "{i}/nope.img", "-o", "{t}/osmin.img.gz"),
        "delta: {i}/nope.img: no such file",
    ),
    Case(
        "delta-create-not-an-image",
        ("delta", "create", "{i}/random.img", "-o", "{t}/osmin.img.gz"),
        "delta: {i}/random.img holds no recognised filesystem",
    ),
    Case(
        "delta-create-bad-chunk-size",
        ("delta", "create", "{i}/random.img", "-o", "{t}/o.gz", "--chunk-size", "3"),
        "--chunk-size 3: invalid chunk size",
    ),
    Case(
        "delta-create-output-parent-is-a-file",
        ("delta", "create", "{i}/random.img", "-o", "{i}/afile/osmin.img.gz"),
        "delta: -o {i}/afile/osmin.img.gz: {i}/afile is not a directory",
    ),
    Case(
        "delta-apply-truncated-cow",
        ("delta", "apply", "{i}/random.img", "{i}/truncated.cow", "-o", "{t}/min.img"),
        "delta: {i}/truncated.cow: truncated",
    ),
    Case(
        "delta-apply-not-a-cow",
        ("delta", "apply", "{i}/random.img", "{i}/random.img", "-o", "{t}/min.img"),
        "delta: {i}/random.img: not a dm-snapshot persistent store",
    ),
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

# --------------------------------------------------------------------------- issue 12's classes

TOUCH = "runcmd touch {t}/INJECTED"  # must never run: the snapshot of {t} would show it
CASES += [
    Case(*c[:3], **{"defence": "outputs", **(c[3] if len(c) > 3 else {})})
    for c in [
        # 1. Outputs never touch inputs
        (
            "delta-create-output-is-origin",
            ("delta", "create", "{i}/victim.img", "-o", "{i}/victim.img"),
            "delta: -o {i}/victim.img is the origin {i}/victim.img",
        ),
        (
            "delta-apply-output-is-origin",
            ("delta", "apply", "{i}/victim.img", "{i}/foreign.cow", "-o", "{i}/victim.img"),
            "delta: -o {i}/victim.img is the origin {i}/victim.img",
        ),
        (
            "delta-apply-output-is-delta",
            ("delta", "apply", "{i}/victim.img", "{i}/foreign.cow", "-o", "{i}/foreign.cow"),
            "delta: -o {i}/foreign.cow is the delta {i}/foreign.cow",
        ),
        (
            "delta-create-output-in-etc",
            ("delta", "create", "{i}/victim.img", "-o", "/etc/osmin.img.gz"),
            "delta: -o /etc/osmin.img.gz is inside the system directory /etc",
        ),
        (
            "runtime-force-outdir-symlink",
            (*RT, "--force", "{i}/outlink"),
            "OUTDIR {i}/outlink is a symbolic link (to {i}/victimdir)",
        ),
        ("boot-iso-force-outdir-symlink", (*ISO, "--force", "{i}/outlink"), "OUTDIR {i}/outlink is a symbolic link"),
        ("netboot-force-outdir-symlink", (*NET, "--force", "{i}/outlink"), "OUTDIR {i}/outlink is a symbolic link"),
        (
            "runtime-force-foreign-directory",
            (*RT, "--force", "{i}/victimdir"),
            "OUTDIR {i}/victimdir: --force replaces only a directory composer made (it has no .composer-output)",
        ),
        ("runtime-force-outdir-root", (*RT, "--force", "/"), "OUTDIR / is the system directory /"),
        ("runtime-force-outdir-etc", (*RT, "--force", "/etc"), "OUTDIR /etc is the system directory /etc"),
        ("runtime-force-outdir-usr", (*RT, "--force", "/usr"), "OUTDIR /usr is the system directory /usr"),
        ("runtime-force-outdir-cachedir", (*RT, "--force", "{t}/cache"), "OUTDIR {t}/cache is --cachedir {t}/cache"),
        ("runtime-force-outdir-source", (*RT, "--force", "{i}/empty"), "OUTDIR {i}/empty is the package source file://{i}/empty"),
        (
            "runtime-outdir-inside-source",
            (*RT, "{i}/empty/out"),
            "OUTDIR {i}/empty/out is inside the package source file://{i}/empty",
        ),
        (
            "runtime-outdir-contains-cachedir",
            ("runtime", "--product", "TestProduct", "--version", "1", *SRC, "--cachedir", "{t}/out/cache", OUT),
            "OUTDIR {t}/out contains --cachedir",
        ),
        (
            "runtime-outdir-contains-workdir",
            (
                "runtime",
                "--product",
                "TestProduct",
                "--version",
                "1",
                *SRC,
                "--cachedir",
                "{t}/cache",
                "--workdir",
                "{t}/out/work",
                OUT,
            ),
            "OUTDIR {t}/out contains --workdir {t}/out/work",
        ),
        ("runtime-outdir-contains-template", (*RT, "--add-template", "{i}/usevar.tmpl", "--force", "{i}"), "OUTDIR {i} contains"),
        (
            "runtime-force-outdir-home",
            (*RT, "--force", "{i}/home"),
            "OUTDIR {i}/home is your home directory",
            {"env": (("HOME", "{i}/home"),)},
        ),
        (
            "netboot-outdir-inside-repo-baseurl",
            ("netboot", *C, "--repo", "{i}/local.repo", "--url", "http://s/", "{i}/empty/x"),
            "OUTDIR {i}/empty/x is inside the baseurl file://{i}/empty of --repo {i}/local.repo",
        ),
        (
            "runtime-outdir-contains-the-kickstart",
            (*RT, "--ks", "{i}/ksdir/ok.ks", "--force", "{i}/ksdir"),
            "OUTDIR {i}/ksdir contains --ks {i}/ksdir/ok.ks",
        ),
        ("runtime-outdir-inside-composers-data", (*RT, "{data}/templates/out"), "is inside composer's templates and data"),
        (
            "runtime-cachedir-is-a-system-directory",
            ("runtime", "--product", "TestProduct", "--version", "1", *SRC, "--cachedir", "/var/cache", OUT),
            "--cachedir /var/cache is the system directory /var/cache",
        ),
        (
            "runtime-workdir-is-the-source",
            (
                "runtime",
                "--product",
                "TestProduct",
                "--version",
                "1",
                *SRC,
                "--cachedir",
                "{t}/cache",
                "--workdir",
                "{i}/empty",
                OUT,
            ),
            "--workdir {i}/empty is the package source file://{i}/empty",
        ),
        (
            "overlay-merge-foreign-overlay",
            ("overlay", "merge", "--overlay", "{i}/foreign.cow", "{i}/medium2"),
            "--overlay {i}/foreign.cow: not in {i}/medium2/LiveOS",
        ),
        (
            "overlay-merge-overlay-is-the-image",
            ("overlay", "merge", "--overlay", "rootfs.img", "{i}/medium2"),
            "--overlay rootfs.img: not an overlay",
        ),
        (
            "overlay-merge-symlinked-overlay",
            ("overlay", "merge", "--dry-run", "{i}/medium3"),
            "overlay-LIVE-1 is a symbolic link",
        ),
        (
            "logfile-in-etc",
            ("--logfile", "/etc/composer.log", "template-check", "{i}/usevar.tmpl"),
            "--logfile /etc/composer.log is inside the system directory /etc",
        ),
        ("verify-log-is-the-kernel", (*VERIFY, "--log", "{i}/notakernel"), "--log {i}/notakernel is --kernel {i}/notakernel"),
        (
            "verify-log-inside-netboot-tree",
            ("verify", "--netboot", "{i}/netboot", "--log", "{i}/netboot/serial.log"),
            "--log {i}/netboot/serial.log is inside --netboot {i}/netboot",
        ),
        ("verify-log-in-etc", (*VERIFY, "--log", "/etc/serial.log"), "--log /etc/serial.log is inside the system directory /etc"),
    ]
]
CASES += [
    Case(*c[:3], **{"defence": "values", **(c[3] if len(c) > 3 else {})})
    for c in [
        # 2. Values are data
        (
            "template-check-var-newline-command",
            ("template-check", "--add-template-var", f"x=ok\n{TOUCH}", "{i}/usevar.tmpl"),
            "--add-template-var x='ok\\nruncmd touch {t}/INJECTED': holds a newline",
        ),
        (
            "template-check-var-is-a-command",
            ("template-check", "--add-template-var", f"x={TOUCH}", "{i}/linevar.tmpl"),
            "linevar.tmpl:2: the command name comes from a variable's value",
        ),
        (
            "runtime-var-newline-command",
            (*RT, "--add-template-var", f"x=ok\n{TOUCH}", "--add-template", "{i}/usevar.tmpl", OUT),
            "--add-template-var x='ok\\nruncmd touch {t}/INJECTED': holds a newline",
        ),
        ("runtime-var-control-character", (*RT, "--add-template-var", "x=a\x1bb", OUT), "holds control character U+001B"),
        (
            "runtime-version-newline-quote",
            ("runtime", "--product", "TestProduct", "--version", f'1"\n{TOUCH}', *SRC, OUT),
            "--version '1\"\\nruncmd touch {t}/INJECTED': holds a newline",
        ),
        (
            "runtime-version-not-a-version",
            ("runtime", "--product", "TestProduct", "--version", "1 beta", *SRC, OUT),
            "--version '1 beta': not a version",
        ),
        ("runtime-release-quote", (*RT, "--release", "1'2", OUT), '--release "1\'2": not a version'),
        ("runtime-variant-quote", (*RT, "--variant", 'Ser"ver', OUT), "--variant 'Ser\"ver': not a variant name"),
        (
            "runtime-product-quote",
            ("runtime", "--product", "Test'Product", "--version", "1", *SRC, OUT),
            '--product "Test\'Product": not a product name',
        ),
        ("runtime-bugurl-space", (*RT, "--bugurl", "http://b/ x", OUT), "--bugurl 'http://b/ x': a URL has no white space"),
        ("runtime-bugurl-newline", (*RT, "--bugurl", "http://b/\nx", OUT), "holds a newline"),
        ("runtime-buildarch-path", (*RT, "--buildarch", "../x86_64", OUT), "--buildarch '../x86_64': not an architecture"),
        ("runtime-installpkgs-newline", (*RT, "--installpkgs", "bash\nvim", OUT), "--installpkgs 'bash\\nvim': holds a newline"),
        ("runtime-dracut-arg-control", (*RT, "--dracut-arg", "--add\x07", OUT), "--dracut-arg '--add\\x07': holds control"),
        (
            "boot-iso-kernel-arg-newline-menu-entry",
            (*ISO, "--kernel-arg", "quiet\nlabel evil", OUT),
            "--kernel-arg 'quiet\\nlabel evil': holds a newline",
        ),
        (
            "boot-iso-kernel-arg-two-words",
            (*ISO, "--kernel-arg", "quiet splash", OUT),
            "holds a space; a kernel argument is one word",
        ),
        ("boot-iso-kernel-arg-grub-syntax", (*ISO, "--kernel-arg", "a;reboot", OUT), "--kernel-arg 'a;reboot': holds ';'"),
        ("boot-iso-template-var-quote", (*ISO, "--add-template-var", "x=a'b", OUT), '--add-template-var x="a\'b": holds "\'"'),
        (
            "template-check-basearch-newline",
            ("template-check", "--basearch", f"x86_64\n{TOUCH}", "{i}/usevar.tmpl"),
            "--basearch 'x86_64\\nruncmd touch {t}/INJECTED': holds a newline",
        ),
        (
            "boot-iso-arch-var-quote",
            (*ISO, "--add-arch-template-var", "x=a'b", OUT),
            '--add-arch-template-var x="a\'b": holds "\'"',
        ),
        ("netboot-kernel-arg-newline", (*NET, "--kernel-arg", "quiet\nlabel evil", OUT), "--kernel-arg 'quiet\\nlabel evil'"),
        ("netboot-kernel-arg-dollar", (*NET, "--kernel-arg", "x=${evil}", OUT), "holds '$'"),
        ("netboot-url-quote", ("netboot", *C, *SRC, "--url", "http://s/'x", OUT), '--url "http://s/\'x": holds "\'"'),
        (
            "runtime-ks-bootloader-menu-syntax",
            (*RT, "--ks", "{i}/menuarg.ks", OUT),
            "kickstart {i}/menuarg.ks:2: bootloader --append 'quiet;reboot': holds ';'",
        ),
        (
            "runtime-repo-control-character",
            ("runtime", *C, "--repo", "{i}/control.repo", OUT),
            "--repo {i}/control.repo:2: [r] baseurl",
        ),
        (
            "verify-append-newline",
            (*VERIFY, "--append", "console=ttyS0\nquiet"),
            "--append 'console=ttyS0\\nquiet': holds a newline",
        ),
    ]
]
CASES += [
    Case(*c[:3], **{"defence": "formats", **(c[3] if len(c) > 3 else {})})
    for c in [
        # 3. Formats validated before use
        (
            "delta-apply-gzipped-zeros",
            ("delta", "apply", "{i}/victim.img", "{i}/zeros.gz", "-o", "{t}/min.img"),
            "delta: {i}/zeros.gz: not a delta: its header is all zeros",
        ),
        (
            "delta-apply-16-zero-bytes",
            ("delta", "apply", "{i}/victim.img", "{i}/zeros16", "-o", "{t}/min.img"),
            "delta: {i}/zeros16: not a delta: its header is all zeros",
        ),
        (
            "overlay-status-overlay-is-an-ext4-image",
            ("overlay", "status", "{i}/medium4"),
            "overlay-LIVE-ext4: not a dm-snapshot persistent store (no 'SnAp' magic, and not a fresh all-zero store",
        ),
        (
            "runtime-ks-includes-itself",
            (*RT, "--ks", "{i}/self.ks", OUT),
            "kickstart {i}/self.ks:2: %include {i}/self.ks: an include loop (self.ks -> self.ks)",
        ),
        ("runtime-ks-include-loop", (*RT, "--ks", "{i}/loop-a.ks", OUT), "an include loop (loop-a.ks -> loop-b.ks -> loop-a.ks)"),
        ("runtime-ks-include-too-deep", (*RT, "--ks", "{i}/deep0.ks", OUT), "includes nested deeper than 16"),
        ("verify-iso-random-file", ("verify", "--iso", "{i}/random.img"), "--iso {i}/random.img: not an ISO 9660 image"),
        ("verify-iso-empty", ("verify", "--iso", "{i}/empty.initrd"), "--iso {i}/empty.initrd: empty file"),
        ("verify-iso-directory", ("verify", "--iso", "{i}"), "--iso {i}: is a directory"),
        ("verify-memory-huge", (*VERIFY, "--memory", "99999999"), "--memory 99999999: more than this host's"),
        ("verify-timeout-infinite", (*VERIFY, "--timeout", "inf"), "--timeout inf: at most 86400 seconds"),
        (
            "verify-range-huge",
            (*VERIFY, "--min-memory", "--range", "128-99999999"),
            "--range 128-99999999: more than this host's",
        ),
        (
            "delta-create-chunk-size-huge",
            ("delta", "create", "{i}/victim.img", "-o", "{t}/o.gz", "--chunk-size", "1T"),
            "--chunk-size 1T: invalid chunk size",
        ),
        ("runtime-rootfs-size-huge", (*RT, "--rootfs-size", "99999999T", OUT), "--rootfs-size: '99999999T' is too large"),
        # Past Python's 4,300-digit limit int() raises ValueError: found by the fuzz test in CI.
        (
            "delta-create-chunk-size-5000-digits",
            ("delta", "create", "{i}/victim.img", "-o", "{t}/o.gz", "--chunk-size", "9" * 5000),
            "--chunk-size 99999999999999999999...: too large",
        ),
        ("verify-timeout-double-dash", (*VERIFY, "--timeout=--"), "--timeout=--: '--' is not a value for --timeout", {"code": 2}),
        (
            "runtime-ks-unbalanced-quote",
            (*RT, "--ks", "{i}/quote.ks", OUT),
            "kickstart {i}/quote.ks:2: cannot parse: No closing quotation",
        ),
        (
            "runtime-version-not-utf8",
            ("runtime", "--product", "TestProduct", "--version", "1\udcff", *SRC, OUT),
            "holds byte 0xff, which is not UTF-8",
        ),
    ]
]
CASES += [
    Case(*c[:3], **{"defence": "messages", **(c[3] if len(c) > 3 else {})})
    for c in [
        # 5. Every message names the cause and the way out
        (
            "runtime-repo-metalink-garbage",
            ("runtime", *C, "--repo", "{i}/metalink.repo", OUT),
            "--repo {i}/metalink.repo:3: [r] metalink 'garbage' is not a URL",
        ),
        (
            "runtime-ks-url-no-repository",
            (*RT, "--ks", "{i}/badurl.ks", OUT),
            "kickstart {i}/badurl.ks:1: url --url file:///nonexistent/os: no repository there",
        ),
        (
            "runtime-ks-repo-not-a-url",
            (*RT, "--ks", "{i}/badrepo.ks", OUT),
            "kickstart {i}/badrepo.ks:2: repo --name=extra --baseurl example.com/os: not a URL",
        ),
        ("runtime-outdir-in-proc", (*RT, "/proc/x"), "OUTDIR /proc/x is inside the system directory /proc"),
        (
            "runtime-cachedir-inside-outdir",
            (
                "runtime",
                "--product",
                "TestProduct",
                "--version",
                "1",
                *SRC,
                "--cachedir",
                "{t}/out/c",
                "--workdir",
                "{t}/work",
                OUT,
            ),
            "OUTDIR {t}/out contains --cachedir {t}/out/c",
        ),
        ("runtime-repo-dev-null", ("runtime", *C, "--repo", "/dev/null", OUT), "--repo /dev/null: not a regular file"),
        ("verify-kernel-directory", ("verify", "--kernel", "{i}", "--initrd", "{i}/initrd"), "--kernel {i}: is a directory"),
        (
            "overlay-status-overlay-rootfs",
            ("overlay", "status", "--overlay", "rootfs.img", "{i}/medium2"),
            "--overlay rootfs.img: not an overlay (their names start with overlay-",
        ),
        (
            "overlay-merge-garbage-rootfs",
            ("overlay", "merge", "--dry-run", "{i}/medium5"),
            "rootfs.img holds no recognised filesystem: the medium's image is damaged or not a live image",
        ),
    ]
]


CASES += [
    Case(*c[:3], **{"defence": "links", **(c[3] if len(c) > 3 else {})})
    for c in [
        # Issue 20: nothing is written through a link, no file that is not a file is written or waited on
        (
            "runtime-logfile-symlink",
            ("--logfile", "{i}/loglink", *RT, OUT),
            "--logfile {i}/loglink: is a symbolic link (composer never writes through a link)",
        ),
        ("boot-iso-logfile-symlink", (*ISO, "--logfile", "{i}/loglink", OUT), "--logfile {i}/loglink: is a symbolic link"),
        ("netboot-logfile-symlink", (*NET, "--logfile", "{i}/loglink", OUT), "--logfile {i}/loglink: is a symbolic link"),
        ("runtime-logfile-fifo", ("--logfile", "{i}/fifo", *RT, OUT), "--logfile {i}/fifo: not a regular file"),
        ("runtime-logfile-dev-full", ("--logfile", "/dev/full", *RT, OUT), "/dev/full"),
        ("runtime-logfile-proc", ("--logfile", "/proc/self/comm", *RT, OUT), "/proc/self/comm"),
        (
            "runtime-workdir-newline",
            (
                "runtime",
                "--product",
                "TestProduct",
                "--version",
                "1",
                *SRC,
                "--cachedir",
                "{t}/cache",
                "--workdir",
                "{t}/work\nrpmdb",
                OUT,
            ),
            "--workdir '{t}/work\\nrpmdb': a control character in the path",
        ),
    ]
]


# --------------------------------------------------------------------------- running


def _unprivileged_python() -> list[str] | None:
    """An interpreter user nobody can run composer with (this one may live under /root)."""
    if shutil.which("setpriv") is None:
        return None
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for python in (sys.executable, "/usr/bin/python3"):
        probe = subprocess.run([*drop, python, "-c", "import composer.cli"], env=env, cwd="/", capture_output=True, check=False)
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
    run_case(case, inputs, tmp_path, request_cleanup)


def run_case(case: Case, inputs: Path, tmp_path: Path, request_cleanup: list[Path]) -> None:
    """Run one catalogue case and check what every case must give (see the module's docstring).
    Other catalogue modules import it with Case and the `inputs` and `request_cleanup` fixtures."""
    t = tmp_path
    (t / "work").mkdir()
    (t / "ro").mkdir()
    sub = {"{t}": str(t), "{i}": str(inputs), "{data}": str(DATADIR)}

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

    proc = subprocess.run(
        [*prefix, *python, "-m", "composer", *argv], capture_output=True, text=True, env=env, cwd="/", timeout=120, check=False
    )

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


def test_catalogue_classes_of_issue_12() -> None:
    counts = {k: sum(c.defence == k for c in CASES) for k in ("outputs", "values", "formats", "messages")}
    print(f"\n  issue 12 cases per class: {counts}")
    assert min(counts.values()) >= 8, counts


def test_catalogue_is_large_and_ids_are_unique() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.args[0] for c in CASES} >= {
        "runtime",
        "boot-iso",
        "netboot",
        "verify",
        "template-check",
        "delta",
        "overlay",
        "sparsify",
    }
