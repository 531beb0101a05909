"""Tests of the template runner: parsing, every command, errors, path confinement."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from composer import templates as T
from composer.run import ComposerError
from composer.templates import (
    PathEscapeError,
    TemplateError,
    TemplateRunner,
    brace_expand,
    glob_in_tree,
    resolve_in_tree,
    sample_variables,
    split_line,
)

REPO = Path(__file__).resolve().parents[2]


class FakePM:
    """In-memory package manager: package name -> files (rpm-style paths)."""

    def __init__(self, packages: dict[str, list[str]] | None = None) -> None:
        self.packages = dict(packages or {})
        self.installs: list[tuple[list[str], bool, list[str]]] = []
        self.removes: list[list[str]] = []
        self.transactions = 0

    def install(self, patterns: Sequence[str], *, required: bool, exclude: Sequence[str] = ()) -> None:
        self.installs.append((list(patterns), required, list(exclude)))

    def remove(self, patterns: Sequence[str]) -> None:
        self.removes.append(list(patterns))

    def run_transaction(self) -> None:
        self.transactions += 1

    def installed(self) -> list[str]:
        return sorted(self.packages)

    def files_of(self, name: str) -> list[str]:
        return list(self.packages[name])


@pytest.fixture
def env(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    tdir = tmp_path / "tmpl"
    tdir.mkdir()
    pm = FakePM()
    runner = TemplateRunner(tree=tree, templatedir=tdir, variables={"product": "Test", "version": "1"}, pkgmgr=pm)

    def run(text: str, name: str = "t.tmpl", **extra):
        path = tdir / name
        path.write_text(text)
        runner.run(path, extra or None)
        return runner

    class Env:
        pass

    e = Env()
    e.tree, e.tdir, e.pm, e.runner, e.run, e.tmp = tree, tdir, pm, runner, run, tmp_path
    return e


def write(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ------------------------------------------------------------------ lexing


@pytest.mark.parametrize(
    "line,words",
    [
        ("mkdir /a /b", ["mkdir", "/a", "/b"]),
        ("append /f 'two words'", ["append", "/f", "two words"]),
        ('append /f "say \\"hi\\""', ["append", "/f", 'say "hi"']),
        ("a b\\ c", ["a", "b c"]),
        ('x ""', ["x", ""]),
        ("mkdir /a/{b,c}", ["mkdir", "/a/b", "/a/c"]),
        ("x {a,b{c,d}}e", ["x", "ae", "bce", "bde"]),
        ("x a{,.bak}", ["x", "a", "a.bak"]),
        ("x {a}", ["x", "{a}"]),
        ("x '{a,b}'", ["x", "{a,b}"]),
        ('x "{a,b}"', ["x", "{a,b}"]),
        ("x \\{a,b}", ["x", "{a,b}"]),
        ("x {a,b}{1,2}", ["x", "a1", "a2", "b1", "b2"]),
    ],
)
def test_split_line(line, words):
    assert split_line(line) == words


@pytest.mark.parametrize("line", ["a 'b c' d", 'a "b\\"c" \\x', "a   b\tc", "x 'y'z\"w\""])
def test_split_line_agrees_with_shlex_without_braces(line):
    assert split_line(line) == shlex.split(line)


def test_split_line_errors():
    with pytest.raises(ValueError):
        split_line("append /f 'open")
    with pytest.raises(ValueError):
        split_line('append /f "open')
    with pytest.raises(ValueError, match="unbalanced brace"):
        split_line("x {a,b")  # a typo, not a literal brace: quote it for that


def test_brace_expand_nested_and_globs_untouched():
    assert brace_expand("/usr/{lib,lib64}/python3*/{a,b}") == [
        "/usr/lib/python3*/a",
        "/usr/lib/python3*/b",
        "/usr/lib64/python3*/a",
        "/usr/lib64/python3*/b",
    ]
    assert brace_expand("{a,{b,{c,d}}}") == ["a", "b", "c", "d"]
    assert brace_expand("plain") == ["plain"]


# ------------------------------------------------------------------ confinement


def test_resolve_plain_and_absolute_are_the_same(tmp_path):
    assert resolve_in_tree(tmp_path, "/usr/bin") == tmp_path / "usr/bin"
    assert resolve_in_tree(tmp_path, "usr/bin") == tmp_path / "usr/bin"
    assert resolve_in_tree(tmp_path, "/usr/../etc/./x") == tmp_path / "etc/x"
    assert resolve_in_tree(tmp_path, "/") == tmp_path


@pytest.mark.parametrize("path", ["..", "/..", "../etc", "/usr/../../etc", "a/b/../../../x"])
def test_resolve_refuses_dotdot_escape(tmp_path, path):
    with pytest.raises(PathEscapeError):
        resolve_in_tree(tmp_path, path)


def test_resolve_absolute_symlink_stays_in_tree(tmp_path):
    tree = tmp_path / "tree"
    (tree / "usr/lib").mkdir(parents=True)
    (tree / "lib").symlink_to("/usr/lib")  # absolute: means TREE/usr/lib
    (tree / "etc").mkdir()
    (tree / "etc/foo").symlink_to("/usr/x")
    assert resolve_in_tree(tree, "/lib/modules") == tree / "usr/lib/modules"
    assert resolve_in_tree(tree, "/etc/foo") == tree / "usr/x"
    # A link to a host path that exists on the host still means the tree's copy.
    (tree / "etc/host").symlink_to(str(tmp_path))
    assert resolve_in_tree(tree, "/etc/host/x") == tree / str(tmp_path).lstrip("/") / "x"


def test_resolve_relative_symlinks(tmp_path):
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "lib").symlink_to("usr/lib")
    (tmp_path / "usr/lib/up").symlink_to("../../etc")
    assert resolve_in_tree(tmp_path, "/lib/x") == tmp_path / "usr/lib/x"
    assert resolve_in_tree(tmp_path, "/lib/up/passwd") == tmp_path / "etc/passwd"


@pytest.mark.parametrize("target", ["../outside", "../../../../../../etc", "/../etc", "a/../../.."])
def test_resolve_refuses_symlink_escape(tmp_path, target):
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "evil").symlink_to(target)
    with pytest.raises(PathEscapeError):
        resolve_in_tree(tree, "/evil/passwd")
    with pytest.raises(PathEscapeError):
        resolve_in_tree(tree, "/evil")


def test_resolve_symlink_loops(tmp_path):
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("/a")
    (tmp_path / "self").symlink_to("self")
    for p in ("/a", "/b/x", "/self"):
        with pytest.raises(PathEscapeError, match="symbolic links"):
            resolve_in_tree(tmp_path, p)


def test_resolve_follow_last_false_keeps_the_link(tmp_path):
    (tmp_path / "evil").symlink_to("../../..")
    (tmp_path / "d").mkdir()
    (tmp_path / "d/link").symlink_to("/etc")
    assert resolve_in_tree(tmp_path, "/evil", follow_last=False) == tmp_path / "evil"
    assert resolve_in_tree(tmp_path, "/d/link", follow_last=False) == tmp_path / "d/link"
    assert resolve_in_tree(tmp_path, "/d/link") == tmp_path / "etc"
    # A trailing slash means the directory the link points to.
    assert resolve_in_tree(tmp_path, "/d/link/", follow_last=False) == tmp_path / "etc"


def test_glob_in_tree(tmp_path):
    for p in (
        "usr/share/locale/de/x.mo",
        "usr/share/locale/en/x.mo",
        "usr/share/locale/.hidden",
        "a/b/c/__pycache__/m.opt-1.pyc",
    ):
        write(tmp_path / p)
    (tmp_path / "lib").symlink_to("/usr/share")
    assert glob_in_tree(tmp_path, "/usr/share/locale/*") == ["/usr/share/locale/de", "/usr/share/locale/en"]
    assert glob_in_tree(tmp_path, "/usr/share/locale/.h*") == ["/usr/share/locale/.hidden"]
    assert glob_in_tree(tmp_path, "/lib/locale/[!e]*") == ["/lib/locale/de"]
    assert glob_in_tree(tmp_path, "usr/share/locale/en") == ["usr/share/locale/en"]
    assert glob_in_tree(tmp_path, "/nothing/*") == []
    assert glob_in_tree(tmp_path, "/nothing") == []
    assert glob_in_tree(tmp_path, "/a/**/__pycache__/*.opt-1.pyc") == ["/a/b/c/__pycache__/m.opt-1.pyc"]
    assert glob_in_tree(tmp_path, "/a/**") == ["/a", "/a/b", "/a/b/c", "/a/b/c/__pycache__"]


def test_glob_does_not_leave_the_tree(tmp_path):
    tree = tmp_path / "tree"
    write(tmp_path / "outside/secret")
    write(tree / "d/real/secret")
    (tree / "d/out").symlink_to("../../outside")
    assert glob_in_tree(tree, "/d/*/secret") == ["/d/real/secret"]
    with pytest.raises(PathEscapeError):
        glob_in_tree(tree, "/d/out/*")


# ------------------------------------------------------------------ commands


def test_comments_blank_lines_and_mako(env):
    env.run("# a comment\n\n   \n## a mako comment\n%for d in ['a', 'b']:\nmkdir /${d}/{x,y}\n%endfor\n  # indented comment\n")
    for d in ("a/x", "a/y", "b/x", "b/y"):
        assert (env.tree / d).is_dir()


def test_mkdir_append_and_escapes(env):
    env.run('mkdir /etc\nappend /etc/issue "Hello\\nWorld"\nappend /etc/issue \'a\\tb\'\nappend /new/dir/file "x"\n')
    assert (env.tree / "etc/issue").read_text() == "Hello\nWorld\na\tb\n"
    assert (env.tree / "new/dir/file").read_text() == "x\n"


def test_replace(env):
    write(env.tree / "etc/a.conf", "foo=1\nbar=foo\n")
    write(env.tree / "etc/b.conf", "foo=2")
    env.run('replace "^foo=(\\d)" "foo=<\\1>" /etc/*.conf\n')
    assert (env.tree / "etc/a.conf").read_text() == "foo=<1>\nbar=foo\n"
    assert (env.tree / "etc/b.conf").read_text() == "foo=<2>"


def test_replace_no_match_fails_bad_regex_is_syntax(env):
    with pytest.raises(TemplateError, match=r"t.tmpl:1: replace: no match for /etc/none"):
        env.run("replace a b /etc/none\n")
    with pytest.raises(TemplateError, match=r"t.tmpl:2: replace: bad regular expression"):
        env.run("log ok\nreplace 'a(' b /etc/x\n")
    with pytest.raises(TemplateError, match=r"t.tmpl:1: replace: bad replacement"):
        env.run("replace 'a' '\\9' /etc/x\n")


def test_remove(env):
    write(env.tree / "usr/share/doc/a/README")
    write(env.tree / "usr/share/man/man1/x.1")
    write(env.tree / "keep")
    env.run("remove /usr/share/{doc,man} /does/not/exist\n")
    assert not (env.tree / "usr/share/doc").exists()
    assert not (env.tree / "usr/share/man").exists()
    assert (env.tree / "keep").exists()


def test_remove_symlink_does_not_follow(env):
    write(env.tree / "usr/lib/important")
    outside = write(env.tmp / "outside/important")
    (env.tree / "lib").symlink_to("/usr/lib")
    (env.tree / "out").symlink_to("../outside")  # escaping link: removing it is fine
    (env.tree / "hostabs").symlink_to(str(outside.parent))
    env.run("remove /lib /out /hostabs\n")
    assert not os.path.lexists(env.tree / "lib")
    assert not os.path.lexists(env.tree / "out")
    assert (env.tree / "usr/lib/important").exists()
    assert outside.exists()


def test_remove_refuses_the_tree_and_escapes(env):
    with pytest.raises(TemplateError, match="tree itself"):
        env.run("remove /\n")
    with pytest.raises(TemplateError, match="out of the tree"):
        env.run("remove ../x\n")


def test_symlink(env):
    env.run("symlink ../usr/lib /lib\nsymlink /nowhere /etc/abs\nsymlink new /etc/abs\n")
    assert os.readlink(env.tree / "lib") == "../usr/lib"
    assert os.readlink(env.tree / "etc/abs") == "new"


def test_symlink_name_is_confined(env):
    (env.tree / "escape").symlink_to("../..")
    with pytest.raises(TemplateError, match="out of the tree"):
        env.run("symlink x /escape/planted\n")
    with pytest.raises(TemplateError, match="out of the tree"):
        env.run("symlink x ../planted\n")
    assert not os.path.lexists(env.tmp / "planted")


def test_hardlink_copy_move(env):
    write(env.tree / "usr/bin/a", "A")
    write(env.tree / "usr/share/d/f", "F")
    (env.tree / "opt").mkdir()
    env.run(
        "hardlink /usr/bin/a /usr/bin/b\n"
        "copy /usr/bin/a /opt\n"
        "copy /usr/share/d /opt/d2\n"
        "copy /usr/bin/a /new/c\n"
        "move /new/c /opt/moved\n"
    )
    assert (env.tree / "usr/bin/a").stat().st_ino == (env.tree / "usr/bin/b").stat().st_ino
    assert (env.tree / "opt/a").read_text() == "A"
    assert (env.tree / "opt/d2/f").read_text() == "F"
    assert (env.tree / "opt/moved").read_text() == "A"
    assert not (env.tree / "new/c").exists()


def test_copy_through_absolute_symlink_writes_into_the_tree(env):
    outside = env.tmp / "hostdir"
    outside.mkdir()
    write(env.tree / "src", "S")
    (env.tree / "dest").symlink_to(str(outside))  # means TREE/<outside path>
    env.run("copy /src /dest/file\n")
    assert not (outside / "file").exists()
    assert (env.tree / str(outside).lstrip("/") / "file").read_text() == "S"


def test_append_through_escaping_symlink_is_refused(env):
    victim = write(env.tmp / "victim", "orig")
    (env.tree / "etc").symlink_to("../")
    with pytest.raises(TemplateError, match="t.tmpl:1: append: path leads out of the tree"):
        env.run("append /etc/victim pwned\n")
    assert victim.read_text() == "orig"


def test_chmod(env):
    write(env.tree / "usr/bin/a")
    write(env.tree / "usr/bin/b")
    env.run("chmod /usr/bin/* 0750\n")  # lorax's order: FILEGLOB MODE
    assert stat.S_IMODE((env.tree / "usr/bin/a").stat().st_mode) == 0o750
    assert stat.S_IMODE((env.tree / "usr/bin/b").stat().st_mode) == 0o750
    with pytest.raises(TemplateError, match="t.tmpl:1: chmod: bad mode '9z'"):
        env.run("chmod /usr/bin/a 9z\n")
    with pytest.raises(TemplateError, match="t.tmpl:1: chmod: .*the order is chmod FILEGLOB MODE"):
        env.run("chmod 0644 /usr/bin/a\n")
    with pytest.raises(TemplateError, match="wrong arguments"):
        env.run("chmod /usr/bin/a /usr/bin/b 0644\n")


def test_install_reads_the_input_root(env):
    """lorax: install SRCGLOB DEST copies from the input root (here the tree itself)."""
    write(env.tree / "usr/share/x/one.conf", "1")
    write(env.tree / "usr/share/x/two.conf", "2")
    write(env.tdir / "usr/share/x/one.conf", "from the template directory")
    env.run("install usr/share/x/one.conf /etc/x.conf\nmkdir /etc/conf.d\ninstall /usr/share/x/*.conf /etc/conf.d\n")
    assert (env.tree / "etc/x.conf").read_text() == "1"
    assert sorted(p.name for p in (env.tree / "etc/conf.d").iterdir()) == ["one.conf", "two.conf"]
    with pytest.raises(TemplateError, match="t.tmpl:2: install: nothing matches files/missing"):
        env.run("mkdir /x\ninstall files/missing /etc/\n")


def test_install_from_inroot_to_outroot(tmp_path):
    """Arch templates: install, installkernel, installimg and glob() read the input root."""
    inroot, out, tdir = tmp_path / "in", tmp_path / "out", tmp_path / "t"
    write(inroot / "boot/vmlinuz-6.1.0-1.fc41.x86_64", "K")
    write(inroot / "boot/initramfs-6.1.0-1.fc41.x86_64.img", "I")
    write(inroot / "usr/share/lorax/product/.buildstamp", "stamp")
    write(inroot / "images/install.img", "S")
    out.mkdir()
    write(
        tdir / "a.tmpl",
        (
            '<%page args="kernels, runtime_img, inroot, outroot, basearch"/>\n'
            "mkdir images/pxeboot\n"
            "install ${runtime_img} images/install.img\n"
            "%for kernel in kernels:\n"
            "installkernel images-${basearch} ${kernel.path} images/pxeboot/vmlinuz\n"
            "installinitrd images-${basearch} ${kernel.initrd.path} images/pxeboot/initrd.img\n"
            "installupgradeinitrd images-${basearch} ${kernel.initrd.path} images/pxeboot/upgrade.img\n"
            "%endfor\n"
            "%if exists('usr/share/lorax/product'):\n"
            "installimg --gzip -6 usr/share/lorax/product/ images/product.img\n"
            "%endif\n"
            "installimg usr/share/lorax/updates/ images/updates.img\n"
            "append /inroot.txt '${inroot}'\n"
        ),
    )
    runner = TemplateRunner(tree=out, inroot=inroot, templatedir=tdir, variables=sample_variables())
    runner.run(tdir / "a.tmpl")
    assert (out / "images/pxeboot/vmlinuz").read_text() == "K"
    assert (out / "images/pxeboot/initrd.img").read_text() == "I"
    assert stat.S_IMODE((out / "images/pxeboot/upgrade.img").stat().st_mode) == 0o644
    assert (out / "images/install.img").read_text() == "S"
    assert (out / "inroot.txt").read_text() == f"{inroot}\n"
    assert runner.treeinfo["images-x86_64"] == {
        "kernel": "images/pxeboot/vmlinuz",
        "initrd": "images/pxeboot/initrd.img",
        "upgrade": "images/pxeboot/upgrade.img",
    }
    assert not (out / "images/updates.img").exists()  # lorax: a missing SRCDIR makes no image
    import gzip

    from composer.images.cpio import read_newc

    raw = out / "raw.cpio"
    raw.write_bytes(gzip.decompress((out / "images/product.img").read_bytes()))
    names = [m.name for seg in read_newc(raw) for m in seg.members]
    assert ".buildstamp" in names


def test_runcmd_on_host_runs_in_tree(env):
    env.run("runcmd touch made-here\nruncmd sh -c 'echo hi > out'\n")
    assert (env.tree / "made-here").exists()
    assert (env.tree / "out").read_text() == "hi\n"


def test_runcmd_failure_names_line_and_dash_ignores(env):
    with pytest.raises(TemplateError, match=r"t.tmpl:2: runcmd: command failed \(exit 3\)"):
        env.run("log x\nruncmd sh -c 'exit 3'\n")
    env.run("-runcmd sh -c 'exit 3'\nmkdir /after\n")
    assert (env.tree / "after").is_dir()


def test_runcmd_chroot_and_systemctl_argv(env, monkeypatch):
    calls = []
    record = lambda argv, **kw: calls.append((list(argv), kw))  # noqa: E731
    for where in ("composer.templates.runner.run", "composer.run.run"):  # systemctl: run.systemctl_each
        monkeypatch.setattr(where, record)
    env.run("runcmd --chroot /usr/bin/depmod -a\nsystemctl enable a.service b.socket\nsystemctl set-default multi-user.target\n")
    tree = os.path.abspath(env.tree)
    assert calls[0][0][:4] == ["bwrap", "--bind", tree, "/"]
    assert "--die-with-parent" in calls[0][0]
    assert calls[0][0][-3:] == ["--", "/usr/bin/depmod", "-a"]
    # lorax: one unit at a time, so that a missing unit does not stop the others
    assert calls[1][0] == ["systemctl", f"--root={tree}", "--quiet", "enable", "a.service"]
    assert calls[2][0] == ["systemctl", f"--root={tree}", "--quiet", "enable", "b.socket"]
    assert calls[3][0][-2:] == ["set-default", "multi-user.target"]


def test_systemctl_goes_on_for_a_missing_unit(env, monkeypatch, capsys):
    calls = []

    def fake(argv, **kw):
        calls.append(argv[-1])
        if argv[-1] == "missing.service":
            raise ComposerError("command failed (exit 1): Unit missing.service does not exist")

    monkeypatch.setattr("composer.run.run", fake)  # systemctl: run.systemctl_each
    env.run("systemctl enable missing.service present.service\nsystemctl disable\nmkdir /after\n")
    assert calls == ["missing.service", "present.service"]
    assert (env.tree / "after").is_dir()
    assert "systemctl enable missing.service: failed, going on" in capsys.readouterr().err


@pytest.mark.parametrize(
    "line",
    ["systemctl start x.service", "systemctl", "systemctl set-default a.target b.target", "runcmd", "runcmd --chroot"],
)
def test_systemctl_runcmd_usage(env, line):
    with pytest.raises(TemplateError, match="t.tmpl:1: .*wrong arguments"):
        env.run(line + "\n")


def test_log_and_treeinfo(env, capsys):
    env.run(
        "log hello  world\ntreeinfo stage2 mainimage images/install.img\ntreeinfo general name Test 1\ntreeinfo general empty\n"
    )
    assert "hello world" in capsys.readouterr().err
    assert env.runner.treeinfo == {
        "stage2": {"mainimage": "images/install.img"},
        "general": {"name": "Test 1", "empty": ""},
    }  # lorax: VALUE is optional


def test_installkernel_to_outroot(env, tmp_path):
    write(env.tree / "usr/lib/modules/6.1.0/vmlinuz", "K")
    write(env.tree / "boot/initramfs-6.1.0.img", "I")
    env.runner.inroot, env.runner.tree = env.tree, tmp_path / "out"
    env.run(
        "installkernel images-x86_64 /usr/lib/modules/*/vmlinuz /images/pxeboot/vmlinuz\n"
        "installinitrd images-x86_64 /boot/initramfs-*.img images/pxeboot/initrd.img\n"
    )
    assert (tmp_path / "out/images/pxeboot/vmlinuz").read_text() == "K"
    assert (tmp_path / "out/images/pxeboot/initrd.img").read_text() == "I"
    assert env.runner.treeinfo["images-x86_64"] == {"kernel": "images/pxeboot/vmlinuz", "initrd": "images/pxeboot/initrd.img"}


# ------------------------------------------------------------------ package commands


def test_installpkg_options_and_transaction(env):
    env.run(
        "installpkg kernel kernel-modules-{core,extra}\n"
        "installpkg --optional --except kernel-debug* --except *-devel anaconda\n"
        "installpkg --required foo\n"
        "run_pkg_transaction\n"
    )
    assert env.pm.installs == [
        (["kernel", "kernel-modules-core", "kernel-modules-extra"], True, []),
        (["anaconda"], False, ["kernel-debug*", "*-devel"]),
        (["foo"], True, []),
    ]
    assert env.pm.transactions == 1


@pytest.mark.parametrize("line", ["installpkg", "installpkg --optional", "installpkg --except", "installpkg --bogus x"])
def test_installpkg_usage(env, line):
    with pytest.raises(TemplateError, match="wrong arguments"):
        env.run(line + "\n")


def test_required_missing_package_error_propagates(env):
    class Strict(FakePM):
        def install(self, patterns, *, required, exclude=()):
            if required:
                raise ComposerError(f"no package matches {patterns[0]}")

    env.runner.pkgmgr = Strict()
    with pytest.raises(TemplateError, match="t.tmpl:1: installpkg: no package matches nosuch"):
        env.run("installpkg nosuch\n")
    env.run("installpkg --optional nosuch\n")


def test_removepkg_deletes_files_keeps_shared_dirs(env):
    files = ["/usr/share/doc/foo", "/usr/share/doc/foo/README", "/usr/bin/foo", "/usr/share/shared"]
    for f in ("usr/share/doc/foo/README", "usr/bin/foo", "usr/share/shared/other-package-file", "usr/bin/bar"):
        write(env.tree / f)
    env.pm.packages = {"foo": files, "foo-libs": [], "bar": ["/usr/bin/bar"]}
    env.run("removepkg foo nomatch*\n")
    assert not (env.tree / "usr/bin/foo").exists()
    assert not (env.tree / "usr/share/doc/foo").exists()  # emptied, so removed
    assert (env.tree / "usr/share/shared/other-package-file").exists()  # not empty, kept
    assert (env.tree / "usr/bin/bar").exists()
    assert "foo" in env.pm.installed()  # rpmdb entry stays


def test_removefrom(env):
    for f in ("usr/share/locale/de/a.mo", "usr/share/locale/en/a.mo", "usr/bin/gc"):
        write(env.tree / f)
    env.pm.packages = {
        "glibc-common": ["/usr/share/locale/de/a.mo", "/usr/share/locale/en/a.mo", "/usr/bin/gc"],
    }
    env.run("removefrom glibc-* /usr/share/locale/de/*\n")
    assert not (env.tree / "usr/share/locale/de/a.mo").exists()
    assert (env.tree / "usr/share/locale/en/a.mo").exists()
    env.run("removefrom glibc-common --allbut /usr/bin/*\n")
    assert not (env.tree / "usr/share/locale/en/a.mo").exists()
    assert (env.tree / "usr/bin/gc").exists()


@pytest.mark.parametrize("line", ["removefrom pkg", "removefrom pkg --allbut", "removefrom --allbut x", "removepkg"])
def test_removefrom_usage(env, line):
    with pytest.raises(TemplateError, match="wrong arguments"):
        env.run(line + "\n")


def test_package_command_without_pkgmgr(env):
    env.runner.pkgmgr = None
    with pytest.raises(TemplateError, match="t.tmpl:1: installpkg: no package manager"):
        env.run("installpkg x\n")


def test_removekmod(env):
    base = env.tree / "usr/lib/modules/6.1.0/kernel"
    mods = [
        "sound/core/snd.ko.xz",
        "drivers/media/usb/uvc.ko.xz",
        "drivers/char/ipmi/ipmi_si.ko.xz",
        "drivers/char/virtio_console.ko.zst",
        "drivers/char/lp.ko",
        "drivers/block/floppy.ko.xz",
        "drivers/block/virtio_blk.ko.xz",
        "fs/btrfs/btrfs.ko.xz",
    ]
    for m in mods:
        write(base / m)
    write(env.tree / "usr/lib/modules/6.1.0/modules.dep")
    (env.tree / "lib").symlink_to("usr/lib")  # the same modules twice: handled once
    assert not env.runner.kmods_changed
    # lorax: GLOBs are paths below kernel/; a KEEPGLOB keeps any path that contains it
    env.run("removekmod sound drivers/media drivers/block/flop*\nremovekmod drivers/char --allbut virtio_console ipmi\n")
    left = sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())
    assert left == [
        "drivers/block/virtio_blk.ko.xz",
        "drivers/char/ipmi/ipmi_si.ko.xz",
        "drivers/char/virtio_console.ko.zst",
        "fs/btrfs/btrfs.ko.xz",
    ]
    assert not (base / "sound").exists()  # emptied directories go too
    assert env.runner.kmods_changed
    assert (env.tree / "usr/lib/modules/6.1.0/modules.dep").exists()


def test_removekmod_usage(env):
    for line in ("removekmod", "removekmod --allbut x", "removekmod a --allbut"):
        with pytest.raises(TemplateError, match="wrong arguments"):
            env.run(line + "\n")


def test_removekmod_nothing_removed_keeps_flag_false(env):
    env.run("removekmod sound\n")
    assert not env.runner.kmods_changed


# ------------------------------------------------------------------ errors and locations


def test_unknown_command_names_source_line(env):
    # Rendered line numbers differ from source lines here (the %for expands).
    text = "## header\n%for i in range(3):\nmkdir /d${i}\n%endfor\n\nfrobnicate now\n"
    with pytest.raises(TemplateError) as ei:
        env.run(text)
    assert str(ei.value) == f"{env.tdir / 't.tmpl'}:6: unknown command 'frobnicate'"
    assert ei.value.line == 6
    assert not (env.tree / "d0").exists()  # nothing ran: all lines are checked first


def test_lines_from_expressions_and_blocks_map_to_source(env):
    text = "<%\n  a = 1\n%>\n${'mkdir /x\\nmkdir /y'}\nmkdir /z ${'/w\\nbad1'}\nmkdir /v \\\n /u\nbad2\n"
    with pytest.raises(TemplateError, match=r"t.tmpl:5: unknown command 'bad1'"):
        env.run(text)
    with pytest.raises(TemplateError, match=r"t.tmpl:8: unknown command 'bad2'"):
        env.run(text.replace("bad1", "mkdir /q"))


def test_wrong_argument_count(env):
    with pytest.raises(TemplateError, match=r"t.tmpl:2: symlink: wrong arguments; usage: symlink TARGET NAME"):
        env.run("mkdir /a\nsymlink onlyone\n")


def test_dash_does_not_hide_syntax_errors(env):
    with pytest.raises(TemplateError, match="t.tmpl:1: unknown command 'nosuch'"):
        env.run("-nosuch x\n")
    with pytest.raises(TemplateError, match="t.tmpl:1: cannot parse"):
        env.run("-append /f 'unterminated\n")


def test_mako_undefined_variable(env):
    with pytest.raises(TemplateError) as ei:
        env.run("mkdir /a\n\nmkdir /${nosuchvar}\n")
    assert str(ei.value).startswith(f"{env.tdir / 't.tmpl'}:3: undefined variable")
    assert "nosuchvar" in str(ei.value)


def test_mako_syntax_error(env):
    with pytest.raises(TemplateError) as ei:
        env.run("mkdir /a\n%for x in y:\nmkdir /b\n")  # no %endfor
    assert "t.tmpl:" in str(ei.value) and "syntax error" in str(ei.value)
    with pytest.raises(TemplateError, match=r"t.tmpl:2: template syntax error"):
        env.run("mkdir /a\n${ 1 + }\n")


def test_error_in_included_template_names_that_file(env):
    write(env.tdir / "inc.tmpl", "mkdir /inc\n\nbadcmd\n")
    with pytest.raises(TemplateError, match=r"inc.tmpl:3: unknown command 'badcmd'"):
        env.run('mkdir /a\n<%include file="inc.tmpl"/>\n')
    write(env.tdir / "inc.tmpl", "mkdir /inc\nmkdir /${undefined_in_include}\n")
    with pytest.raises(TemplateError, match=r"inc.tmpl:2: undefined variable"):
        env.run('<%include file="inc.tmpl"/>\n')


def test_failing_command_names_line(env):
    text = "mkdir /a\n%if True:\nchmod /missing/* 0644\n%endif\n"
    with pytest.raises(TemplateError, match=r"t.tmpl:3: chmod: no match for /missing/\*"):
        env.run(text)


def test_ignored_failure_is_logged(env, capsys):
    env.run("-chmod /missing 0644\nmkdir /ok\n")
    assert (env.tree / "ok").is_dir()
    assert "ignored failure" in capsys.readouterr().err


def test_missing_template(env):
    with pytest.raises(ComposerError, match="template not found"):
        env.runner.run(env.tdir / "nope.tmpl")


def test_reserved_variable_name(env):
    env.runner.variables = {"loop": "1"}
    with pytest.raises(ComposerError, match="reserved"):
        env.run("log x\n")


# ------------------------------------------------------------------ variables


def test_variables_helpers_and_extra(env):
    write(env.tree / "usr/lib/modules/6.1.0-1/kernel/x.ko")
    write(env.tree / "usr/lib/modules/6.2.0-2/kernel/x.ko")
    write(env.tree / "etc/os-release")
    (env.tree / "lib").symlink_to("usr/lib")
    text = (
        "%for k in kernels:\nmkdir /out/${k}\n%endfor\n"
        "%if exists('/etc/os-*'):\nmkdir /out/has-os-release\n%endif\n"
        "%if not exists('/etc/nothing'):\nmkdir /out/no-nothing\n%endif\n"
        "append /out/globbed '${' '.join(glob('/usr/lib/modules/*'))}'\n"
        "append /out/root '${root}'\n"
        "append /out/vars '${product} ${version}'\n"
    )
    env.run(text)
    assert sorted(p.name for p in (env.tree / "out").iterdir() if p.is_dir()) == [
        "6.1.0-1",
        "6.2.0-2",
        "has-os-release",
        "no-nothing",
    ]
    assert (env.tree / "out/globbed").read_text() == "/usr/lib/modules/6.1.0-1 /usr/lib/modules/6.2.0-2\n"
    assert (env.tree / "out/root").read_text() == f"{env.tree}\n"
    assert (env.tree / "out/vars").read_text() == "Test 1\n"


def test_second_template_with_extra_variables(env):
    env.run("append /first '${product}'\n", name="a.tmpl")
    env.run("append /second '${product} ${extra_var}'\n", name="b.tmpl", extra_var="E", product="Override")
    assert (env.tree / "first").read_text() == "Test\n"
    assert (env.tree / "second").read_text() == "Override E\n"
    # The extra variables belong to that run only.
    with pytest.raises(TemplateError, match="undefined variable"):
        env.run("append /third '${extra_var}'\n", name="c.tmpl")


def test_flag_helper(env):
    env.runner.variables = {"a": "yes", "b": "0", "c": True}
    env.run("%for n in ['a', 'b', 'c', 'd']:\n%if flag(n):\nmkdir /${n}\n%endif\n%endfor\n")
    assert sorted(p.name for p in env.tree.iterdir()) == ["a", "c"]


def test_relative_template_name_uses_templatedir(env):
    write(env.tdir / "rel.tmpl", "mkdir /rel\n")
    env.runner.run(Path("rel.tmpl"))
    assert (env.tree / "rel").is_dir()


# ------------------------------------------------------------------ dry run


def test_dry_run_changes_nothing_and_needs_no_tree(tmp_path):
    tdir = tmp_path / "tmpl"
    write(tdir / "t.tmpl", "mkdir /a\ninstallpkg kernel\nruncmd false\nremove /*\n%for k in kernels:\nbad ${k}\n%endfor\n")
    runner = TemplateRunner(tree=tmp_path / "no-tree", templatedir=tdir, variables={}, dry_run=True)
    runner.run(tdir / "t.tmpl")
    assert not (tmp_path / "no-tree").exists()
    write(tdir / "bad.tmpl", "mkdir /a\nchmod 0644\n")
    with pytest.raises(TemplateError, match="bad.tmpl:2: chmod: wrong arguments"):
        runner.run(tdir / "bad.tmpl")


def _product_templates() -> list[Path]:
    return sorted((REPO / "src/composer/data/templates").glob("*/*.tmpl"))


@pytest.mark.parametrize("template", _product_templates(), ids=lambda p: f"{p.parent.name}/{p.name}")
@pytest.mark.parametrize("basearch", ["x86_64", "aarch64", "ppc64le", "s390x"])
@pytest.mark.parametrize("installer", [None, "0", "1"])
def test_product_templates_render_and_parse(template, basearch, installer, tmp_path):
    variables = sample_variables(basearch)
    if installer is not None:
        variables["installer"] = installer
    runner = TemplateRunner(tree=tmp_path / "tree", templatedir=template.parent, variables=variables, dry_run=True)
    runner.run(template)


def test_fedora_template_set_exists():
    names = {p.name for p in (REPO / "src/composer/data/templates/fedora").glob("*.tmpl")}
    assert {"runtime-install.tmpl", "runtime-postinstall.tmpl", "runtime-cleanup.tmpl"} <= names


def test_fedora_postinstall_runs_on_a_tree(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("composer.templates.runner.run", lambda argv, **kw: calls.append(list(argv)))
    tree = tmp_path / "tree"
    write(tree / "etc/shadow", "root:!locked:19000:0:99999:7:::\nbin:*:19000::::::\n")
    write(tree / "etc/machine-id", "0123456789abcdef0123456789abcdef\n")
    write(tree / "etc/hostname", "old\n")
    tdir = REPO / "src/composer/data/templates/fedora"
    runner = TemplateRunner(tree=tree, templatedir=tdir, variables=sample_variables(), pkgmgr=FakePM())
    runner.run(tdir / "runtime-postinstall.tmpl", {"configdir": runner.stage_config_files()})
    assert (tree / "etc/machine-id").read_bytes() == b""
    assert (tree / "etc/hostname").read_text() == "localhost\n"
    assert (tree / "etc/shadow").read_text().startswith("root::19000:0:")
    assert "Kernel \\r on \\m" in (tree / "etc/issue").read_text()
    assert any(c[-2:] == ["set-default", "multi-user.target"] for c in calls)


def test_fedora_cleanup_runs_on_a_tree(tmp_path, monkeypatch):
    """Run the Fedora cleanup template for real on a small fake tree."""
    tree = tmp_path / "tree"
    for f in (
        "usr/share/doc/bash/README",
        "usr/share/man/man1/ls.1",
        "usr/share/locale/de/LC_MESSAGES/x.mo",
        "usr/share/locale/en_GB/LC_MESSAGES/x.mo",
        "usr/share/locale/locale.alias",
        "usr/share/licenses/bash/COPYING",
        "usr/lib/modules/6.9.0/kernel/sound/snd.ko.xz",
        "usr/lib/modules/6.9.0/kernel/fs/btrfs/btrfs.ko.xz",
        "usr/lib64/python3.13/__pycache__/os.opt-1.pyc",
        "usr/lib64/python3.13/__pycache__/os.cpython-313.pyc",
    ):
        write(tree / f)
    (tree / "usr/lib/modules/6.9.0/build").symlink_to("/usr/src/kernels/6.9.0")
    tdir = REPO / "src/composer/data/templates/fedora"
    runner = TemplateRunner(tree=tree, templatedir=tdir, variables=sample_variables(), pkgmgr=FakePM())
    runner.run(tdir / "runtime-cleanup.tmpl")
    assert not (tree / "usr/share/doc").exists()
    assert not (tree / "usr/share/locale/de").exists()
    assert (tree / "usr/share/locale/en_GB/LC_MESSAGES/x.mo").exists()
    assert (tree / "usr/share/locale/locale.alias").exists()
    assert (tree / "usr/share/licenses/bash/COPYING").exists()
    assert not (tree / "usr/lib/modules/6.9.0/kernel/sound").exists()
    assert (tree / "usr/lib/modules/6.9.0/kernel/fs/btrfs/btrfs.ko.xz").exists()
    assert not os.path.lexists(tree / "usr/lib/modules/6.9.0/build")
    assert not (tree / "usr/lib64/python3.13/__pycache__/os.opt-1.pyc").exists()
    assert (tree / "usr/lib64/python3.13/__pycache__/os.cpython-313.pyc").exists()
    assert runner.kmods_changed


# ------------------------------------------------------------------ real host tools


@pytest.mark.skipif(shutil.which("systemctl") is None, reason="no systemctl on this host")
def test_systemctl_for_real(env):
    write(
        env.tree / "usr/lib/systemd/system/foo.service", "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"
    )
    write(env.tree / "usr/lib/systemd/system/multi-user.target", "[Unit]\nDescription=m\n")
    env.run(
        "systemctl enable foo.service\nsystemctl set-default multi-user.target\n"
        "systemctl mask bar.service\n-systemctl enable nonexist.service\n"
    )
    etc = env.tree / "etc/systemd/system"
    assert os.readlink(etc / "multi-user.target.wants/foo.service") == "/usr/lib/systemd/system/foo.service"
    assert os.readlink(etc / "default.target") == "/usr/lib/systemd/system/multi-user.target"
    assert os.readlink(etc / "bar.service") == "/dev/null"


def _mini_tree(tree: Path, program: str) -> bool:
    """Copy a host program and its libraries into tree; False if that is not possible."""
    exe = shutil.which(program)
    if exe is None or shutil.which("ldd") is None:
        return False
    out = subprocess.run(["ldd", exe], check=False, capture_output=True, text=True).stdout
    for lib in [exe, *re.findall(r"(/\S+)", out)]:
        dest = tree / lib.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.realpath(lib), dest)
    return True


def test_runcmd_chroot_for_real(env):
    if shutil.which("bwrap") is None or not _mini_tree(env.tree, "touch"):
        pytest.skip("no bwrap or ldd")
    touch = shutil.which("touch")
    probe = subprocess.run(["bwrap", "--bind", str(env.tree), "/", "--", touch, "/probe"], check=False, capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"bwrap does not work here: {probe.stderr.decode()[:200]}")
    env.run(f"runcmd --chroot {touch} /made-inside\n")
    assert (env.tree / "made-inside").exists()


# ------------------------------------------------------------------ lorax's language and variables


def test_lorax_page_args_filled(env):
    """<%page args> is filled from the variables, as lorax's template.render(**variables)."""
    env.runner.variables = sample_variables()
    env.run(
        '<%page args="product, arch, basearch, root, inroot, outroot, isolabel, udev, lower, runtime_base"/>\n'
        'append /out "${product.name} ${product.version} ${arch.buildarch} ${arch.bcj} ${basearch}"\n'
        'append /out "${isolabel|udev} ${product.name|lower} ${runtime_base}"\n'
        "append /out '${root == outroot == inroot}'\n"
    )
    assert (env.tree / "out").read_text() == "Fedora 41 x86_64 x86 x86_64\nFedora-41-x86_64 fedora install.img\nTrue\n"


def test_lorax_page_args_missing_is_named(env):
    with pytest.raises(TemplateError, match=r"t.tmpl:2: undefined variable\(s\) in <%page args>: nosuch"):
        env.run('## a comment\n<%page args="root, nosuch"/>\nlog x\n')


def test_lorax_variable_objects():
    v = sample_variables("s390x")
    assert isinstance(v["product"], T.Product) and str(v["product"]) == "Fedora"
    assert (v["arch"].basearch, v["arch"].bcj, v["arch"].libdir) == ("s390x", None, "lib64")
    assert T.Arch.of("i686").basearch == "i386" and T.Arch.of("ppc64le").bcj == "powerpc"
    assert T.udev_escape("Fedora 41 x/y") == "Fedora\\x2041\\x20x\\x2fy"
    assert v["branding"].release == "fedora-release"


def test_lorax_kernels_found_as_lorax_does(tmp_path):
    tree = tmp_path / "tree"
    write(tree / "boot/vmlinuz-6.9.1-200.fc41.x86_64")
    write(tree / "boot/initramfs-6.9.1-200.fc41.x86_64.img")
    write(tree / "boot/upgrade-6.9.1-200.fc41.x86_64.img")
    write(tree / "boot/vmlinuz-6.9.1-200.fc41.x86_64.debug")
    write(tree / "usr/lib/modules/6.1.0-13-amd64/modules.dep")
    (k1, k2, k3) = TemplateRunner(tree=tree, templatedir=tmp_path, variables={})._kernels()
    assert (k1.version, k1.arch, k1.flavor, k1.path) == ("6.1.0-13-amd64", "amd64", None, "boot/vmlinuz-6.1.0-13-amd64")
    assert (k2.path, k2.arch, k2.initrd.path, k2.upgrade.path) == (
        "boot/vmlinuz-6.9.1-200.fc41.x86_64",
        "x86_64",
        "boot/initramfs-6.9.1-200.fc41.x86_64.img",
        "boot/upgrade-6.9.1-200.fc41.x86_64.img",
    )
    assert k3.flavor == "debug" and not hasattr(k3, "initrd") and str(k3) == k3.version


def test_lorax_append_decodes_python_escapes(env):
    env.run("append /f 'a\\tb\\x41 \\u00e9 ü \\m'\n")
    assert (env.tree / "f").read_text() == "a\tbA é ü \\m\n"


def test_lorax_installpkg_version_forms(env):
    env.run("installpkg tmux>=2.8 bash=5.0.0-1 grub2==2.06 a=>1 b=<2 c<3 d>4\n")
    assert env.pm.installs[0][0] == ["tmux >= 2.8", "bash = 5.0.0-1", "grub2 = 2.06", "a >= 1", "b <= 2", "c < 3", "d > 4"]
    for bad in ("installpkg >=2", "installpkg tmux>=", "installpkg a>=1<2", "installpkg a!=1"):
        with pytest.raises(TemplateError, match="t.tmpl:1: installpkg: "):
            env.run(bad + "\n")


def test_lorax_createaddrsize(env):
    write(env.tree / "images/initrd.img", "x" * 1000)
    out = os.path.abspath(env.tree)
    env.run(f"createaddrsize 0x02000000 {out}/images/initrd.img {out}/images/initrd.addrsize\n")
    import struct

    assert struct.unpack(">iiii", (env.tree / "images/initrd.addrsize").read_bytes()) == (0, 0x02000000, 0, 1000)
    with pytest.raises(TemplateError, match="createaddrsize: bad address"):
        env.run("createaddrsize zz images/initrd.img images/a\n")


def test_lorax_runcmd_chdir_refused_and_cwd_is_outroot(env):
    with pytest.raises(TemplateError, match="--chdir is not supported"):
        env.run("runcmd --chdir=/tmp true\n")
    env.run("runcmd sh -c 'pwd > here'\n")
    assert (env.tree / "here").read_text().strip() == os.path.abspath(env.tree)


def test_lorax_pylorax_joinpaths_available(env):
    env.run('<%\nfrom pylorax.sysutils import joinpaths\n%>\nappend /j \'${joinpaths("/a/", "/b", "c")}\'\n')
    assert (env.tree / "j").read_text() == "/a/b/c\n"
