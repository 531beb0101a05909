"""`composer lorax` (and the optional `lorax` command): what runs a lorax command line.

composer.cli.lorax parses lorax's argv into a LoraxPlan; this module builds it: the
runtime with lorax's runtime template added (/.buildstamp, pkglists/), then the media by
the template set's arch template (lorax's TreeBuilder) or, for composer's own template
sets, boot-iso's media stage; and lorax's log files beside --logfile however the build
ends. Errors are raised, not printed: composer.cli makes one line of them.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from composer import __version__
from composer.config import Config
from composer.dracut import find_kernels
from composer.images.iso import VOLID_MAX, check_volid, default_volid
from composer.images.sparse import copy_sparse
from composer.lorax import logs as loraxlogs
from composer.lorax.check import check_sharedir
from composer.lorax.logs import derive_logs, error_lines, read_log
from composer.lorax.moduleinfo import write_module_info
from composer.outputs.media import copy_file
from composer.outputs.treeinfo import write_lorax_discinfo, write_lorax_treeinfo
from composer.pipelines import compose as pipeline
from composer.pipelines.bootiso import EFI_ARCH_NAMES, MediaOptions, compose_boot_iso
from composer.pipelines.compose import Runtime
from composer.pipelines.runtime import compose_dirs
from composer.preflight import check_compose_inputs, check_dir_creatable, check_outputs_apart
from composer.product import template_dir
from composer.run import ComposerError, debug, info, run, set_logging
from composer.templates import Arch, Product, TemplateRunner, lorax_variables

__all__ = ["LoraxPlan", "compose_lorax", "run_plan"]


@dataclass(frozen=True)
class LoraxPlan:
    """A lorax command line as a composer build: the Config, the media options, the
    lorax variables composer passes to the templates, and what it could not honour."""

    config: Config
    volid: str | None
    arch_templates: tuple[Path, ...]
    arch_template_vars: tuple[tuple[str, str], ...]
    templatedir: Path | None
    logfile: Path
    domacboot: bool
    doupgrade: bool
    skip_branding: bool
    lorax_rootfs_type: str
    warnings: tuple[str, ...]


def buildstamp_text(cfg: Config, *, now: int | None = None, lorax_version: str = __version__) -> str:
    """lorax's /.buildstamp (what anaconda reads; --isfinal and --bugurl change it): an
    ini file with [Main] Product, Version, BugURL, IsFinal, UUID (build time + arch),
    Variant when given, and [Compose] Lorax."""
    when = cfg.source_date_epoch if cfg.source_date_epoch is not None else (now if now is not None else int(time.time()))
    stamp = datetime.datetime.fromtimestamp(when, datetime.UTC).strftime("%Y%m%d%H%M")
    lines = [
        "[Main]",
        f"Product={cfg.product}",
        f"Version={cfg.version}",
        f"BugURL={cfg.bugurl}",
        f"IsFinal={cfg.isfinal}",
        f"UUID={stamp}.{cfg.arch}",
    ]
    if cfg.variant:
        lines.append(f"Variant={cfg.variant}")
    lines += ["[Compose]", f"Lorax={lorax_version}"]
    return "\n".join(lines) + "\n"


def lorax_runtime_template(directory: Path, buildstamp: str, pkglists: Path | None) -> Path:
    """The template composer lorax adds to the runtime templates: it writes /.buildstamp
    (before dracut, so that lorax's `--dracut-arg --install --dracut-arg /.buildstamp`
    finds it) and, with runcmd on the host as lorax's templates do, /root/lorax-packages.log
    and pkglists/ from the rpm database before the cleanup template removes it. The values are baked into the
    text (not variables: those are part of the install stage's cache key) inside
    <%text>, so that Mako leaves them alone."""
    escaped = buildstamp.rstrip("\n").replace("\\", "\\\\").replace("\n", "\\n")  # append decodes escapes
    lines = ["-remove /.buildstamp", f"append /.buildstamp {shlex.quote(escaped)}"]
    script = [sys.executable, str(Path(loraxlogs.__file__).resolve())]
    lines.append(f"runcmd {' '.join(shlex.quote(a) for a in script)} packages-log ${{root}}")
    if pkglists is not None:
        argv = [*script, "pkglists"]
        lines.append(f"runcmd {' '.join(shlex.quote(a) for a in argv)} ${{root}} {shlex.quote(str(pkglists))}")
    for line in lines:
        if "</%text>" in line or any(ord(c) < 32 for c in line):
            raise ComposerError(f"lorax: cannot write /.buildstamp with {line!r}")
    tmpl = directory / "lorax-runtime.tmpl"
    tmpl.write_text(
        "## composer lorax: what lorax adds to the runtime (/.buildstamp, pkglists/)\n"
        + lines[0]
        + "\n<%text>"
        + lines[1]
        + "</%text>\n"
        + "".join(f"{x}\n" for x in lines[2:])
    )
    return tmpl


# lorax's arch template per base architecture (treebuilder's templatemap)
ARCH_TEMPLATE = {"x86_64": "x86.tmpl", "aarch64": "aarch64.tmpl", "ppc64le": "ppc64le.tmpl", "s390x": "s390.tmpl"}


def lorax_media_mode(templatedir: Path, basearch: str) -> bool:
    """A lorax template set makes the media with its arch template (x86.tmpl...); composer's
    own sets have boot menus (grub2-efi.cfg) that composer's media stage fills instead."""
    return (templatedir / ARCH_TEMPLATE.get(basearch, "x86.tmpl")).is_file() and not (templatedir / "grub2-efi.cfg").is_file()


# What lorax adds to the dracut arguments of the media's initramfs (pylorax.Lorax.run's
# anaconda_args), after the defaults or the user's --dracut-arg.
LORAX_ANACONDA_DRACUT = ("--add", "anaconda pollcdrom qemu qemu-net prefixdevname-tools")


def build_lorax_runtime(cfg: Config, work: Path, logdir: Path | None = None) -> tuple[Runtime, Path]:
    """lorax's run: install, postinstall, then the install root backed up (lorax's
    `linktree`, hard links) before the cleanup; dracut runs in that copy with lorax's
    anaconda arguments, and the arch templates read it (TreeBuilder's inroot). With
    logdir: lorax's original-pkgsizes.txt and final-pkgsizes.txt there (composer's
    "original" is after the postinstall, lorax's before it). Returns the runtime and the copy."""
    ctx = pipeline.start(cfg, work)
    pipeline.install(ctx)
    pipeline.postinstall(ctx)
    inroot = pipeline.snapshot(ctx, work / "installroot")
    try:
        pkgfiles = loraxlogs.package_files(ctx.tree) if logdir is not None else {}
    except RuntimeError as e:
        raise ComposerError(str(e)) from None
    if logdir is not None:
        loraxlogs.write_pkgsizes(ctx.tree, pkgfiles, logdir, "original-pkgsizes.txt")
    module_info(ctx)
    ctx.cfg = dataclasses.replace(ctx.cfg, dracut_args=(*ctx.cfg.dracut_args, *anaconda_dracut_args(inroot)))
    pipeline.cleanup(ctx)
    if logdir is not None:
        loraxlogs.write_pkgsizes(ctx.tree, pkgfiles, logdir, "final-pkgsizes.txt")
    pipeline.pack(ctx, dracut_tree=inroot, omits=False)
    return ctx.runtime(), inroot


def module_info(ctx: pipeline.BuildContext) -> None:
    """lorax's generate_module_data after its backup: /lib/modules/module-info in the runtime
    (anaconda's list of block and network drivers), one file for every kernel (the last one's)."""
    moddirs = [
        ctx.tree / d for d in ("usr/lib/modules", "lib/modules") if (ctx.tree / d).is_dir() and not (ctx.tree / d).is_symlink()
    ]
    if not moddirs:
        return
    with ctx.check.ledger.observe(ctx.tree, "composer lorax: module-info"):
        for k in find_kernels(ctx.tree):
            n = write_module_info(moddirs[0] / k.version, moddirs[0] / "module-info")
            info(f"module-info: {n} block and network drivers of kernel {k.version}")


def anaconda_dracut_args(inroot: Path) -> tuple[str, ...]:
    """lorax's `--add "anaconda pollcdrom qemu qemu-net prefixdevname-tools"`, less the modules
    the install root has not (lorax's dracut would stop there: a template set that installs no
    anaconda-dracut, like the small test product's, still builds, and the log names them)."""
    moddirs = [inroot / d for d in ("usr/lib/dracut/modules.d", "lib/dracut/modules.d")]
    present = {p.name.lstrip("0123456789") for d in moddirs if d.is_dir() for p in d.iterdir()}
    wanted = LORAX_ANACONDA_DRACUT[1].split()
    missing = [m for m in wanted if m not in present]
    if missing:
        info(f"dracut: lorax adds {' '.join(missing)} too; the install root has no such dracut module: left out")
    kept = [m for m in wanted if m in present]
    return ("--add", " ".join(kept)) if kept else ()


def _put(src: Path, dest: Path) -> None:
    """src copied to dest as a new file: dest may be a hard link into the runtime tree."""
    if os.path.lexists(dest):
        dest.unlink()
    copy_file(src, dest)


def make_lorax_media(cfg: Config, plan: LoraxPlan, rt: Runtime, inroot: Path, out: Path, work: Path, volid: str) -> None:
    """lorax's TreeBuilder: the --add-arch-template files, then the set's arch template,
    with the install root before the cleanup as input root (kernels and their initramfs
    in boot/, the runtime image at images/install.img, as lorax has them) and the output
    directory as output root; then implantisomd5 on the ISO and lorax's .treeinfo from what the templates
    recorded."""
    templatedir = template_dir(cfg)
    for k in rt.kernels:
        _put(k.vmlinuz, inroot / "boot" / f"vmlinuz-{k.version}")
        _put(rt.initramfs[k.version], inroot / "boot" / f"initramfs-{k.version}.img")
    runtime_img = "images/install.img"
    (inroot / runtime_img).parent.mkdir(parents=True, exist_ok=True)
    copy_sparse(rt.squashfs, inroot / runtime_img)
    basearch = Arch.of(cfg.arch).basearch
    write_lorax_discinfo(out / ".discinfo", release=cfg.release, basearch=basearch, timestamp=cfg.source_date_epoch)
    product = Product(cfg.product, cfg.version, cfg.release, cfg.variant, cfg.bugurl, cfg.isfinal)
    variables = lorax_variables(
        product,
        Arch.of(cfg.arch),
        isolabel=volid,
        runtime_img=runtime_img,
        domacboot=plan.domacboot,
        doupgrade=plan.doupgrade,
        workdir=str(work),
    )
    variables["rootfs_type"] = str(cfg.rootfs_type)
    runner = TemplateRunner(tree=out, inroot=inroot, templatedir=templatedir, variables=variables)
    for t in plan.arch_templates:  # lorax runs these first, with --add-arch-template-var
        runner.run(t.resolve(), dict(plan.arch_template_vars))
    runner.run(templatedir / ARCH_TEMPLATE[Arch.of(cfg.arch).basearch])
    treeinfo = runner.treeinfo
    for section in treeinfo.values():
        if "boot.iso" in section:
            run(["implantisomd5", str(out / section["boot.iso"])])
    write_lorax_treeinfo(
        out / ".treeinfo",
        product=cfg.product,
        version=cfg.version,
        variant=cfg.variant,
        basearch=basearch,
        sections=treeinfo,
        timestamp=cfg.source_date_epoch,
    )


def compose_lorax_media(cfg: Config, plan: LoraxPlan, volid: str) -> None:
    found = check_sharedir(template_dir(cfg))  # a template error stops the build now, not after the runtime
    if found.errors:
        raise ComposerError(f"--sharedir {template_dir(cfg)}: " + "; ".join(found.errors))
    with compose_dirs(cfg) as (out, work):
        rt, inroot = build_lorax_runtime(cfg, work, plan.logfile.parent)
        make_lorax_media(cfg, plan, rt, inroot, out, work, volid)
    info(f"outputs in {cfg.outdir} (made by {ARCH_TEMPLATE[rt_basearch(cfg)]} of {template_dir(cfg)})")


def rt_basearch(cfg: Config) -> str:
    return Arch.of(cfg.arch).basearch


def lorax_volid(volid: str) -> str:
    """--volid as lorax takes it for a lorax template set: at most 32 characters, any of them.
    The templates make the ISO label from it (the stock x86.tmpl turns what is not alphanumeric
    or _ into -); Pungi's default volume ids have a space ("Fedora-43 Everything.x86_64")."""
    if len(volid) > VOLID_MAX:
        raise ComposerError(f"--volid {volid!r}: {len(volid)} characters, at most {VOLID_MAX} allowed")
    if not volid.isprintable():
        raise ComposerError(f"--volid {volid!r}: control characters are not allowed")
    return volid


def run_plan(plan: LoraxPlan, tmp: Path) -> int:
    """The build; `tmp` is a private directory for composer's own runtime template and dnf's logs."""
    cfg = plan.config
    if plan.warnings:
        info("lorax: accepted but not honoured as lorax does: " + "; ".join(plan.warnings))
    if plan.templatedir is not None:
        cfg = dataclasses.replace(cfg, templatedir=plan.templatedir)
    lorax_media = lorax_media_mode(template_dir(cfg), rt_basearch(cfg))
    volid = plan.volid or default_volid(cfg.product, cfg.version, cfg.arch)
    volid = lorax_volid(volid) if lorax_media else check_volid(volid)
    if cfg.arch not in EFI_ARCH_NAMES:
        raise ComposerError(
            f"--buildarch {cfg.arch}: no UEFI boot for this architecture (known: {', '.join(sorted(EFI_ARCH_NAMES))})"
        )
    if cfg.workdir is not None:
        cfg.workdir.mkdir(parents=True, exist_ok=True)  # lorax makes --tmp and --workdir too
    # composer's own runtime template (buildstamp, pkglists) lives outside the work directory:
    # inputs are never inside an output or work place (preflight refuses that).
    own = lorax_runtime_template(tmp, buildstamp_text(cfg), plan.logfile.parent / "pkglists")
    extra_vars = (("domacboot", plan.domacboot), ("doupgrade", plan.doupgrade))
    cfg = dataclasses.replace(
        cfg,
        add_template_vars=cfg.add_template_vars + extra_vars,
        add_templates=(own, *cfg.add_templates),
        dnf_logdir=tmp / "dnf-logs",
    )
    opts = MediaOptions(volid=volid, arch_templates=plan.arch_templates, arch_template_vars=plan.arch_template_vars)
    check_compose_inputs(cfg, "boot-iso")
    if lorax_media:
        compose_lorax_media(cfg, plan, volid)
    else:
        compose_boot_iso(cfg, opts)
    return 0


def _failure(e: BaseException) -> str:
    """What lorax.log and pylorax.log say about how the build ended."""
    if isinstance(e, KeyboardInterrupt):
        return f"interrupted by {e or 'SIGINT'}"
    if isinstance(e, OSError) and e.filename:
        return f"{e.filename}: {e.strerror}"
    return str(e) or type(e).__name__


def open_logs(plan: LoraxPlan) -> None:
    """--logfile as composer's --logfile (no link followed, no FIFO, device or /proc file);
    pkglists/ beside it must be a directory, never a link to one elsewhere."""
    check_outputs_apart([("--logfile", plan.logfile)], [])
    check_dir_creatable(plan.logfile.parent, "--logfile")
    set_logging(verbose=False, logfile=plan.logfile, option="--logfile")
    pkglists = plan.logfile.parent / "pkglists"
    if os.path.islink(pkglists) or (os.path.lexists(pkglists) and not pkglists.is_dir()):
        raise ComposerError(
            f"--logfile {plan.logfile}: {pkglists} is a link or not a directory (lorax writes "
            "pkglists/ there; composer never writes through a link): remove it"
        )


def compose_lorax(plan: LoraxPlan) -> int:
    """The build a lorax command line asks for (composer.cli.lorax.run_lorax).

    Errors are raised for composer.cli to make one line of. lorax's logs (pylorax.log,
    program.log, dnf's) are written beside --logfile however the build ends, interrupted
    included."""
    open_logs(plan)
    with tempfile.TemporaryDirectory(prefix="composer-lorax.") as tmp:
        failure = None
        try:
            return run_plan(plan, Path(tmp))
        except BaseException as e:
            failure = _failure(e)
            raise
        finally:
            if failure is not None:
                debug(error_lines(failure).rstrip("\n"))
            try:
                derive_logs(plan.logfile.parent, read_log(plan.logfile), Path(tmp) / "dnf-logs")
            except OSError as e:
                if failure is None:  # a failed build's own error says more than this one
                    raise ComposerError(f"lorax's logs in {plan.logfile.parent}: {e.strerror}") from None
