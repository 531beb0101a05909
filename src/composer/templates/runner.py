"""The command set: TemplateRunner runs rendered templates' commands against a tree (see composer.templates)."""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import shutil
import stat
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from composer.images import mkefiboot
from composer.images.cpio import CpioEntry, write_newc
from composer.run import ComposerError, debug, in_tree_argv, info, run, systemctl_each
from composer.templates.errors import PathEscapeError, TemplateError
from composer.templates.lexer import _DATA_BACKSLASH, _DATA_MARK, _RAW_BACKSLASH, _SHOW, _unescape, split_line
from composer.templates.paths import check_lexical, glob_in_tree, resolve_in_tree
from composer.templates.render import _no_gc, render_template
from composer.templates.variables import Kernel, find_boot_kernels, lorax_lower, udev_escape


class PackageManager(Protocol):
    def install(self, patterns: Sequence[str], *, required: bool, exclude: Sequence[str] = ()) -> None: ...
    def run_transaction(self) -> None: ...
    def installed(self) -> list[str]: ...
    def files_of(self, name: str) -> list[str]: ...


class ChangeRecorder(Protocol):
    """Where a run says which tree paths each command changed (see composer.treecheck.Ledger)."""

    def record(self, who: str, paths: Sequence[str]) -> None: ...
    def observe(self, tree: Path, who: str, *, packages: bool = False) -> contextlib.AbstractContextManager[object]: ...


# Commands that read the package database (as the template found it: TemplateRunner._installed).
_PACKAGE_QUERIES = {"removepkg", "removefrom"}

# Commands that may change any path: observed as a before/after difference of the tree.
_OPAQUE_COMMANDS = {"runcmd": False, "systemctl": False, "run_pkg_transaction": True}


@dataclass
class _Line:
    filename: str
    lineno: int | None  # source line if known, else rendered line
    text: str
    ignore_failure: bool
    name: str
    action: Callable[[], None]


class _Usage(Exception):
    """A command was called with the wrong arguments (message is the usage)."""


_FIRST_WORD = re.compile(r"[^ \t\r\n]*")


_VERSION_OPS = {"=": "=", "==": "=", ">": ">", ">=": ">=", "=>": ">=", "<": "<", "<=": "<=", "=<": "<="}


def _removekmod_args(args: list[str]) -> tuple[list[str], list[str]]:
    """removekmod's GLOB... [--allbut] KEEPGLOB... as (globs, keepglobs)."""
    usage = "GLOB... [--allbut] KEEPGLOB..."
    if "--allbut" in args:
        i = args.index("--allbut")
        globs, keep = args[:i], args[i + 1 :]
        if not keep or "--allbut" in keep:
            raise _Usage(usage)
    else:
        globs, keep = args, []
    if not globs:
        raise _Usage(usage)
    return globs, keep


def _remove_kmods(kdir: str, base: Path, globs: list[str], keep_res: list[re.Pattern[str]]) -> int:
    """Delete what `globs` name below one kernel's modules directory `base` (tree path `kdir`),
    except files whose tree path a keep pattern matches; then the directories left empty.
    Returns how many files went."""
    removed = 0
    for g in globs:
        for hit in glob_in_tree(base, g):
            for host in _files_at(resolve_in_tree(base, hit, follow_last=False)):
                tree_path = f"{kdir}/{host.relative_to(base).as_posix()}"
                if any(r.match(tree_path) for r in keep_res) or not os.path.lexists(host):
                    continue
                host.unlink()
                removed += 1
    _remove_empty_dirs(base)
    return removed


def _files_at(top: Path) -> list[Path]:
    """Every file under directory `top`, or `top` itself: composer also takes a module file
    (lorax walks directories only)."""
    if top.is_dir() and not top.is_symlink():
        return [Path(d) / f for d, _, fs in os.walk(top) for f in fs]
    return [top]


def _remove_empty_dirs(base: Path) -> None:
    """Directories under `base` left empty, deepest first (so a parent emptied by them goes too)."""
    for dirpath, _, _ in sorted(os.walk(base), key=lambda t: -len(t[0])):
        if Path(dirpath) != base and not os.listdir(dirpath):
            os.rmdir(dirpath)


def _version_spec(pkg: str) -> str:
    """lorax's installpkg NAME<OP>VERSION (no spaces) as the package manager's spec
    "NAME OP VERSION"; a plain glob is returned as it is."""
    if not any(c in pkg for c in "=<>!"):
        return pkg
    parts = re.split(r"([!<>=]+)", pkg)
    if pkg[0] in "=<>!":
        raise ComposerError(f"{pkg!r}: no package name (write NAME>=VERSION without spaces)")
    if len(parts) != 3 or not parts[2]:
        raise ComposerError(f"{pkg!r}: write NAME<OP>VERSION with one operator and a version")
    op = parts[1]
    if op in ("!=", "<>"):
        raise ComposerError(f"{pkg!r}: 'not equal' is not supported (dnf dependencies have no such operator)")
    if op not in _VERSION_OPS:
        raise ComposerError(f"{pkg!r}: unknown operator {op!r} (=, ==, >, >=, <, <=)")
    return f"{parts[0]} {_VERSION_OPS[op]} {parts[2]}"


_SYSTEMCTL_VERBS = ("enable", "disable", "mask", "unmask", "set-default")


@dataclass
class TemplateRunner:
    """Runs templates against one install tree; see the module docstring."""

    tree: Path
    templatedir: Path
    variables: Mapping[str, object]
    pkgmgr: PackageManager | None = None
    dry_run: bool = False
    # lorax's inroot: where install, installimg, installkernel... read and glob()/exists()
    # look (arch templates: the runtime tree); commands write in `tree`, lorax's outroot.
    inroot: Path | None = None
    treeinfo: dict[str, dict[str, str]] = field(default_factory=dict)
    kmods_changed: bool = False
    recorder: ChangeRecorder | None = None  # told which paths each command changes
    # When a list: parse errors are collected here (every bad line, not only the first).
    collect_errors: list[TemplateError] | None = None
    _who: str | None = field(default=None, init=False, repr=False)
    # The package database as this template found it: (installed names, files by package).
    _pkgdb: tuple[list[str], dict[str, list[str]] | None] | None = field(default=None, init=False, repr=False)

    # ----------------------------------------------------------------- public

    def run(self, template: Path, extra: Mapping[str, object] | None = None) -> None:
        """Render `template` and run its commands (or only check them when dry_run).

        All lines are parsed and checked before the first one runs.
        """
        template = Path(template)
        if not template.is_absolute() and not template.exists():
            template = self.templatedir / template
        if not template.is_file():
            raise ComposerError(f"template not found: {template}")
        data = self._template_data(extra)
        text, origins = render_template(template, [self.templatedir, template.parent], data, protect_data=True)
        with _no_gc():
            lines = self._parse(template, text, origins)
        if self.dry_run:
            debug(f"template {template.name}: {len(lines)} commands (dry run)")
            return
        info(f"template {template.name}: {len(lines)} commands")
        self._pkgdb = None
        if any(line.name in _PACKAGE_QUERIES for line in lines):
            self._installed()  # before the first command, as lorax's dnf package set
        for line in lines:
            self._execute(line)

    def render(self, template: Path, extra: Mapping[str, object] | None = None) -> str:
        """The text Mako makes of `template` with this runner's variables (nothing runs)."""
        template = Path(template)
        if not template.is_absolute() and not template.exists():
            template = self.templatedir / template
        if not template.is_file():
            raise ComposerError(f"template not found: {template}")
        text, _ = render_template(template, [self.templatedir, template.parent], self._template_data(extra))
        return text

    def install_sources(self) -> list[Path]:
        """Files of the template directory that can reach the tree: config_files/ (lorax
        copies it in for runtime-postinstall.tmpl; `install` itself reads the tree)."""
        cfg = Path(self.templatedir) / "config_files"
        return sorted(p for p in cfg.rglob("*") if p.is_file() or p.is_symlink()) if cfg.is_dir() else []

    # ----------------------------------------------------------------- variables

    def _template_data(self, extra: Mapping[str, object] | None) -> dict[str, object]:
        merged: dict[str, object] = {}
        merged.update(self.variables)
        merged.update(extra or {})

        def exists(pattern: str) -> bool:
            return bool(self._glob(pattern))

        def glob(pattern: str) -> list[str]:
            return self._glob(pattern)

        def flag(name: str, default: bool = False) -> bool:
            value = merged.get(name, default)
            if isinstance(value, str):
                return value.strip().lower() in ("1", "yes", "true", "on")
            return bool(value)

        data: dict[str, object] = {
            "root": str(self.tree),
            "inroot": str(self._inroot),
            "outroot": str(self.tree),
            "kernels": self._kernels(),
            "exists": exists,
            "glob": glob,
            "flag": flag,
            "udev": udev_escape,
            "lower": lorax_lower,
        }
        data.update(merged)
        return data

    @property
    def _inroot(self) -> Path:
        return self.inroot if self.inroot is not None else self.tree

    def _glob(self, pattern: str) -> list[str]:
        if not self._inroot.is_dir():
            return []
        return glob_in_tree(self._inroot, pattern)

    def _kernels(self) -> list[Kernel]:
        """lorax's kernels of the input tree (boot/vmlinuz-*), then kernels that have
        only a modules directory (a runtime whose /boot is empty), by version."""
        root = self._inroot
        if not root.is_dir():
            return []
        kernels = find_boot_kernels(root)
        have = {k.version for k in kernels}
        for d in ("/usr/lib/modules", "/lib/modules"):
            try:
                real = resolve_in_tree(root, d)
            except PathEscapeError:
                continue
            if not real.is_dir():
                continue
            for p in sorted(real.iterdir()):
                if p.is_dir() and not p.is_symlink() and p.name not in have:
                    have.add(p.name)
                    vmlinuz = f"{d.lstrip('/')}/{p.name}/vmlinuz"
                    path = vmlinuz if (p / "vmlinuz").exists() else f"boot/vmlinuz-{p.name}"
                    m = re.search(r"[.-]([a-z0-9_]+)$", p.name)
                    kernels.append(Kernel(path, p.name, m.group(1) if m else None))
        return sorted(kernels, key=lambda k: k.version)

    # ----------------------------------------------------------------- parsing

    def _parse(self, template: Path, text: str, origins: list) -> list[_Line]:
        lines: list[_Line] = []
        for idx, raw in enumerate(text.split("\n")):
            try:
                line = self._parse_line(template, raw, idx, origins)
            except TemplateError as e:
                if self.collect_errors is None:
                    raise
                self.collect_errors.append(e)
                continue
            if line is not None:
                lines.append(line)
        if self.collect_errors:
            raise self.collect_errors.pop()
        return lines

    def _parse_line(self, template: Path, raw: str, idx: int, origins: list) -> _Line | None:
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            return None
        fname, lineno = origins[idx] if idx < len(origins) else (None, None)
        if fname is None or lineno is None:
            # No source map: the rendered line number and the text must do.
            fname, lineno = str(template), idx + 1
            where = f"(rendered line) {stripped.translate(_SHOW)!r}: "
        else:
            where = ""
        ignore = stripped.startswith("-")
        body = stripped[1:].lstrip() if ignore else stripped
        shown = body.translate(_SHOW)
        if _DATA_MARK in _FIRST_WORD.match(body).group():  # type: ignore[union-attr]
            raise TemplateError(
                fname,
                lineno,
                f"{where}the command name comes from a variable's value ({shown!r}): values are data, never commands",
            )
        try:
            words = split_line(body)
        except ValueError as e:
            raise TemplateError(fname, lineno, f"{where}cannot parse {shown!r}: {e}") from None
        if not words:
            raise TemplateError(fname, lineno, f"{where}empty command")
        name, args = words[0], words[1:]
        if name not in _RAW_BACKSLASH:
            args = [a.replace(_DATA_BACKSLASH, "\\") for a in args]
        parser = getattr(self, f"_p_{name}", None)
        if parser is None:
            raise TemplateError(fname, lineno, f"{where}unknown command {name!r}")
        try:
            action = parser(args)
        except _Usage as e:
            raise TemplateError(fname, lineno, f"{where}{name}: wrong arguments; usage: {name} {e}") from None
        except ComposerError as e:
            raise TemplateError(fname, lineno, f"{where}{name}: {e}") from None
        return _Line(fname, lineno, stripped.translate(_SHOW), ignore, name, action)

    def _execute(self, line: _Line) -> None:
        debug(f"{line.filename}:{line.lineno}: {line.text}")
        who = f"{line.filename}:{line.lineno}"
        self._who = who
        try:
            if self.recorder is not None and line.name in _OPAQUE_COMMANDS:
                with self.recorder.observe(self.tree, who, packages=_OPAQUE_COMMANDS[line.name]):
                    line.action()
            else:
                line.action()
        except (ComposerError, OSError, ValueError, re.error) as e:
            msg = f"{line.name}: {e}"
            if line.ignore_failure:
                info(f"{line.filename}:{line.lineno}: ignored failure: {msg}")
                return
            raise TemplateError(line.filename, line.lineno, msg) from None
        finally:
            self._who = None

    # ----------------------------------------------------------------- helpers

    def _path(self, path: str, *, follow_last: bool = True) -> Path:
        host = resolve_in_tree(self.tree, path, follow_last=follow_last)
        if self.recorder is not None and self._who is not None:
            # Every path a command resolves may be changed by it (and what is below it).
            rel = os.path.relpath(host, os.path.abspath(self.tree))
            if not rel.startswith(".."):
                self.recorder.record(self._who, ["/" if rel == "." else "/" + rel])
        return host

    def _matches(self, pattern: str, *, required: bool) -> list[str]:
        found = glob_in_tree(self.tree, pattern)
        if not found and required:
            raise ComposerError(f"no match for {pattern}")
        return found

    def _need_pkgmgr(self) -> PackageManager:
        if self.pkgmgr is None:
            raise ComposerError("no package manager for this template run")
        return self.pkgmgr

    def _installed(self) -> list[str]:
        """The installed packages as the template found them (read once per template, after
        each transaction again): lorax asks dnf's package set, read before the template runs,
        so removepkg/removefrom keep working after the cleanup removes the rpm database
        (stock runtime-cleanup.tmpl does, halfway through)."""
        if self._pkgdb is None:
            pm = self._need_pkgmgr()
            by_package = getattr(pm, "files_by_package", None)
            self._pkgdb = (pm.installed(), by_package() if by_package is not None else None)
        return self._pkgdb[0]

    def _files_of(self, name: str) -> list[str]:
        self._installed()
        assert self._pkgdb is not None
        files = self._pkgdb[1]
        return list(files.get(name, [])) if files is not None else self._need_pkgmgr().files_of(name)

    def _pkgfile(self, path: str) -> str:
        """A package's file as a tree path (accepts rpm paths and host paths in the tree)."""
        root = os.path.abspath(self.tree)
        if path.startswith(root + "/"):
            return path[len(root) :]
        return path

    def _delete(self, host: Path) -> None:
        if host == Path(os.path.abspath(self.tree)):
            raise ComposerError("refusing to remove the tree itself")
        if host.is_dir() and not host.is_symlink():
            shutil.rmtree(host)
        else:
            host.unlink()

    def _delete_package_files(self, files: Sequence[str]) -> int:
        """Delete files and links; directories only when they end up empty."""
        removed = 0
        dirs: list[Path] = []
        for f in files:
            try:
                host = self._path(self._pkgfile(f), follow_last=False)
            except PathEscapeError as e:
                debug(f"skipping {f}: {e}")
                continue
            if host.is_dir() and not host.is_symlink():
                dirs.append(host)
            elif os.path.lexists(host):
                host.unlink()
                removed += 1
        for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
            try:
                d.rmdir()
            except OSError:
                pass  # not empty: other packages' files live there
        return removed

    def _place(self, src: Path, dest: Path, op: str) -> None:
        """copy/move/hardlink src to dest; into dest if dest is a directory."""
        if op == "hardlink" and src.is_dir():
            raise ComposerError(f"cannot hard-link a directory: {src}")
        if dest.is_dir():
            dest = dest / src.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if op == "copy":
            if src.is_dir():
                shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
            else:
                if os.path.lexists(dest) and (dest.is_symlink() or not dest.is_dir()):
                    dest.unlink()
                shutil.copy2(src, dest, follow_symlinks=False)
        elif op == "move":
            if os.path.lexists(dest) and not dest.is_dir():
                dest.unlink()
            shutil.move(os.fspath(src), os.fspath(dest))
        else:
            if os.path.lexists(dest):
                dest.unlink()
            os.link(src, dest, follow_symlinks=False)

    def _two_paths(self, args: Sequence[str], usage: str) -> tuple[str, str]:
        if len(args) != 2:
            raise _Usage(usage)
        return args[0], args[1]

    @staticmethod
    def _in_tree(*paths: str) -> None:
        """Parse-time check of tree path arguments (see check_lexical)."""
        for path in paths:
            check_lexical(path)

    # ----------------------------------------------------------------- commands
    # Each _p_<name>(args) checks the arguments and returns the action to run.

    def _p_installpkg(self, args: list[str]) -> Callable[[], None]:
        """installpkg [--required|--optional] [--except PKGGLOB]... PKGSPEC...

        Mark packages for installation by the next `run_pkg_transaction` (lorax's meaning).
        PKGSPEC is a name glob, or `NAME<OP>VERSION` without spaces (OP one of `=`, `==`, `>`, `>=`,
        `<`, `<=`), passed to dnf as `NAME OP VERSION`. `--required` (the default) fails when a PKGSPEC
        matches no package in the repositories; `--optional` skips it. `--except PKGGLOB`
        (repeatable) leaves matching names out, as does `--excludepkgs`."""
        usage = "[--required|--optional] [--except PKGGLOB]... PKGGLOB..."
        required = True
        excludes: list[str] = []
        patterns: list[str] = []
        it = iter(args)
        for a in it:
            if a == "--required":
                required = True
            elif a == "--optional":
                required = False
            elif a == "--except":
                try:
                    excludes.append(next(it))
                except StopIteration:
                    raise _Usage(usage) from None
            elif a.startswith("--"):
                raise _Usage(usage)
            else:
                patterns.append(_version_spec(a))
        if not patterns:
            raise _Usage(usage)

        def action() -> None:
            self._need_pkgmgr().install(patterns, required=required, exclude=excludes)

        return action

    def _p_removepkg(self, args: list[str]) -> Callable[[], None]:
        """removepkg PKGGLOB...

        Delete every file of the installed packages whose names match (lorax's meaning): files
        and links go, directories only once empty; the rpm database keeps the packages. A glob
        that matches no installed package is logged, not an error."""
        if not args:
            raise _Usage("PKGGLOB...")

        def action() -> None:
            installed = self._installed()
            for pattern in args:
                names = [n for n in installed if fnmatch.fnmatchcase(n, pattern)]
                if not names:
                    info(f"removepkg: no installed package matches {pattern}")
                for name in names:
                    count = self._delete_package_files(self._files_of(name))
                    debug(f"removepkg {name}: {count} files removed")

        return action

    def _p_removefrom(self, args: list[str]) -> Callable[[], None]:
        """removefrom PKGGLOB [--allbut] FILEGLOB...

        Delete the files of the matching installed packages whose paths match a FILEGLOB; with
        `--allbut`, every file of those packages except the matching ones (lorax's meaning)."""
        usage = "PKGGLOB [--allbut] FILEGLOB..."
        if len(args) < 2 or args[0].startswith("--"):
            raise _Usage(usage)
        pkgglob, rest = args[0], args[1:]
        allbut = rest[0] == "--allbut"
        if allbut:
            rest = rest[1:]
        if not rest or "--allbut" in rest:
            raise _Usage(usage)

        def action() -> None:
            names = [n for n in self._installed() if fnmatch.fnmatchcase(n, pkgglob)]
            if not names:
                info(f"removefrom: no installed package matches {pkgglob}")
            for name in names:
                files = self._files_of(name)
                hit = [f for f in files if any(fnmatch.fnmatchcase(self._pkgfile(f), g) for g in rest)]
                chosen = [f for f in files if f not in set(hit)] if allbut else hit
                count = self._delete_package_files(chosen)
                debug(f"removefrom {name}: {count} files removed")

        return action

    def _p_removekmod(self, args: list[str]) -> Callable[[], None]:
        """removekmod GLOB... [--allbut] KEEPGLOB...

        Delete kernel modules (lorax's meaning): each GLOB names paths below
        `lib/modules/*/kernel/` of every kernel in the tree (a directory means everything in it;
        composer also takes a module file itself). After `--allbut`, a file whose path contains
        a match of a KEEPGLOB (taken as `*KEEPGLOB*`) stays. Directories left empty go; the
        tree's depmod runs after the cleanup template."""
        globs, keep = _removekmod_args(args)
        for g in globs:
            check_lexical(g)
        keep_res = [re.compile(fnmatch.translate(f"*{k}*")) for k in keep]

        def action() -> None:
            removed = sum(_remove_kmods(kdir, base, globs, keep_res) for kdir, base in self._kernel_module_dirs())
            if removed:
                self.kmods_changed = True
            info(f"removekmod: {removed} files removed")

        return action

    def _kernel_module_dirs(self) -> Iterator[tuple[str, Path]]:
        """Each kernel's lib/modules/VERSION/kernel once, as (tree path, host path): /lib/modules
        is often a link to /usr/lib/modules. Lazy: each is looked at after the one before is cleaned."""
        kdirs = glob_in_tree(self.tree, "/usr/lib/modules/*/kernel") + glob_in_tree(self.tree, "/lib/modules/*/kernel")
        seen: set[Path] = set()
        for kdir in kdirs:
            base = self._path(kdir)
            if base in seen or not base.is_dir():
                continue
            seen.add(base)
            yield kdir, base

    def _p_run_pkg_transaction(self, args: list[str]) -> Callable[[], None]:
        """run_pkg_transaction

        Run one dnf transaction with everything `installpkg` marked since the last one (lorax's
        meaning). Observed by the tree check as a before/after difference."""
        if args:
            raise _Usage("(no arguments)")

        def action() -> None:
            self._need_pkgmgr().run_transaction()
            self._pkgdb = None  # what it installed is in the database now

        return action

    def _p_install(self, args: list[str]) -> Callable[[], None]:
        """install SRCGLOB DEST

        Copy what SRCGLOB matches in the input root to DEST in the output root, like cp
        (lorax's meaning; for the runtime templates both roots are the tree). Several matches
        need DEST to be a directory; a directory is copied with its contents."""
        # lorax: SRC (a glob) in the input root, DEST in the output root, like cp.
        src, dest = self._two_paths(args, "SRCGLOB DEST")
        self._in_tree(src, dest)

        def action() -> None:
            found = self._in_matches(src)
            target = self._path(dest)
            if len(found) > 1 and not target.is_dir():
                raise ComposerError(f"{src} matches several files but {dest} is not a directory")
            for s in found:
                self._place(resolve_in_tree(self._inroot, s), target, "copy")

        return action

    def _in_matches(self, pattern: str) -> list[str]:
        found = glob_in_tree(self._inroot, pattern)
        if not found:
            where = "the input tree" if self.inroot is not None else "the tree"
            raise ComposerError(f"nothing matches {pattern} in {where}")
        return found

    def _p_installimg(self, args: list[str]) -> Callable[[], None]:
        """installimg [--xz|--gzip|--bzip2|--lzma] [-ARG]... SRCDIR DESTFILE

        Write SRCDIR of the input root as a compressed newc cpio archive at DESTFILE (lorax's
        meaning; xz by default, `-N` sets the compression level, default 9). A missing or empty
        SRCDIR makes no image, as in lorax."""
        # installimg [--xz|--gzip|--bzip2|--lzma] [-ARG|--ARG=VALUE]... SRCDIR DESTFILE
        usage = "[--xz|--gzip|--bzip2|--lzma] [-ARG]... SRCDIR DESTFILE"
        if len(args) < 2:
            raise _Usage(usage)
        srcdir, destfile, opts = args[-2], args[-1], args[:-2]
        compression = "xz"
        if opts and opts[0] in ("--xz", "--gzip", "--bzip2", "--lzma"):
            compression, opts = opts[0][2:], opts[1:]
        for o in opts:
            if not o.startswith("-"):
                raise ComposerError(f"compressor argument {o!r} does not start with '-'")
        levels = [int(o[1:]) for o in opts if re.fullmatch(r"-[0-9]", o)]
        self._in_tree(srcdir, destfile)

        def action() -> None:
            src = resolve_in_tree(self._inroot, srcdir)
            if not src.is_dir() or not os.listdir(src):
                debug(f"installimg: {srcdir} is missing or empty, no image made")
                return
            _write_cpio_image(src, self._path(destfile), compression, levels[-1] if levels else 9)

        return action

    def _p_mkdir(self, args: list[str]) -> Callable[[], None]:
        """mkdir DIR...

        Create each directory with its parents; an existing one is fine."""
        if not args:
            raise _Usage("DIR...")
        self._in_tree(*args)

        def action() -> None:
            for d in args:
                self._path(d).mkdir(parents=True, exist_ok=True)

        return action

    def _p_append(self, args: list[str]) -> Callable[[], None]:
        """append FILE TEXT

        Append TEXT and a newline to FILE, creating it and its directory if needed. TEXT takes
        Python escapes (`\\n`, `\\t`, `\\xNN`...) as in lorax; a variable's value is taken as it is."""
        filename, text = self._two_paths(args, "FILE TEXT")
        self._in_tree(filename)
        data = _unescape(text) + "\n"

        def action() -> None:
            host = self._path(filename)
            host.parent.mkdir(parents=True, exist_ok=True)
            with open(host, "a", encoding="utf-8", errors="surrogateescape") as f:
                f.write(data)

        return action

    def _p_replace(self, args: list[str]) -> Callable[[], None]:
        """replace REGEX REPLACEMENT FILEGLOB...

        In every regular file the globs match, replace REGEX (a Python regular expression,
        applied line by line) with REPLACEMENT (lorax's meaning; `\\1` names a group).
        A glob that matches nothing is an error; the expression is checked when the line is parsed."""
        if len(args) < 3:
            raise _Usage("REGEX REPLACEMENT FILEGLOB...")
        pattern, repl, globs = args[0], args[1], args[2:]
        self._in_tree(*globs)
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise ComposerError(f"bad regular expression {pattern!r}: {e}") from None
        try:
            regex.sub(repl, "")  # checks group references in the replacement
        except re.error as e:
            raise ComposerError(f"bad replacement {repl!r}: {e}") from None

        def action() -> None:
            for g in globs:
                for p in self._matches(g, required=True):
                    host = self._path(p)
                    if not host.is_file():
                        continue
                    data = host.read_bytes().decode("utf-8", errors="surrogateescape")
                    out = []
                    for line in data.splitlines(keepends=True):
                        body = line.rstrip("\r\n")
                        out.append(regex.sub(repl, body) + line[len(body) :])
                    new = "".join(out)
                    if new != data:
                        _rewrite(host, new.encode("utf-8", errors="surrogateescape"))

        return action

    def _p_remove(self, args: list[str]) -> Callable[[], None]:
        """remove GLOB...

        Delete what each glob matches: files, symlinks (never followed) and whole directories.
        A glob that matches nothing is logged, not an error; the tree itself cannot be removed."""
        if not args:
            raise _Usage("GLOB...")
        self._in_tree(*args)

        def action() -> None:
            for g in args:
                found = self._matches(g, required=False)
                if not found:
                    debug(f"remove: nothing matches {g}")
                for p in found:
                    self._delete(self._path(p, follow_last=False))

        return action

    def _p_symlink(self, args: list[str]) -> Callable[[], None]:
        """symlink TARGET NAME

        Make NAME a symbolic link whose text is TARGET (literal, resolved inside the tree when
        used). An existing file or link at NAME is replaced; an existing directory is an error."""
        target, name = self._two_paths(args, "TARGET NAME")
        self._in_tree(name)  # TARGET is the link's text: resolved in the tree when used

        def action() -> None:
            host = self._path(name, follow_last=False)
            if host.is_dir() and not host.is_symlink():
                raise ComposerError(f"{name} is a directory")
            if os.path.lexists(host):
                host.unlink()
            host.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, host)

        return action

    def _two_path_op(self, args: list[str], op: str, *, follow_src: bool) -> Callable[[], None]:
        src, dest = self._two_paths(args, "SRC DEST")
        self._in_tree(src, dest)

        def action() -> None:
            sources = self._matches(src, required=True)
            target = self._path(dest)
            if len(sources) > 1 and not target.is_dir():
                raise ComposerError(f"{src} matches several files but {dest} is not a directory")
            for s in sources:
                self._place(self._path(s, follow_last=follow_src), target, op)

        return action

    def _p_hardlink(self, args: list[str]) -> Callable[[], None]:
        """hardlink SRC DEST

        Hard-link what SRC (a glob in the output root) matches to DEST, or into DEST if it is a
        directory; directories cannot be hard-linked."""
        return self._two_path_op(args, "hardlink", follow_src=True)

    def _p_copy(self, args: list[str]) -> Callable[[], None]:
        """copy SRC DEST

        Copy what SRC (a glob in the output root) matches to DEST, or into DEST if it is a
        directory; a directory with its contents (links inside it stay links)."""
        return self._two_path_op(args, "copy", follow_src=True)

    def _p_move(self, args: list[str]) -> Callable[[], None]:
        """move SRC DEST

        Move what SRC (a glob in the output root) matches to DEST, or into DEST if it is a
        directory; a symlink is moved itself, never followed."""
        return self._two_path_op(args, "move", follow_src=False)

    def _p_chmod(self, args: list[str]) -> Callable[[], None]:
        """chmod FILEGLOB OCTALMODE

        Set the mode of every path the glob matches, in lorax's argument order (the mode last,
        octal, e.g. 0755); `chmod 0755 FILE` is refused with a hint."""
        # lorax's order: chmod FILEGLOB OCTALMODE.
        if len(args) != 2:
            raise _Usage("FILEGLOB OCTALMODE")
        pattern, text = args
        mode = int(text, 8) if re.fullmatch(r"[0-7]{1,4}", text) else -1
        if mode < 0:
            if re.fullmatch(r"[0-7]{1,4}", pattern):
                raise ComposerError(f"bad mode {text!r}: the order is chmod FILEGLOB MODE (lorax's), not MODE FILE")
            raise ComposerError(f"bad mode {text!r} (octal, e.g. 0755)")
        self._in_tree(pattern)

        def action() -> None:
            for p in self._matches(pattern, required=True):
                os.chmod(self._path(p), mode)

        return action

    def _p_runcmd(self, args: list[str]) -> Callable[[], None]:
        """runcmd [--chroot] CMD [ARG...]

        Run a command, as lorax does, on the build host with the output root as working
        directory: paths must be absolute (`${root}/...`). `mkefiboot` is composer's own (lorax's
        command line; a FAT image made with mkfs.fat and mtools, no loop device, no mount), and
        Fedora's `grub2-X` is Debian's `grub-X` on a host that has only that. composer's `--chroot` runs it inside
        the tree instead (under bubblewrap). `--chdir=` is refused (lorax dropped it too). Observed
        by the tree check as a before/after difference; use it only when no command fits."""
        chroot = bool(args) and args[0] == "--chroot"
        argv = args[1:] if chroot else args
        if not argv:
            raise _Usage("[--chroot] CMD [ARG...]")
        if argv[0].startswith("--chdir="):
            raise ComposerError("--chdir is not supported (lorax dropped it too): use absolute paths")

        def action() -> None:
            tree = os.path.abspath(self.tree)
            if chroot:
                run(in_tree_argv(Path(tree), argv))
            elif argv[0] == "mkefiboot":
                mkefiboot.main(argv[1:])  # composer's own: lorax's needs loop devices and mounts
            else:
                run(host_argv(argv), cwd=Path(tree))

        return action

    def _p_systemctl(self, args: list[str]) -> Callable[[], None]:
        """systemctl enable|disable|mask|unmask|set-default UNIT...

        Run `systemctl --root=TREE VERB UNIT` for each unit, one at a time (lorax's meaning): a
        unit that fails (one that does not exist) is logged and skipped; no units at all is nothing to do.
        composer adds `unmask` and `set-default UNIT` (one unit, which must exist)."""
        usage = f"{'|'.join(_SYSTEMCTL_VERBS)} UNIT..."
        if not args or args[0] not in _SYSTEMCTL_VERBS:
            raise _Usage(usage)
        if args[0] == "set-default" and len(args) != 2:
            raise _Usage("set-default UNIT")
        verb, units = args[0], args[1:]
        if not units:
            # lorax: nothing to do (a template loop may produce no units)
            return lambda: debug(f"systemctl {verb}: no units given")

        def action() -> None:
            if verb == "set-default":
                # composer's own verb: the default target must exist
                run(["systemctl", f"--root={os.path.abspath(self.tree)}", "--quiet", verb, *units])
                return
            systemctl_each(self.tree, verb, units, "lorax")

        return action

    def _p_log(self, args: list[str]) -> Callable[[], None]:
        """log MESSAGE...

        Write MESSAGE to composer's progress output."""
        message = " ".join(args)
        return lambda: info(message)

    def _p_treeinfo(self, args: list[str]) -> Callable[[], None]:
        """treeinfo SECTION KEY [VALUE...]

        Set KEY in SECTION of the output's .treeinfo to the VALUE words joined by spaces (lorax's meaning)."""
        if len(args) < 2:
            raise _Usage("SECTION KEY [VALUE...]")
        section, key, value = args[0], args[1], " ".join(args[2:])

        def action() -> None:
            self.treeinfo.setdefault(section, {})[key] = value

        return action

    def _install_boot_file(self, args: list[str], key: str) -> Callable[[], None]:
        if len(args) != 3:
            raise _Usage("SECTION SRC DEST")
        section, src, dest = args
        self._in_tree(src, dest)

        def action() -> None:
            sources = self._in_matches(src)
            if len(sources) != 1:
                raise ComposerError(f"{src} matches {len(sources)} files, expected one")
            target = self._path(dest)
            self._place(resolve_in_tree(self._inroot, sources[0]), target, "copy")
            if key != "kernel":
                os.chmod(target / os.path.basename(sources[0]) if target.is_dir() else target, 0o644)
            self.treeinfo.setdefault(section, {})[key] = dest.lstrip("/")

        return action

    def _p_installkernel(self, args: list[str]) -> Callable[[], None]:
        """installkernel SECTION SRC DEST

        Copy the one kernel SRC (a glob in the input root) matches to DEST in the output root and
        record `kernel = DEST` in SECTION of .treeinfo (lorax's meaning)."""
        return self._install_boot_file(args, "kernel")

    def _p_installinitrd(self, args: list[str]) -> Callable[[], None]:
        """installinitrd SECTION SRC DEST

        Copy the one initrd SRC (a glob in the input root) matches to DEST in the output root,
        mode 0644, and record `initrd = DEST` in SECTION of .treeinfo (lorax's meaning)."""
        return self._install_boot_file(args, "initrd")

    def _p_installupgradeinitrd(self, args: list[str]) -> Callable[[], None]:
        """installupgradeinitrd SECTION SRC DEST

        As `installinitrd`, recording `upgrade = DEST` (lorax's upgrade initrd)."""
        return self._install_boot_file(args, "upgrade")

    def _p_createaddrsize(self, args: list[str]) -> Callable[[], None]:
        """createaddrsize INITRD_ADDRESS INITRD ADDRSIZE

        Write s390's `initrd.addrsize` at ADDRSIZE: four big-endian 32-bit words, 0, the
        hexadecimal INITRD_ADDRESS, 0 and the size of INITRD (lorax's meaning). Paths given as
        `${outroot}/...`, as lorax's templates do, are taken in the output root."""
        # createaddrsize INITRD_ADDRESS INITRD ADDRSIZE: the s390 LPAR initrd.addrsize,
        # four big-endian 32-bit words: 0, address, 0, size of INITRD. lorax's templates
        # give ${outroot}/... paths: those are taken in the output root.
        if len(args) != 3:
            raise _Usage("INITRD_ADDRESS INITRD ADDRSIZE")
        addr_text, initrd, dest = args
        try:
            addr = int(addr_text, 16)
        except ValueError:
            raise ComposerError(f"bad address {addr_text!r} (hexadecimal, e.g. 0x02000000)") from None
        if not 0 <= addr < 2**31:
            raise ComposerError(f"address {addr_text} does not fit lorax's 32-bit field")
        initrd, dest = self._out_rel(initrd), self._out_rel(dest)
        self._in_tree(initrd, dest)

        def action() -> None:
            size = self._path(initrd).stat().st_size
            if size >= 2**31:
                raise ComposerError(f"{initrd} is too big for initrd.addrsize ({size} bytes)")
            host = self._path(dest)
            host.parent.mkdir(parents=True, exist_ok=True)
            host.write_bytes(struct.pack(">iiii", 0, addr, 0, size))

        return action

    def _out_rel(self, path: str) -> str:
        """A path given as ${outroot}/X (as lorax's templates do for host commands) as X."""
        root = os.path.abspath(self.tree)
        return path[len(root) :] or "/" if path == root or path.startswith(root + "/") else path

    # ----------------------------------------------------------------- lorax's postinstall

    def stage_config_files(self, name: str = "config_files", dest: str = "tmp/config_files") -> str:
        """Copy the template set's config_files/ into the tree, as lorax does before
        runtime-postinstall.tmpl; the tree path is that template's `configdir`."""
        src = Path(self.templatedir) / name
        host = resolve_in_tree(self.tree, dest)
        if self.recorder is not None:
            self.recorder.record(f"composer: {name} for runtime-postinstall.tmpl", ["/" + dest.strip("/")])
        if os.path.lexists(host):
            self._delete(host)
        if src.is_dir():
            shutil.copytree(src, host, symlinks=True)
        else:
            host.mkdir(parents=True)
        return dest


def _write_cpio_image(src: Path, dest: Path, compression: str, level: int) -> None:
    """installimg: a newc cpio of src's contents, compressed, written to dest."""
    # Deferred: optional C modules of Python, needed only by installimg.
    import bz2
    import gzip
    import lzma

    def entries() -> Iterator[CpioEntry]:
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            for n in sorted(dirnames) + sorted(filenames):
                host = Path(dirpath) / n
                name = host.relative_to(src).as_posix()
                st = host.lstat()
                perm = st.st_mode & 0o7777
                if host.is_symlink():
                    yield CpioEntry.symlink(name, os.readlink(host))
                elif host.is_dir():
                    yield CpioEntry.directory(name, perm)
                elif host.is_file():
                    yield CpioEntry.file(name, host, perm, mtime=int(st.st_mtime))

    openers = {  # each returns the compressing file object that the `with` below closes
        "xz": lambda f: lzma.LZMAFile(f, "wb", format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=level),
        "lzma": lambda f: lzma.LZMAFile(f, "wb", format=lzma.FORMAT_ALONE, preset=level),
        "gzip": lambda f: gzip.GzipFile(fileobj=f, mode="wb", compresslevel=max(level, 1), mtime=0),
        "bzip2": lambda f: bz2.BZ2File(f, "wb", compresslevel=max(level, 1)),
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with open(tmp, "wb") as raw, openers[compression](raw) as out:
            write_newc(out, entries())
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def iter_template_files(templates_root: Path) -> Iterator[Path]:
    """Every *.tmpl below templates_root, sorted (for template-check)."""
    yield from sorted(p for p in templates_root.rglob("*.tmpl") if p.is_file())


def host_argv(argv: Sequence[str]) -> list[str]:
    """A host command of lorax's templates as this host names it: Fedora's `grub2-X` tools
    (x86.tmpl's grub2-mkimage) are Debian's `grub-X` where only those exist."""
    name = argv[0]
    if name.startswith("grub2-") and "/" not in name and shutil.which(name) is None:
        debian = "grub-" + name.removeprefix("grub2-")
        if shutil.which(debian) is not None:
            debug(f"runcmd: {name} is {debian} on this host")
            return [debian, *argv[1:]]
    return list(argv)


def _rewrite(host: Path, data: bytes) -> None:
    """A file's new contents as a new file renamed over it (lorax's `replace` rewrites through
    Python's fileinput, which does the same): a hard link to it elsewhere (lorax's pre-cleanup
    snapshot of the tree) keeps the old contents. Mode and owner of the old file."""
    st = host.stat()
    tmp = host.with_name(f".{host.name}.composer-replace")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chown(tmp, st.st_uid, st.st_gid)
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
        os.replace(tmp, host)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
