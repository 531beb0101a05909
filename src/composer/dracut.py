"""The dracut stage: build an initramfs inside the tree, once for every kernel in it."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import lzma
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from composer.config import RootfsType
from composer.outputs.media import render_config
from composer.run import DATADIR, CommandError, ComposerError, in_tree_argv, info, run

# The product's dracut configuration: templates/<product>/dracut.conf, rendered with the
# build's variables and bound in after composer's own (share/dracut/*.conf) and before
# a user's --dracut-conf.
PRODUCT_CONF_TEMPLATE = "dracut.conf"
PRODUCT_CONF_NAME = "95-product.conf"
# Where the module tree composer prepares for dracut (--kmoddir) appears in the chroot;
# dracut wants a .../lib/modules/KVER path.
KMODDIR_IN_TREE = "/tmp/composer-kmods"


@dataclasses.dataclass(frozen=True)
class Kernel:
    version: str
    vmlinuz: Path  # inside the tree


def find_kernels(tree: Path) -> list[Kernel]:
    """Every kernel with modules in the tree, newest first.

    Fedora keeps vmlinuz in /lib/modules/KVER/, Debian in /boot/vmlinuz-KVER.
    """
    kernels = []
    moddir = tree / "usr/lib/modules"
    if not moddir.is_dir():
        moddir = tree / "lib/modules"
    for d in sorted(moddir.glob("*")) if moddir.is_dir() else []:
        for candidate in (d / "vmlinuz", tree / "boot" / f"vmlinuz-{d.name}"):
            if candidate.is_file():
                kernels.append(Kernel(d.name, candidate))
                break
    kernels.sort(key=lambda k: _version_key(k.version), reverse=True)
    return kernels


def _version_key(v: str) -> list[tuple[int, str]]:
    return [(int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"[.\-+~_]", v)]


def take_kernels(tree: Path, dest: Path) -> list[Kernel]:
    """Copy every kernel image out of the tree (the cleanup may delete it from the runtime)."""
    kernels = find_kernels(tree)
    if not kernels:
        raise ComposerError(
            f"no kernel in the tree ({tree}/usr/lib/modules has none with a vmlinuz): the templates must install one"
        )
    dest.mkdir(parents=True, exist_ok=True)
    taken = []
    for k in kernels:
        copy = dest / f"vmlinuz-{k.version}"
        shutil.copy2(k.vmlinuz, copy)
        taken.append(Kernel(k.version, copy))
    return taken


# ----------------------------------------------------------------- driver sets
# A product names the drivers its initramfs carries in its dracut.conf with dracut's
# own variables (`drivers` is dracut's exclusive list). dracut's modules still ask for
# whole subsystems on their own (dm: all of drivers/md; qemu-net: NICs), so when a
# product gives `drivers`, composer hands dracut a module tree (--kmoddir) holding only
# the named drivers and what they depend on, compressed when the tree's kmod can load
# compressed modules: the initramfs then holds exactly the product's set.
DRIVER_VARIABLES = ("drivers", "add_drivers", "force_drivers", "filesystems")
_ASSIGNMENT = re.compile(r'^\s*(?P<var>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>\+?=)\s*(?P<value>"[^"]*"|\'[^\']*\'|\S*)\s*(?:#.*)?$')
_DRIVER_OPTIONS = {
    "--drivers": "drivers",
    "-d": "drivers",
    "--add-drivers": "add_drivers",
    "--force-drivers": "force_drivers",
    "--filesystems": "filesystems",
}


def conf_driver_sets(texts: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """The driver variables a sequence of (name, dracut.conf text) sets, read as dracut
    would source them in order: `x+=" a "` appends, `x="a"` replaces."""
    sets: dict[str, list[str]] = {v: [] for v in DRIVER_VARIABLES}
    for name, text in texts:
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            m = _ASSIGNMENT.match(line)
            if m is None or m["var"] not in sets:
                if any(re.match(rf"\s*{v}\s*\+?=", line) for v in DRIVER_VARIABLES):
                    raise ComposerError(
                        f'{name}:{lineno}: composer reads driver lists as var="a b" or '
                        f'var+=" a b " (no shell expansion): {line.strip()}'
                    )
                continue
            value = m["value"].strip("\"'").split()
            if "$" in m["value"] or "`" in m["value"]:
                raise ComposerError(f"{name}:{lineno}: a driver list may not use shell expansion: {line.strip()}")
            sets[m["var"]] = (sets[m["var"]] if m["op"] == "+=" else []) + value
    return sets


def argv_driver_sets(args: Sequence[str]) -> dict[str, list[str]]:
    """Driver lists given as dracut options (--dracut-arg)."""
    sets: dict[str, list[str]] = {v: [] for v in DRIVER_VARIABLES}
    it = iter(args)
    for a in it:
        opt, eq, value = a.partition("=")
        if opt in _DRIVER_OPTIONS:
            if not eq:
                value = next(it, "")
            sets[_DRIVER_OPTIONS[opt]] += value.split()
    return sets


def _modname(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    base = re.sub(r"\.ko(\.(xz|zst|gz))?$", "", base)
    return base.replace("-", "_")


@dataclasses.dataclass
class ModuleIndex:
    """One kernel's modules in the tree, read from depmod's text indexes."""

    moddir: Path  # tree/usr/lib/modules/KVER
    deps: dict[str, list[str]]  # relative path -> relative paths it needs
    byname: dict[str, str]  # module name (underscores) -> relative path
    aliases: dict[str, list[str]]  # exact alias -> module names
    softdeps: dict[str, list[str]]  # module name -> names or aliases to load with it
    builtin: set[str]

    @classmethod
    def read(cls, moddir: Path) -> ModuleIndex:
        depfile = moddir / "modules.dep"
        if not depfile.is_file():
            raise ComposerError(f"{depfile}: missing (depmod has not run in the tree)")
        deps: dict[str, list[str]] = {}
        for line in depfile.read_text().splitlines():
            mod, _, rest = line.partition(":")
            if mod:
                deps[mod] = rest.split()
        byname = {_modname(m): m for m in deps}
        aliases: dict[str, list[str]] = {}
        if (moddir / "modules.alias").is_file():
            for line in (moddir / "modules.alias").read_text().splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[0] == "alias" and not any(c in parts[1] for c in "*?["):
                    aliases.setdefault(parts[1].replace("-", "_"), []).append(parts[2].replace("-", "_"))
        softdeps: dict[str, list[str]] = {}
        if (moddir / "modules.softdep").is_file():
            for line in (moddir / "modules.softdep").read_text().splitlines():
                parts = line.split()
                if len(parts) > 2 and parts[0] == "softdep":
                    softdeps.setdefault(_modname(parts[1]), []).extend(p for p in parts[2:] if p not in ("pre:", "post:"))
        builtin = set()
        if (moddir / "modules.builtin").is_file():
            builtin = {_modname(x) for x in (moddir / "modules.builtin").read_text().split()}
        return cls(moddir, deps, byname, aliases, softdeps, builtin)

    def resolve(self, spec: str) -> list[str] | None:
        """Relative paths of the modules a dracut driver spec names ([] for a built-in
        driver, None if the kernel has no such driver). `=dir` is a whole subtree, as
        in dracut's instmods."""
        if spec.startswith("="):
            prefix = "kernel/" + spec[1:].strip("/") + "/"
            found = [m for m in self.deps if m.startswith(prefix)]
            return found or None
        name = _modname(spec)
        if name in self.byname:
            return [self.byname[name]]
        if name in self.builtin:
            return []
        targets = self.aliases.get(name)
        if targets:
            return [self.byname[t] for t in targets if t in self.byname]
        return None

    def closure(self, specs: Iterable[str]) -> tuple[set[str], list[str]]:
        """Every module the specs need (dependencies and soft dependencies), and the
        specs this kernel does not have."""
        missing: list[str] = []
        todo: list[str] = []
        for spec in specs:
            found = self.resolve(spec)
            if found is None:
                missing.append(spec)
            else:
                todo += found
        done: set[str] = set()
        while todo:
            m = todo.pop()
            if m in done:
                continue
            done.add(m)
            todo += self.deps.get(m, [])
            for soft in self.softdeps.get(_modname(m), []):
                todo += self.resolve(soft) or []
        return done, missing


def kmod_compressions(tree: Path) -> set[str]:
    """What the tree's kmod can decompress ("xz", "zstd", "gzip"), from `kmod --version`."""
    try:
        out = subprocess.run(
            in_tree_argv(tree, ["kmod", "--version"]), capture_output=True, text=True, timeout=60, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return set()
    words = out.split()
    return {name for flag, name in (("+XZ", "xz"), ("+ZSTD", "zstd"), ("+ZLIB", "gzip")) if flag in words}


def _xz_module(data: bytes) -> bytes:
    # As the kernel's own `make modules_install` does: CRC32 check (the in-kernel
    # decompressor knows no other) and a 1 MiB dictionary. Preset 2, not 6: measured
    # on btrfs+ext4+scsi_mod (6.5 MB), 5x faster for 9% more (1.25 against 1.15 MB).
    return lzma.compress(
        data,
        format=lzma.FORMAT_XZ,
        check=lzma.CHECK_CRC32,
        filters=[{"id": lzma.FILTER_LZMA2, "preset": 2, "dict_size": 1 << 20}],
    )


@dataclasses.dataclass(frozen=True)
class ModuleTree:
    root: Path  # ROOT/lib/modules/KVER is the --kmoddir
    modules: int
    size: int  # bytes of module files as stored
    compression: str  # "xz" or "none"
    missing: tuple[str, ...]


def fill_module_tree(
    tree: Path, kver: str, specs: Sequence[str], root: Path, *, compress: bool = True, stop: threading.Event | None = None
) -> ModuleTree:
    """root/lib/modules/KVER with the modules the specs need and the kernel's lists of
    built-in modules; modules xz-compressed when the tree's kmod can load them (the
    initramfs stays smaller in RAM: kmod decompresses one module at a time as it loads
    it). No indexes yet (index_module_tree): no command of ours runs, so this can run in a
    thread beside other work (modules_beside). `stop` set: give up between modules."""
    srcdir = tree / "usr/lib/modules" / kver
    if not srcdir.is_dir():
        srcdir = tree / "lib/modules" / kver
    index = ModuleIndex.read(srcdir)
    wanted, missing = index.closure(specs)
    compression = "xz" if compress and "xz" in kmod_compressions(tree) else "none"
    dest = root / "lib" / "modules" / kver
    if root.exists():
        shutil.rmtree(root)
    dest.mkdir(parents=True)

    def put(rel: str) -> int:
        if stop is not None and stop.is_set():
            raise InterruptedError("module tree abandoned")
        data = (srcdir / rel).read_bytes()
        if compression == "xz" and rel.endswith(".ko"):
            data, rel = _xz_module(data), rel + ".xz"  # lzma releases the GIL: threads run in parallel
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        return len(data)

    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        size = sum(pool.map(put, sorted(wanted)))
    for name in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        if (srcdir / name).is_file():
            shutil.copyfile(srcdir / name, dest / name)
    return ModuleTree(root, len(wanted), size, compression, tuple(missing))


def index_module_tree(tree: Path, kver: str, mt: ModuleTree) -> None:
    # The tree's own depmod writes the indexes dracut's module lookups read.
    run(in_tree_argv(tree, ["depmod", "-b", KMODDIR_IN_TREE, kver], binds=[(mt.root, KMODDIR_IN_TREE)]))


# What dracut does by itself in a container: no device nodes in the initramfs (the kernel's
# built-in one has /dev/console, the initramfs mounts devtmpfs) and no xattrs copied. mknod
# fails in a user namespace (composer.userns): root does the same, so both build one image.
DRACUT_ENV = {"DRACUT_NO_MKNOD": "1", "DRACUT_NO_XATTR": "1"}


def dracut_argv(
    kver: str, output: str, rootfs: RootfsType, extra: Sequence[str], *, reproducible: bool = False, kmoddir: str | None = None
) -> list[str]:
    drivers = rootfs.dracut_drivers
    argv = ["dracut", "--force", "--no-hostonly", "--no-hostonly-cmdline", "--kver", kver]
    if kmoddir is not None:
        argv += ["--kmoddir", kmoddir]
    if reproducible:
        # Sorted cpio, mtimes clamped to SOURCE_DATE_EPOCH (given in the environment).
        # Our dracut.conf says so too, but a user's --dracut-conf must not undo it.
        argv += ["--reproducible"]
    if drivers:
        argv += ["--add-drivers", " ".join(drivers)]
    return argv + list(extra) + [output]


OMIT_CONF = "91-composer-omit.conf"  # the modules a live runtime leaves out
DISK_CONF = "disk/92-composer-disk.conf"  # a disk image's initramfs: root=UUID=, not a live image


@dataclasses.dataclass(frozen=True)
class DracutInputs:
    """What decides the initramfs besides the tree: one value for modules_beside and build_initramfs."""

    rootfs: RootfsType
    dracut_args: Sequence[str] = ()
    dracut_conf: Path | None = None  # the user's --dracut-conf
    templatedir: Path | None = None  # the product's dracut.conf template is read from here
    variables: Mapping[str, object] | None = None  # to render it
    omits: bool = True  # composer's omissions (OMIT_CONF); lorax's installer initramfs has none
    disk: bool = False  # an installed system's initramfs (livemedia --make-disk): DISK_CONF, no live modules


def _dracut_confs(inputs: DracutInputs, outdir: Path) -> list[tuple[Path, str]]:
    """composer's dracut.conf files, the product's (rendered into outdir) and the user's,
    each with where it is bound in the tree, in the order dracut reads them."""
    confs = [
        (conf, f"/etc/dracut.conf.d/{conf.name}")
        for conf in sorted((DATADIR / "share" / "dracut").glob("*.conf"))
        if inputs.omits or conf.name != OMIT_CONF
    ]
    if inputs.disk:
        conf = DATADIR / "share" / "dracut" / DISK_CONF
        confs.append((conf, f"/etc/dracut.conf.d/{conf.name}"))
    product_conf = (
        render_product_conf(inputs.templatedir, inputs.variables or {}, outdir) if inputs.templatedir is not None else None
    )
    if product_conf is not None:
        confs.append((product_conf, f"/etc/dracut.conf.d/{PRODUCT_CONF_NAME}"))
    if inputs.dracut_conf is not None:
        if not inputs.dracut_conf.is_file():
            raise ComposerError(f"--dracut-conf {inputs.dracut_conf}: no such file")
        confs.append((inputs.dracut_conf.resolve(), "/etc/dracut.conf.d/99-user.conf"))
    return confs


def _as_dracut_reads(tree: Path, confs: Sequence[tuple[Path, str]]) -> list[tuple[str, str]]:
    """(name, text) of every dracut.conf dracut reads in the tree, in its order: /etc/dracut.conf,
    then the conf.d files by name (/etc's over /usr/lib's, ours over both). The tree's own are
    a package's or a kickstart's %post (a live spin adding its USB stick's filesystem); a file
    linked elsewhere (to /dev/null: masked) is left out."""
    by_name: dict[str, Path] = {}
    for d in ("usr/lib/dracut/dracut.conf.d", "etc/dracut.conf.d"):
        for f in sorted((tree / d).glob("*.conf")):
            if f.is_file() and not f.is_symlink():
                by_name[f.name] = f
    by_name |= {Path(dest).name: src for src, dest in confs}
    main = tree / "etc/dracut.conf"
    files = ([main] if main.is_file() and not main.is_symlink() else []) + [by_name[n] for n in sorted(by_name)]
    return [(str(f), f.read_text(errors="replace")) for f in files]


def _module_specs(texts: Iterable[tuple[str, str]], inputs: DracutInputs) -> list[str] | None:
    """The modules the product's driver set names (None: it names none, dracut picks as it likes)."""
    sets = conf_driver_sets(texts)
    for var, names in argv_driver_sets(inputs.dracut_args).items():
        sets[var] += names
    if not sets["drivers"]:
        return None
    return [s for v in DRIVER_VARIABLES for s in sets[v]] + list(inputs.rootfs.dracut_drivers)


@dataclasses.dataclass(frozen=True)
class DracutPlan:
    """DracutInputs made concrete once: the conf files bound in (the product's rendered),
    and the module tree of every kernel when the confs name a driver set."""

    inputs: DracutInputs
    confs: list[tuple[Path, str]]
    module_trees: dict[str, ModuleTree]  # kver: tree; empty when dracut picks its own modules


@contextlib.contextmanager
def modules_beside(
    tree: Path,
    kernels: list[Kernel],
    outdir: Path,
    inputs: DracutInputs,
) -> Iterator[concurrent.futures.Future[DracutPlan]]:
    """Plan dracut's run (build_initramfs) and compress the module trees in a thread while
    the with-block does other work; the tree's modules must not change meanwhile. Leaving
    the block waits for the thread (after an exception it is told to give up), so nothing
    writes into outdir afterwards."""
    outdir.mkdir(parents=True, exist_ok=True)
    confs = _dracut_confs(inputs, outdir)
    specs = _module_specs(_as_dracut_reads(tree, confs), inputs)
    stop = threading.Event()

    def fill() -> DracutPlan:
        trees = (
            {}
            if specs is None
            else {k.version: fill_module_tree(tree, k.version, specs, outdir / f"kmods-{k.version}", stop=stop) for k in kernels}
        )
        return DracutPlan(inputs, confs, trees)

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    future = pool.submit(fill)
    try:
        yield future
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True)


def build_initramfs(
    tree: Path, kernels: list[Kernel], outdir: Path, plan: DracutPlan, *, source_date_epoch: int | None = None
) -> dict[str, Path]:
    """Run dracut in the tree for every kernel; return {kver: initramfs path in outdir}.

    The tree is not changed: our configuration is bound in read-only and the
    initramfs is written to a directory bound under /tmp. With templatedir, the
    product's dracut.conf (rendered with `variables`) comes after composer's own.
    plan: from modules_beside, with the same tree, kernels and outdir.
    """
    epoch = source_date_epoch
    if epoch is None and "SOURCE_DATE_EPOCH" in os.environ:
        epoch = int(os.environ["SOURCE_DATE_EPOCH"])
    if not (tree / "usr/bin/dracut").exists() and not (tree / "usr/sbin/dracut").exists():
        raise ComposerError("dracut is not installed in the tree: the templates must install it")
    outdir.mkdir(parents=True, exist_ok=True)
    confdir = DATADIR / "share" / "dracut"
    ro_binds = list(plan.confs)
    # Our own dracut modules (e.g. the RAM check), bound in beside dracut's. dracut copies
    # their files with their owners into the initramfs: bind a copy this build owns, not
    # composer's installed files (whoever owns those; nobody in a user namespace).
    own_modules = sorted(p for p in (confdir / "modules.d").glob("*") if p.is_dir())
    for mod in own_modules:
        copy = outdir / "dracut-modules" / mod.name
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(mod, copy, ignore=shutil.ignore_patterns("__pycache__"))
        # Modes as the package means them, not as the checkout's umask left them (0775 vs 0755
        # made the initramfs differ between two clones).
        for p in (copy, *copy.rglob("*")):
            p.chmod(0o755 if p.is_dir() or p.stat().st_mode & 0o111 else 0o644)
        ro_binds.append((copy, "/" + (_dracut_modules_dir(tree) / mod.name).relative_to(tree).as_posix()))
    # bwrap makes the mount points it lacks in the tree: remove those afterwards.
    made = sorted({m for _, dst in ro_binds if (m := _first_missing(tree, dst)) is not None})
    try:
        return _run_dracut(tree, kernels, outdir, plan, epoch, ro_binds)
    finally:
        shutil.rmtree(outdir / "dracut-modules", ignore_errors=True)
        for m in made:
            if m.is_dir():
                shutil.rmtree(m, ignore_errors=True)
            else:
                m.unlink(missing_ok=True)


def _first_missing(tree: Path, dst: str) -> Path | None:
    """The outermost path bwrap has to create in the tree to mount at dst (None: it exists)."""
    path = tree
    for part in Path(dst.lstrip("/")).parts:
        path = path / part
        if not os.path.lexists(path):
            return path
    return None


def _run_dracut(
    tree: Path, kernels: list[Kernel], outdir: Path, plan: DracutPlan, epoch: int | None, ro_binds: list[tuple[Path, str]]
) -> dict[str, Path]:
    # bwrap needs the mount points to exist; /etc/dracut.conf.d is dracut's own directory.
    result: dict[str, Path] = {}
    for k in kernels:
        info(f"dracut: kernel {k.version}")
        binds = [(outdir, "/tmp/out")]
        kmoddir = None
        mt = plan.module_trees.get(k.version)
        if mt is not None:
            # The product's driver set, exactly: dracut sees no other module.
            index_module_tree(tree, k.version, mt)
            if mt.missing:
                info(f"dracut: kernel {k.version} has no module {', '.join(mt.missing)} (not built, or removed by the cleanup)")
            info(
                f"dracut: {mt.modules} modules for kernel {k.version}, {mt.size / 2**20:.1f} MiB "
                f"({'xz-compressed' if mt.compression == 'xz' else 'uncompressed'})"
            )
            binds.append((mt.root, KMODDIR_IN_TREE))
            kmoddir = f"{KMODDIR_IN_TREE}/lib/modules/{k.version}"
        argv = dracut_argv(
            k.version,
            f"/tmp/out/initramfs-{k.version}.img",
            plan.inputs.rootfs,
            plan.inputs.dracut_args,
            reproducible=epoch is not None,
            kmoddir=kmoddir,
        )
        try:
            run(
                in_tree_argv(tree, argv, binds=binds, ro_binds=ro_binds),
                env=DRACUT_ENV | ({"SOURCE_DATE_EPOCH": str(epoch)} if epoch is not None else {}),
            )
        except CommandError as e:
            raise ComposerError(f"dracut failed for kernel {k.version} (exit {e.returncode}): {e.reason}") from None
        finally:
            shutil.rmtree(outdir / f"kmods-{k.version}", ignore_errors=True)
        result[k.version] = outdir / f"initramfs-{k.version}.img"
    return result


def _dracut_modules_dir(tree: Path) -> Path:
    for d in ("usr/lib/dracut/modules.d", "lib/dracut/modules.d"):
        if (tree / d).is_dir():
            return tree / d
    raise ComposerError("dracut in the tree has no modules.d directory")


def render_product_conf(templatedir: Path, variables: Mapping[str, object], workdir: Path) -> Path | None:
    """The product's dracut.conf, rendered into workdir; None if the product has none."""
    if not (templatedir / PRODUCT_CONF_TEMPLATE).is_file():
        return None
    text = render_config(templatedir, PRODUCT_CONF_TEMPLATE, variables)
    dest = workdir / f"product-{PRODUCT_CONF_NAME}"
    dest.write_text(f"# {templatedir / PRODUCT_CONF_TEMPLATE}, rendered by composer\n" + text)
    return dest
