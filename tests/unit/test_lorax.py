"""lorax drop-in: lorax's template sets checked with lorax's variables, lorax's command line."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from composer.cli import main
from composer.cli.lorax import LORAX_DRACUT_DEFAULT, plan_from_argv
from composer.config import Compression, RootfsType
from composer.lorax.check import check_sharedir
from composer.product import template_dir

LORAX_GENERIC = Path("/work/shared/lorax-43.12/99-generic")  # lorax's own templates: test input only
needs_lorax_templates = pytest.mark.skipif(not LORAX_GENERIC.is_dir(), reason=f"no {LORAX_GENERIC}")


@needs_lorax_templates
def test_lorax_43_templates_pass_template_check(capsys):
    assert main(["template-check", "--sharedir", str(LORAX_GENERIC)]) == 0
    out = capsys.readouterr().out
    for name in (
        "runtime-install.tmpl",
        "runtime-postinstall.tmpl",
        "runtime-cleanup.tmpl",
        "x86.tmpl",
        "aarch64.tmpl",
        "ppc64le.tmpl",
        "s390.tmpl",
        "efi.tmpl: through",
        "live/x86.tmpl",
    ):
        assert f"checked: {name}" in out
    assert "no errors" in out


@needs_lorax_templates
def test_template_check_reports_every_error_with_file_and_line(tmp_path, capsys):
    d = tmp_path / "set"
    shutil.copytree(LORAX_GENERIC, d)
    efi = d / "efi.tmpl"  # checked only through x86.tmpl/aarch64.tmpl's include
    efi.write_text(efi.read_text().replace("mkdir ${EFIBOOTDIR}\n", "mkdirx ${EFIBOOTDIR}\n", 1))
    x86 = (d / "x86.tmpl").read_text().splitlines()
    n = next(i for i, line in enumerate(x86) if line.startswith("mkdir images")) + 1
    x86.insert(n, "chmod 0644 images/boot.iso")
    x86.insert(n + 1, "installimg images/x")  # installimg needs SRCDIR and DESTFILE
    (d / "x86.tmpl").write_text("\n".join(x86) + "\n")
    with open(d / "runtime-postinstall.tmpl", "a") as f:
        f.write("systemctl start foo.service\n")
    assert main(["template-check", "--sharedir", str(d)]) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.out.splitlines() if not line.startswith(("checked:", "ok:"))]
    assert errors == [
        f"{efi}:8: unknown command 'mkdirx'",
        (
            f"{d}/runtime-postinstall.tmpl:{len((d / 'runtime-postinstall.tmpl').read_text().splitlines())}: "
            "systemctl: wrong arguments; usage: systemctl enable|disable|mask|unmask|set-default UNIT..."
        ),
        f"{d}/x86.tmpl:{n + 1}: chmod: bad mode 'images/boot.iso': the order is chmod FILEGLOB MODE (lorax's), not MODE FILE",
        f"{d}/x86.tmpl:{n + 2}: installimg: wrong arguments; usage: installimg [--xz|--gzip|--bzip2|--lzma] [-ARG]..."
        " SRCDIR DESTFILE",
    ]
    assert captured.err.strip().splitlines()[-1].startswith("composer: error: --sharedir")


def test_template_check_sharedir_page_args(tmp_path):
    d = tmp_path / "set"
    d.mkdir()
    (d / "runtime-install.tmpl").write_text(
        '<%page args="product, root, branding, nothere"/>\ninstallpkg ${product.name}-release\n'
    )
    (d / "x86.tmpl").write_text(
        '<%page args="kernels, inroot, outroot, isolabel, udev"/>\n'
        "%for kernel in kernels:\ninstallkernel images-x86_64 ${kernel.path} images/vmlinuz\n%endfor\n"
    )
    r = check_sharedir(d)
    assert r.errors == [f"{d}/runtime-install.tmpl:1: undefined variable(s) in <%page args>: nothere"]


def test_template_check_sharedir_missing(tmp_path, capsys):
    assert main(["template-check", "--sharedir", str(tmp_path / "none")]) == 1
    assert "--sharedir" in capsys.readouterr().err


# ------------------------------------------------------------------ lorax's command line


def pungi_argv(tmp_path: Path, rootfs_type: str) -> list[str]:
    """The argv of Pungi's LoraxWrapper.get_lorax_cmd for a Server/x86_64 compose (issue 11)."""
    logs = tmp_path / "logs/x86_64/buildinstall-Server-logs"
    logs.mkdir(parents=True, exist_ok=True)
    conf = logs / "lorax.conf"
    conf.write_text("[lorax]\nsharedir = %s\n[compression]\ntype = xz\nbcj = on\n" % (tmp_path / "share"))
    (tmp_path / "share/templates.d/99-generic").mkdir(parents=True, exist_ok=True)
    extra = tmp_path / "extra-runtime.tmpl"
    return [
        "--product=Fedora",
        "--version=43",
        "--release=43",
        f"--source=file://{tmp_path}/work/x86_64/repo/p1",
        f"--source=file://{tmp_path}/work/x86_64/comps_repo_Server",
        "--variant=Server",
        "--bugurl=https://bugzilla.redhat.com",
        "--nomacboot",
        "--noupgrade",
        "--isfinal",
        "--buildarch=x86_64",
        "--volid=Fedora-S-dvd-x86_64-43",
        "--installpkgs=fedora-release-server",
        f"--add-template={extra}",
        f"--add-arch-template={tmp_path}/extra-arch.tmpl",
        "--add-template-var=ostree_osname=fedora",
        "--add-arch-template-var=ksmedia=ks.cfg",
        f"--logfile={logs}/lorax.log",
        "--rootfs-size=3",
        "--dracut-arg=--xz",
        "--dracut-arg=--install",
        "--dracut-arg=/.buildstamp",
        "--skip-branding",
        "--squashfs-only",
        "--config",
        str(conf),
        str(tmp_path / "work/x86_64/buildinstall/Server"),
        f"--rootfs-type={rootfs_type}",
    ]


@pytest.mark.parametrize(
    "rootfs_type,expected",
    [
        ("squashfs", RootfsType.SQUASHFS),
        ("squashfs-ext4", RootfsType.EXT4),
        ("erofs", RootfsType.EROFS),
        ("erofs-ext4", RootfsType.EXT4),
    ],
)
def test_pungi_argv_is_accepted(tmp_path, rootfs_type, expected):
    plan = plan_from_argv(pungi_argv(tmp_path, rootfs_type))
    cfg = plan.config
    assert cfg.outdir == tmp_path / "work/x86_64/buildinstall/Server"  # --config FILE does not shift OUTPUTDIR
    assert (cfg.product, cfg.version, cfg.release, cfg.variant, cfg.isfinal) == ("Fedora", "43", "43", "Server", True)
    assert cfg.bugurl == "https://bugzilla.redhat.com" and cfg.arch == "x86_64"
    assert cfg.sources == (f"file://{tmp_path}/work/x86_64/repo/p1", f"file://{tmp_path}/work/x86_64/comps_repo_Server")
    assert cfg.rootfs_type is expected
    assert cfg.rootfs_size == 3 << 30  # GiB, as lorax
    assert cfg.dracut_args == ("--xz", "--install", "/.buildstamp")  # replaces the defaults
    assert cfg.installpkgs == ("fedora-release-server",)
    assert cfg.add_templates == (tmp_path / "extra-runtime.tmpl",)
    assert cfg.add_template_vars == (("ostree_osname", "fedora"),)
    assert plan.arch_template_vars == (("ksmedia", "ks.cfg"),)
    assert plan.volid == "Fedora-S-dvd-x86_64-43"
    assert plan.templatedir == tmp_path / "share/templates.d/99-generic"  # lorax.conf sharedir, templates.d rule
    assert plan.logfile == tmp_path / "logs/x86_64/buildinstall-Server-logs/lorax.log"
    assert (plan.domacboot, plan.doupgrade, plan.skip_branding) == (False, False, True)
    assert not cfg.branding  # --skip-branding
    assert cfg.compression is Compression.XZ
    assert not any("squashfs-only" in w for w in plan.warnings)  # lorax ignores it too
    assert plan.lorax_rootfs_type == rootfs_type


def test_lorax_defaults_and_units(tmp_path):
    plan = plan_from_argv(["-p", "Test", "-v", "1", "-r", "1", "-s", "file:///repo", str(tmp_path / "out")])
    cfg = plan.config
    assert cfg.rootfs_type is RootfsType.SQUASHFS and cfg.rootfs_size == 3 << 30
    assert cfg.dracut_args == LORAX_DRACUT_DEFAULT
    assert cfg.bugurl == "your distribution provided bug reporting tool"
    assert (plan.domacboot, plan.doupgrade) == (False, True)
    assert plan.logfile == Path("./lorax.log").resolve()
    assert cfg.workdir == Path("/var/tmp/lorax")
    assert cfg.branding and not any("branding" in w for w in plan.warnings)  # lorax's default, honoured


def test_lorax_default_tmp_falls_back_to_var_tmp_when_not_ours(tmp_path, monkeypatch):
    """lorax's /var/tmp/lorax, unless it is there and composer may not write it (root's, and
    composer runs as a user): then /var/tmp, where the work directory gets a fresh name."""
    import composer.cli.options as options

    argv = ["-p", "Test", "-v", "1", "-r", "1", "-s", "file:///repo", str(tmp_path / "out")]
    mine = tmp_path / "lorax"
    monkeypatch.setattr(options, "LORAX_TMP", str(mine))
    assert plan_from_argv(argv).config.workdir == mine  # not there yet: composer makes it
    mine.mkdir()
    assert plan_from_argv(argv).config.workdir == mine
    # os.access is root's answer here (always yes): a user's answer for a directory of root's
    monkeypatch.setattr(options.os, "access", lambda path, mode: Path(path) != mine)
    assert plan_from_argv(argv).config.workdir == tmp_path
    assert plan_from_argv([*argv[:-1], "--tmp", str(mine), argv[-1]]).config.workdir == mine  # asked for: as given


def test_lorax_dracut_arg_with_separate_value_and_btrfs(tmp_path):
    plan = plan_from_argv(
        [
            "-p",
            "T",
            "-v",
            "1",
            "-r",
            "1",
            "-s",
            "file:///r",
            "--dracut-arg",
            "--xz",
            "--dracut-arg",
            "--add",
            "--dracut-arg",
            "dmsquash-live",
            "--rootfs-type",
            "btrfs",
            "--rootfs-size",
            "1",
            str(tmp_path / "o"),
        ]
    )
    assert plan.config.dracut_args == ("--xz", "--add", "dmsquash-live")
    assert plan.config.rootfs_type is RootfsType.BTRFS and plan.config.rootfs_size == 1 << 30


def test_lorax_options_composer_cannot_honour_are_named(tmp_path):
    conf = tmp_path / "lorax.conf"
    conf.write_text("[compression.erofs]\ntype = zstd\n[output]\nignorelist = /x\n")
    plan = plan_from_argv(
        [
            "-p",
            "T",
            "-v",
            "1",
            "-r",
            "1",
            "-s",
            "file:///r",
            "-m",
            "http://mirror",
            "--proxy",
            "h:3128",
            "--enablerepo",
            "a",
            "--disablerepo",
            "b",
            "--noverifyssl",
            "--dnfplugin",
            "x",
            "--macboot",
            "--noverify",
            "--tmp",
            str(tmp_path / "t"),
            "--workdir",
            str(tmp_path / "w"),
            "-c",
            str(conf),
            "--cachedir",
            str(tmp_path / "c"),
            "--force",
            str(tmp_path / "o"),
        ]
    )
    text = "; ".join(plan.warnings)
    for name in ("--dnfplugin", "--macboot", "--noverify", "[compression.erofs] type", "[output] ignorelist"):
        assert name in text
    assert plan.config.workdir == tmp_path / "w" and plan.config.cachedir == tmp_path / "c" and plan.config.force
    # The repository options are honoured (dnf's own options), so not warned about.
    for name in ("--mirrorlist", "--proxy", "--enablerepo", "--disablerepo", "--noverifyssl"):
        assert name not in text
    cfg = plan.config
    assert cfg.mirrorlists == ("http://mirror",) and cfg.proxy == "http://h:3128" and not cfg.sslverify
    assert (cfg.enablerepos, cfg.disablerepos) == (("a",), ("b",))


def test_lorax_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        plan_from_argv(["-p", "T", "-v", "1", str(tmp_path / "o")])  # -r is required, as in lorax
    assert e.value.code == 2
    assert "composer lorax: error: the following arguments are required: -r/--release" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        plan_from_argv(["-p", "T", "-v", "1", "-r", "1", "--rootfs-type", "ext2", str(tmp_path / "o")])
    from composer.run import ComposerError

    with pytest.raises(ComposerError, match="--source, --mirrorlist or --repo"):
        plan_from_argv(["-p", "T", "-v", "1", "-r", "1", str(tmp_path / "o")])
    with pytest.raises(ComposerError, match="--config .*: no such file"):
        plan_from_argv(["-p", "T", "-v", "1", "-r", "1", "-s", "x", "-c", str(tmp_path / "none"), str(tmp_path / "o")])


def test_composer_lorax_subcommand_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["lorax", "-V"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("lorax-")


def test_lorax_console_entry_point_is_opt_in():
    import importlib
    import tomllib

    root = Path(__file__).resolve().parents[2]
    main_proj = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert "lorax" not in main_proj["scripts"]  # never on PATH by accident
    assert main_proj["optional-dependencies"]["lorax"] == ["composer-lorax"]
    extra = tomllib.loads((root / "extras/lorax/pyproject.toml").read_text())["project"]
    module, func = extra["scripts"]["lorax"].split(":")
    assert callable(getattr(importlib.import_module(module), func))


def test_buildstamp_and_pkglists_written_by_a_template(tmp_path, monkeypatch):
    from composer.pipelines.lorax import buildstamp_text, lorax_runtime_template
    from composer.templates import TemplateRunner

    cfg = plan_from_argv(
        [
            "-p",
            "Fedora",
            "-v",
            "43",
            "-r",
            "43",
            "-s",
            "x",
            "-t",
            "Server",
            "--isfinal",
            "-b",
            "https://bugs.example.com/?a=${x}&b='x'\\y",
            "--buildarch",
            "x86_64",
            str(tmp_path / "o"),
        ]
    ).config
    text = buildstamp_text(cfg, now=1700000000)
    assert text == (
        "[Main]\nProduct=Fedora\nVersion=43\nBugURL=https://bugs.example.com/?a=${x}&b='x'\\y\nIsFinal=True\n"
        "UUID=202311142213.x86_64\nVariant=Server\n[Compose]\nLorax=" + text.rsplit("=", 1)[1]
    )
    tmpl = lorax_runtime_template(tmp_path, text, tmp_path / "logs/pkglists")
    tree = tmp_path / "tree"
    tree.mkdir()
    calls = []
    monkeypatch.setattr("composer.templates.runner.run", lambda argv, **kw: calls.append(list(argv)))
    TemplateRunner(tree=tree, templatedir=tmp_path, variables={}).run(tmpl)
    assert (tree / ".buildstamp").read_text() == text
    assert calls[0][-2:] == ["packages-log", str(tree)]  # /root/lorax-packages.log, runcmd on the host
    assert calls[1][-3:] == ["pkglists", str(tree), str(tmp_path / "logs/pkglists")]


def test_derived_logs(tmp_path):
    from composer.lorax.logs import derive_logs, error_lines

    text = "[    0.1s] install ...\n$ dnf -y install a\n'\n[    0.2s] done\n"
    text += error_lines("dnf transaction failed: Problem: nothing provides libfoo")
    dnf_logs = tmp_path / "private"
    dnf_logs.mkdir()
    (dnf_logs / "dnf.log").write_text("dnf says\n")
    derive_logs(tmp_path, text, dnf_logs)
    assert "Dependency check failed: dnf transaction failed" in (tmp_path / "pylorax.log").read_text()
    assert "ERROR: dnf transaction failed" in (tmp_path / "pylorax.log").read_text()
    assert (tmp_path / "program.log").read_text() == "$ dnf -y install a\n'\n"
    assert (tmp_path / "dnf.log").read_text() == "dnf says\n"


def test_derived_logs_replace_planted_links(tmp_path):
    """A link planted at pylorax.log, program.log or dnf.log (or in pkglists/) is replaced,
    never written through; a pkglists/ that is a link is refused."""
    from composer.lorax.logs import derive_logs, write_pkglists

    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    for name in ("pylorax.log", "program.log", "dnf.log"):
        (logs / name).symlink_to(victim)
    dnf_logs = tmp_path / "private"
    dnf_logs.mkdir()
    (dnf_logs / "dnf.log").write_text("dnf says\n")
    derive_logs(logs, "$ true\n", dnf_logs)
    assert victim.read_text() == "root's file\n"
    assert not any((logs / n).is_symlink() for n in ("pylorax.log", "program.log", "dnf.log"))
    assert (logs / "program.log").read_text() == "$ true\n"
    assert sorted(p.name for p in logs.iterdir()) == ["dnf.log", "program.log", "pylorax.log"]  # no temp names left
    (logs / "pkglists").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(SystemExit, match="pkglists: .*pkglists: not a directory"):
        write_pkglists(tmp_path / "no-tree", logs / "pkglists")
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_tmp_through_links(tmp_path):
    """--tmp resolved as a user has it (a link to a directory of root's or one's own works);
    one leading into a directory another user controls is refused."""
    from composer.cli.common import trusted_dir
    from composer.run import ComposerError

    real = tmp_path / "volume"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert trusted_dir(tmp_path / "link" / "lorax", "--tmp") == real / "lorax"
    if os.geteuid() != 0:
        pytest.skip("needs root to make a directory of another user's")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    os.chown(foreign, 65534, 65534)
    (tmp_path / "planted").symlink_to(foreign)
    with pytest.raises(ComposerError, match=r"--tmp .*/planted \(leads to .*/foreign\): .*/foreign belongs to "):
        trusted_dir(tmp_path / "planted", "--tmp")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ComposerError, match="is writable by other users"):
        trusted_dir(shared / "lorax", "--tmp")
    shared.chmod(0o1777)  # sticky, as /var/tmp: others cannot rename what composer makes there
    assert trusted_dir(shared / "lorax", "--tmp") == shared / "lorax"


def test_preflight_renders_page_args_of_composer_sets(tmp_path):
    """composer's own sets declare <%page args> (configdir...): the pre-build check fills them."""
    from composer.config import Config
    from composer.preflight import check_command_templates

    root = Path(__file__).resolve().parents[2]
    for product, templatedir in (
        ("Fedora", None),
        ("TestProduct", None),
        ("TestProduct", root / "tools/testproduct/lorax-templates"),
    ):
        cfg = Config(product=product, version="1", outdir=tmp_path / "o", arch="x86_64", templatedir=templatedir)
        d = template_dir(cfg)
        check_command_templates(
            cfg, [(d / n, "") for n in ("runtime-install.tmpl", "runtime-postinstall.tmpl", "runtime-cleanup.tmpl")]
        )


def test_testproduct_lorax_set_passes_template_check(capsys):
    root = Path(__file__).resolve().parents[2]
    assert main(["template-check", "--sharedir", str(root / "tools/testproduct/lorax-templates")]) == 0
    assert "checked: x86.tmpl: arch template (x86_64)" in capsys.readouterr().out
    from composer.pipelines.lorax import lorax_media_mode

    assert lorax_media_mode(root / "tools/testproduct/lorax-templates", "x86_64")
    assert not lorax_media_mode(root / "src/composer/data/templates/testproduct", "x86_64")


@pytest.mark.skipif(
    not all(shutil.which(t) for t in ("grub-mkimage", "xorrisofs", "mkfs.fat", "mcopy", "implantisomd5"))
    or not Path("/usr/lib/grub/i386-pc/kernel.img").is_file(),
    reason="host boot tools missing",
)
def test_lorax_media_from_the_arch_template(tmp_path):
    """The test product's x86.tmpl makes the media as lorax's does (runcmd with host tools),
    on a stand-in runtime: kernel, initramfs and runtime image are placeholders."""
    from dataclasses import dataclass as dc

    import productmd.treeinfo

    from composer.pipelines.lorax import make_lorax_media

    root = Path(__file__).resolve().parents[2]
    conf = tmp_path / "lorax.conf"
    conf.write_text(f"[lorax]\nsharedir = {root}/tools/testproduct/lorax-templates\n")
    (tmp_path / "arch.tmpl").write_text('<%page args="ksmedia"/>\nappend /ks-name.txt "${ksmedia}"\n')
    plan = plan_from_argv(
        [
            "-p",
            "TestProduct",
            "-v",
            "1",
            "-r",
            "1",
            "-s",
            "file:///r",
            "--buildarch",
            "x86_64",
            "--volid",
            "TestProduct-S-1",
            "--variant",  # as Pungi gives it: productmd reads lorax's .treeinfo without one for Fedora only
            "Server",
            "-c",
            str(conf),
            "--add-arch-template",
            str(tmp_path / "arch.tmpl"),
            "--add-arch-template-var",
            "ksmedia=ks.cfg",
            str(tmp_path / "out"),
        ]
    )
    import dataclasses

    cfg = dataclasses.replace(plan.config, templatedir=plan.templatedir)
    tree = tmp_path / "tree"
    shutil.copytree(root / "tools/testproduct/lorax-templates/config_files", tree / "tmp/config_files")
    files = {name: tmp_path / name for name in ("vmlinuz", "initramfs", "squashfs.img")}
    for p in files.values():
        p.write_bytes(b"x" * 4096)

    @dc
    class K:
        version: str
        vmlinuz: Path

    @dc
    class RT:
        tree: Path
        kernels: list
        initramfs: dict
        squashfs: Path

    rt = RT(tree, [K("6.1.0-56-amd64", files["vmlinuz"])], {"6.1.0-56-amd64": files["initramfs"]}, files["squashfs.img"])
    out = tmp_path / "out"
    out.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    make_lorax_media(cfg, plan, rt, tree, out, work, "TestProduct-S-1")
    for rel in (
        "images/boot.iso",
        "images/install.img",
        "images/efiboot.img",
        "images/eltorito.img",
        "images/pxeboot/vmlinuz",
        "images/pxeboot/initrd.img",
        "EFI/BOOT/BOOTX64.EFI",
        "EFI/BOOT/grub.cfg",
        "boot/grub2/grub.cfg",
        ".discinfo",
        ".treeinfo",
        "ks-name.txt",
    ):
        assert (out / rel).is_file(), rel
    assert "root=live:CDLABEL=TestProduct-S-1 rd.live.image" in (out / "EFI/BOOT/grub.cfg").read_text()
    ti = productmd.treeinfo.TreeInfo()
    ti.load(str(out / ".treeinfo"))
    assert ti.images.images["xen"] == {"kernel": "images/pxeboot/vmlinuz", "initrd": "images/pxeboot/initrd.img"}
    assert ti.images.images["x86_64"]["eltorito.img"] == "images/eltorito.img"
    assert ti.stage2.mainimage == "images/install.img"
    report = subprocess.run(
        ["xorriso", "-indev", str(out / "images/boot.iso"), "-report_el_torito", "plain"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    from tests.isoread import el_torito_platforms

    assert el_torito_platforms(report) == ["BIOS", "UEFI"], report
