"""The template runner: lorax's template language, with lorax's meaning, plus composer's own.

The language
------------
A template is first rendered by Mako (``${var}``, ``%if``/``%for`` lines, ``<% %>``
blocks, ``##`` Mako comments, ``<%include file="..."/>``) with the build's variables;
``<%page args="..."/>`` is filled from them (lorax renders with ``render(**variables)``).
Every line of the *rendered* text is then one command:

* blank lines and lines starting with ``#`` are skipped;
* a leading ``-`` (``-remove /foo``) makes a failure of that command a logged
  warning instead of an error (syntax errors are never ignored);
* the line is split like a POSIX shell word list: ``'single'`` and ``"double"``
  quotes group words, a backslash escapes the next character outside quotes;
* each word then gets brace expansion, ``a{b,c{d,e}}`` -> ``ab acd ace``, unless the
  braces were quoted; a brace group without a comma stays literal;
* commands that take globs expand them *inside the tree* (``*``, ``?``, ``[...]``,
  ``[!...]``, and ``**`` as a whole component for any depth of directories).

There are two roots, as in lorax: the input root (``inroot``: where ``install``,
``installimg``, ``installkernel``... read and ``glob()``/``exists()`` look) and the
output root (``outroot``, the runner's ``tree``: where every command writes). For the
runtime templates both are the runtime tree; for arch templates the input root is the
runtime tree and the output root the media tree.

All paths name places in a root: ``/usr/bin`` and ``usr/bin`` both mean
``ROOT/usr/bin``. ``..`` may not climb out of it, absolute symlinks are followed
relative to the root, and symlinks leading out are refused (see :func:`resolve_in_tree`).

Variables are data (``TemplateValue``): a value never holds a line break or a control
character, its quotes, backslashes and braces are literal in the rendered command
line, and it is never a command name. (White space in an unquoted value still
separates words, as in lorax.) The template files themselves are trusted code.

Errors name the template and the source line: ``runtime-cleanup.tmpl:12: chmod:
bad mode '9z'``.

Commands (lorax's, with lorax's argument order; composer's extensions marked +)::

    installpkg [--required|--optional] [--except PKGGLOB]... PKGSPEC...
                                         PKGSPEC: a glob, or NAME>=VER (=, ==, >, >=, <, <=)
    removepkg PKGGLOB...                 delete the packages' files, keep the rpmdb entry
    removefrom PKGGLOB [--allbut] FILEGLOB...
    removekmod GLOB... [--allbut] KEEPGLOB...   GLOB below lib/modules/*/kernel/;
                                         a path containing a KEEPGLOB match stays
    run_pkg_transaction
    install SRCGLOB DEST                 SRC in the input root, DEST in the output root
    installimg [--xz|--gzip|--bzip2|--lzma] [-N] SRCDIR DESTFILE   cpio image of SRCDIR
    mkdir DIR...
    append FILE TEXT                     TEXT + newline; Python escapes (\\n, \\t, \\xNN...)
    replace REGEX REPLACEMENT FILEGLOB...
    remove GLOB...                       files, symlinks (never followed), directories
    symlink TARGET NAME                  TARGET is the literal link text
    hardlink SRC DEST
    copy SRC DEST
    move SRC DEST
    chmod FILEGLOB OCTALMODE
    runcmd [--chroot] CMD [ARG...]       on the host with the output root as working
                                         directory, or inside it (+ --chroot, bwrap)
    systemctl enable|disable|mask|unmask+|set-default+ UNIT...
                                         one unit at a time; a missing unit is logged
    log MESSAGE...
    treeinfo SECTION KEY [VALUE...]
    installkernel SECTION SRC DEST       copy a kernel, record SECTION kernel=DEST
    installinitrd SECTION SRC DEST       copy an initrd (mode 0644), record SECTION initrd=DEST
    installupgradeinitrd SECTION SRC DEST    the same for upgrade=DEST
    createaddrsize ADDRESS INITRD ADDRSIZE   s390's initrd.addrsize

Variables: lorax's (see :func:`lorax_variables`): ``product`` (.name .version .release
.variant .bugurl .isfinal), ``arch`` (.basearch .buildarch .bcj .libdir), ``basearch``,
``libdir``, ``branding`` (.release .logos), ``runtime_img``, ``runtime_base``,
``isolabel``, ``udev``, ``lower``, ``domacboot``, ``doupgrade``, ``workdir``,
``extra_boot_args``, ``configdir`` (runtime-postinstall.tmpl); the runner adds ``root``,
``inroot``, ``outroot``, ``kernels`` (.path .version .arch .flavor .initrd.path),
``exists(glob)`` and ``glob(pattern)`` (input root; evaluated when the template is
*rendered*, i.e. before any of its commands run). composer's own: ``version``,
``release``, ``variant``, ``bugurl``, ``isfinal``, ``rootfs_type`` and ``flag(name,
default=False)`` (a variable as a boolean: "1", "yes", "true", "on" are true).
"""

from __future__ import annotations

import contextlib
import fnmatch
import gc
import itertools
import os
import re
import shutil
import struct
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from composer.images.cpio import CpioEntry, write_newc
from composer.run import ComposerError, debug, in_tree_argv, info, run

__all__ = [
    "PackageManager",
    "TemplateError",
    "TemplateRunner",
    "brace_expand",
    "glob_in_tree",
    "resolve_in_tree",
    "sample_variables",
    "split_line",
]

MAX_SYMLINK_HOPS = 40


class PackageManager(Protocol):
    def install(self, patterns: Sequence[str], *, required: bool, exclude: Sequence[str] = ()) -> None: ...
    def remove(self, patterns: Sequence[str]) -> None: ...
    def run_transaction(self) -> None: ...
    def installed(self) -> list[str]: ...
    def files_of(self, name: str) -> list[str]: ...


class ChangeRecorder(Protocol):
    """Where a run says which tree paths each command changed (see composer.treecheck.Ledger)."""

    def record(self, who: str, paths: Sequence[str]) -> None: ...
    def observe(self, tree: Path, who: str, *, packages: bool = False) -> contextlib.AbstractContextManager[object]: ...


# Commands that may change any path: observed as a before/after difference of the tree.
_OPAQUE_COMMANDS = {"runcmd": False, "systemctl": False, "run_pkg_transaction": True}


class TemplateError(ComposerError):
    """An error in or from a template line: '<file>:<line>: <message>'."""

    def __init__(self, filename: str, line: int | None, message: str) -> None:
        self.filename = filename
        self.line = line
        self.message = message
        where = f"{filename}:{line}" if line is not None else filename
        super().__init__(f"{where}: {message}")


class PathEscapeError(ComposerError):
    """A path that would leave the tree."""


# --------------------------------------------------------------------------- paths


def _components(path: str) -> list[str]:
    comps = [c for c in path.split("/") if c]
    if path.endswith("/") and comps:
        comps.append(".")  # "dir/" means: follow dir if it is a symlink
    return comps


def resolve_in_tree(tree: Path | str, path: str | os.PathLike[str], *, follow_last: bool = True) -> Path:
    """The host path of `path` taken inside `tree`, never outside it.

    `path` is relative to the tree root whether or not it starts with "/". Symlinks
    met on the way are resolved as if the tree were "/": an absolute target starts
    again at the tree root, a relative one from the link's directory. A ".." (in the
    path or in a link) that would climb above the tree root is refused, as are
    symlink loops. With follow_last=False a symlink in the last component is not
    followed (the link itself is meant: remove, symlink NAME, move SRC).
    Components that do not exist are taken literally.
    """
    root = Path(os.path.abspath(tree))
    text = os.fspath(path)
    pending = list(reversed(_components(text)))
    parts: list[str] = []
    hops = 0
    while pending:
        comp = pending.pop()
        if comp == ".":
            continue
        if comp == "..":
            if not parts:
                raise PathEscapeError(f"path leads out of the tree: {text}")
            parts.pop()
            continue
        here = root.joinpath(*parts, comp)
        if (pending or follow_last) and os.path.islink(here):
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                raise PathEscapeError(f"too many levels of symbolic links: {text}")
            target = os.readlink(here)
            if target.startswith("/"):
                parts = []
            pending.extend(reversed(_components(target)))
            continue
        parts.append(comp)
    return root.joinpath(*parts)


def check_lexical(path: str) -> None:
    """Refuse a path whose ".." climbs above the tree root by its text alone.

    Checked when a template is parsed (also in dry runs, with no tree): such a
    path leaves the tree whatever the tree holds. Symlink escapes depend on the
    tree and are caught by resolve_in_tree when the command runs.
    """
    depth = 0
    for comp in path.split("/"):
        if comp == "..":
            depth -= 1
            if depth < 0:
                raise PathEscapeError(f"path leads out of the tree: {path}")
        elif comp not in ("", "."):
            depth += 1


def _has_magic(s: str) -> bool:
    return any(c in s for c in "*?[")


def glob_in_tree(tree: Path | str, pattern: str) -> list[str]:
    """Tree paths ("/usr/x", or "usr/x" for a relative pattern) that match `pattern`.

    Matching happens inside the tree with the rules of resolve_in_tree; entries that
    start with "." match only a pattern component that starts with "."; "**" as a
    whole component matches any number of directories (symlinks not followed).
    A pattern without wildcards yields itself if it exists. The result is sorted.
    """
    lead = "/" if pattern.startswith("/") else ""
    comps = [c for c in pattern.split("/") if c and c != "."]
    prefixes: list[str] = [""]
    magic_seen = False

    def resolved_dir(prefix: str) -> Path | None:
        try:
            d = resolve_in_tree(tree, prefix or "/")
        except PathEscapeError:
            if magic_seen:
                return None  # a wildcard met a link that leaves the tree: no match there
            raise
        return d if d.is_dir() else None

    for comp in comps:
        new: list[str] = []
        if comp == "**":
            for prefix in prefixes:
                d = resolved_dir(prefix)
                if d is None:
                    continue
                for dirpath, dirnames, _ in os.walk(d):
                    dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
                    rel = os.path.relpath(dirpath, d)
                    new.append(prefix if rel == "." else f"{prefix}/{rel}")
            magic_seen = True
        elif _has_magic(comp):
            for prefix in prefixes:
                d = resolved_dir(prefix)
                if d is None:
                    continue
                try:
                    names = sorted(os.listdir(d))
                except OSError:
                    continue
                for name in names:
                    if name.startswith(".") and not comp.startswith("."):
                        continue
                    if fnmatch.fnmatchcase(name, comp):
                        new.append(f"{prefix}/{name}")
            magic_seen = True
        elif comp == "..":
            new = [f"{prefix}/.." for prefix in prefixes]
        else:
            new = [f"{prefix}/{comp}" for prefix in prefixes]
        prefixes = list(dict.fromkeys(new))
        if not prefixes:
            return []
    found = []
    for p in prefixes:
        try:
            if os.path.lexists(resolve_in_tree(tree, p or "/", follow_last=False)):
                found.append(lead + p.lstrip("/") if p else lead or ".")
        except PathEscapeError:
            if not magic_seen:
                raise
    return sorted(found)


# --------------------------------------------------------------------------- lexing

# Quoted characters that brace expansion must not see as syntax.
_PROTECT = {"{": "\ue000", "}": "\ue001", ",": "\ue002"}
# A variable's value in a command template is data: its quotes, backslashes and
# braces are literal characters (never syntax), and a mark before its first visible
# character lets the parser see that a command name would come from a value.
_DATA_PROTECT = {**_PROTECT, "'": "\ue003", '"': "\ue004", "\\": "\ue005"}
_DATA_MARK = "\ue010"
# A value's backslash stays marked through split_line, so that append's \\n escapes
# never act on it (the parser restores it for every other command).
_DATA_BACKSLASH = _DATA_PROTECT["\\"]
_UNPROTECT = str.maketrans({**{v: k for k, v in _DATA_PROTECT.items() if k != "\\"}, _DATA_MARK: None})
_SHOW = str.maketrans({**{v: k for k, v in _DATA_PROTECT.items()}, _DATA_MARK: None})


def _protect(text: str) -> str:
    return "".join(_PROTECT.get(c, c) for c in text)


def split_line(line: str) -> list[str]:
    """Split a command line into words like shlex.split (POSIX), then brace-expand.

    Braces and commas inside quotes or after a backslash are literal.
    Raises ValueError for an unterminated quote or a trailing backslash.
    """
    words: list[str] = []
    cur: list[str] = []
    in_word = False
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c in " \t\r\n":
            if in_word:
                words.append("".join(cur))
                cur, in_word = [], False
            i += 1
            continue
        in_word = True
        if c == "'":
            j = line.find("'", i + 1)
            if j < 0:
                raise ValueError("no closing quotation")
            cur.append(_protect(line[i + 1 : j]))
            i = j + 1
        elif c == '"':
            i += 1
            while True:
                if i >= n:
                    raise ValueError("no closing quotation")
                c = line[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\" and i + 1 < n and line[i + 1] in '"\\':
                    cur.append(line[i + 1])
                    i += 2
                    continue
                cur.append(_protect(c))
                i += 1
        elif c == "\\":
            if i + 1 >= n:
                raise ValueError("no escaped character")
            cur.append(_protect(line[i + 1]))
            i += 2
        else:
            cur.append(c)
            i += 1
    if in_word:
        words.append("".join(cur))
    return [w.translate(_UNPROTECT) for word in words for w in brace_expand(word)]


def brace_expand(word: str) -> list[str]:
    """Shell-style brace expansion: "a{b,c}d" -> ["abd", "acd"]; nesting allowed.

    A group without a top-level comma is literal. A "{" that is never closed is an
    error (quote or escape it for a literal brace): it is almost always a typo, and
    taken literally it would surface much later as a missing file or package.
    """
    start = 0
    while True:
        i = word.find("{", start)
        if i < 0:
            return [word]
        depth = 0
        commas: list[int] = []
        end = -1
        for j in range(i, len(word)):
            ch = word[j]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    end = j
                    break
            elif ch == "," and depth == 1:
                commas.append(j)
        if end < 0:
            raise ValueError(f"unbalanced brace in {word.translate(_SHOW)!r} (quote a literal '{{')")
        if not commas:
            start = i + 1
            continue
        bounds = [i, *commas, end]
        alts = [word[a + 1 : b] for a, b in itertools.pairwise(bounds)]
        prefix, suffix = word[:i], word[end + 1 :]
        tails = brace_expand(suffix)
        return [prefix + x + t for alt in alts for x in brace_expand(alt) for t in tails]


def _unescape(text: str) -> str:
    """Python's string escapes (\\n, \\t, \\\\, \\xNN, \\NNN, \\uNNNN...) as lorax's append
    decodes them; characters beyond ASCII pass through unchanged."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "\\m" stays "\\m", as in lorax
            out = text.encode("ascii", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as e:
        raise ComposerError(f"bad escape in {text!r}: {e.reason}") from None
    return out.replace(_DATA_BACKSLASH, "\\")  # a value's backslash is a backslash


# Commands that take care of a value's marked backslash themselves.
_RAW_BACKSLASH = ("append",)


# --------------------------------------------------------------------------- mako


class TemplateValue(str):
    """A variable's value inside a template: data, never template syntax.

    Mako writes it through _data_filter, which refuses line breaks and control
    characters (one value never makes two lines: no injected command or menu entry)
    and, in command templates, makes its quotes and braces literal. str methods that
    make a new string from it (lower, replace, +, ...) keep the mark."""

    name: str

    def __new__(cls, value: str, name: str = "") -> TemplateValue:
        self = super().__new__(cls, value)
        self.name = name
        return self


def _keep_mark(method: str) -> None:
    base = getattr(str, method)

    def wrapped(self: TemplateValue, *args: object, **kwargs: object) -> object:
        out = base(self, *args, **kwargs)
        return TemplateValue(out, self.name) if type(out) is str else out

    setattr(TemplateValue, method, wrapped)


for _m in ("lower", "upper", "title", "capitalize", "casefold", "strip", "lstrip", "rstrip", "replace",
           "removeprefix", "removesuffix", "__add__", "__getitem__", "__mod__", "zfill", "center", "ljust", "rjust"):
    _keep_mark(_m)
TemplateValue.__radd__ = lambda self, other: TemplateValue(other + str(self), self.name)  # type: ignore[attr-defined]


class _DataText(str):
    """The text of one ${expression} whose value is a TemplateValue."""


# Line breaks, tabs and other control characters (C0, DEL, C1, and the Unicode line
# and paragraph separators).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


# The private-use characters the parser marks data with (see _DATA_PROTECT).
_RESERVED = re.compile("[\ue000-\ue01f]")


def describe_control(ch: str) -> str:
    if "\ud800" <= ch <= "\udfff":
        return "a byte that is not UTF-8"
    names = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab"}
    return names.get(ch, f"control character U+{ord(ch):04X}")


def _data_filter(value: object) -> str:
    """Mako's default expression filter in composer's templates (instead of str)."""
    if isinstance(value, TemplateValue):
        reserved = _RESERVED.search(value)
        if reserved:
            raise ComposerError(f"the value of {value.name or 'a variable'} holds U+{ord(reserved.group()):04X}, a "
                                "private-use character composer's template parser reserves")
        bad = _CONTROL.search(value)
        if bad:
            raise ComposerError(f"the value of {value.name or 'a variable'} holds {describe_control(bad.group())}: "
                                "a value is data on one line, never a template line of its own")
        return _DataText(value)
    return str(value)


def _as_data(name: str, value: object) -> object:
    """Template variables as data: strings (also in lists and tuples) become TemplateValues."""
    if isinstance(value, str) and not isinstance(value, TemplateValue):
        return TemplateValue(value, name)
    if isinstance(value, (list, tuple)) and any(isinstance(v, str) for v in value):
        return type(value)(_as_data(name, v) for v in value)
    return value


_DATA_TRANS = str.maketrans(_DATA_PROTECT)


def _protect_data(text: str) -> str:
    t = text.translate(_DATA_TRANS)
    i = len(t) - len(t.lstrip(" "))
    return t[:i] + _DATA_MARK + t[i:] if i < len(t) else t


class _TrackingBuffer:
    """A Mako output buffer that remembers which template line wrote each chunk.

    Mako compiles a template to a Python module whose render functions call
    write() once per literal text run or ${expression}; the caller's frame and the
    module's line map (Mako metadata) give the template line of each chunk.
    """

    def __init__(self, protect_data: bool = False) -> None:
        # (text, template file, template line of the chunk start, literal text?)
        self.chunks: list[tuple[str, str | None, int | None, bool]] = []
        self._maps: dict[str, tuple[list[int], list[str]] | None] = {}
        self.protect_data = protect_data

    def write(self, text: str) -> None:
        if self.protect_data and type(text) is _DataText:
            text = _protect_data(text)
        self.chunks.append((text, *self._where(sys._getframe(1))))

    def _where(self, frame) -> tuple[str | None, int | None, bool]:
        g = frame.f_globals
        filename = g.get("_template_filename")
        modname = g.get("__name__")
        if filename is None or modname is None:
            return None, None, False
        if modname not in self._maps:
            self._maps[modname] = _line_map(modname)
        maps = self._maps[modname]
        if not maps or not maps[0]:
            return filename, None, False
        lmap, code = maps
        idx = frame.f_lineno - 1
        literal = 0 <= idx < len(code) and code[idx].lstrip().startswith(("__M_writer('", '__M_writer("'))
        return filename, lmap[min(idx, len(lmap) - 1)], literal

    def getvalue(self) -> str:
        return "".join(c[0] for c in self.chunks)

    def line_origins(self) -> list[tuple[str | None, int | None]]:
        """For each line of the output: the template file and line it started in.

        One pass over each chunk (linear in the output: a million-line template
        checks in seconds)."""
        origins: list[tuple[str | None, int | None]] = []
        at_start = True
        for text, fname, base, literal in self.chunks:
            if not text:
                continue
            # Lines that start inside this chunk: at its start (if the previous chunk
            # ended a line) and after each newline that is not its last character.
            count = text.count("\n") - (1 if text.endswith("\n") else 0)
            if base is None:
                origins.extend([(fname, None)] * (count + at_start))
            elif literal:
                # Literal text advances line by line.
                if at_start:
                    origins.append((fname, base))
                origins.extend((fname, base + k) for k in range(1, count + 1))
            else:
                # An expression's output all belongs to the line of the expression.
                origins.extend([(fname, base)] * (count + at_start))
            at_start = text.endswith("\n")
        return origins


def _line_map(modname: str) -> tuple[list[int], list[str]] | None:
    """(Python line -> template line, Python source lines) of a compiled template."""
    try:
        from mako.template import ModuleInfo

        minfo = ModuleInfo._modules.get(modname)
        if minfo is None:
            return None
        code = minfo.code
        meta = ModuleInfo.get_module_source_metadata(code, full_line_map=True)
        return list(meta["full_line_map"]), code.splitlines()
    except Exception:  # noqa: BLE001 - private Mako API; without it we report rendered lines
        return None


_MAKO_POS = re.compile(r"(?: in file '.*?')? at line: \d+ char: \d+$")


def _first_use(filename: str, name: str) -> int | None:
    """The first template line that uses `name` (outside ## comments), or None."""
    try:
        text = Path(filename).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    word = re.compile(rf"(?<![\w.]){re.escape(name)}\b")
    for n, line in enumerate(text.splitlines(), 1):
        if not line.lstrip().startswith("##") and word.search(line):
            return n
    return None


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """Parsing a big template allocates a million small objects and no garbage cycles:
    the cyclic collector's repeated passes over them made the work superlinear."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


_FILTER_IMPORT = "from composer.templates import _data_filter as _composer_data"


def _render(template: Path, lookup_dirs: Sequence[Path], data: Mapping[str, object], *,
            protect_data: bool = False) -> tuple[str, list]:
    """Render with Mako; variables are passed as data (see TemplateValue).

    protect_data: the text is for the command parser, so values' quotes and braces
    are marked literal (boot configs and other text files get the plain text)."""
    from mako import exceptions
    from mako.codegen import RESERVED_NAMES
    from mako.lookup import TemplateLookup
    from mako.runtime import Context
    from mako.template import Template

    _lorax_compat_modules()
    reserved = sorted(set(data) & set(RESERVED_NAMES))
    if reserved:
        raise ComposerError(f"{template}: template variable name(s) reserved by Mako: {', '.join(reserved)}")
    data = {k: _as_data(k, v) for k, v in data.items()}
    mako_options = {"strict_undefined": True, "default_filters": ["_composer_data"], "imports": [_FILTER_IMPORT]}
    lookup = TemplateLookup(directories=[str(d) for d in lookup_dirs], **mako_options)
    try:
        tmpl = Template(filename=str(template), uri=template.name, lookup=lookup, **mako_options)
    except exceptions.MakoException as e:
        fname = getattr(e, "filename", None) or str(template)
        msg = _MAKO_POS.sub("", str(e))
        # Mako says line 0 when the file cannot even be decoded.
        raise TemplateError(fname, getattr(e, "lineno", None) or None, f"template syntax error: {msg}") from None
    page_args = _page_args(tmpl, template, data)
    buf = _TrackingBuffer(protect_data)
    try:
        tmpl.render_context(Context(buf, **data), **page_args)
    except TemplateError:
        raise
    except Exception as e:  # noqa: BLE001 - anything raised while rendering is the template's fault
        tb = exceptions.RichTraceback(e, e.__traceback__)
        fname, lineno = str(template), None
        for rec in tb.records:
            if rec[4] is not None:
                fname, lineno = rec[4], rec[5]
        if isinstance(e, exceptions.MakoException) and getattr(e, "lineno", None):
            fname, lineno = getattr(e, "filename", None) or fname, e.lineno
        if isinstance(e, NameError):
            msg = f"undefined variable: {e}"
            # strict_undefined checks every name at the top of the render function
            # (template line 0 or a def's line): point at the first use instead.
            m = re.search(r"'(\w+)' is not defined", str(e))
            if m:
                lineno = _first_use(fname, m.group(1)) or lineno
        elif isinstance(e, ComposerError):
            msg = str(e)
        else:
            msg = f"{type(e).__name__}: {_MAKO_POS.sub('', str(e))}"
        raise TemplateError(fname, lineno or None, msg) from None
    return buf.getvalue(), buf.line_origins()


# --------------------------------------------------------------------------- lorax's variables


def _page_args(tmpl, template: Path, data: Mapping[str, object]) -> dict[str, object]:
    """Keyword arguments for the template's <%page args=.../> (lorax renders with
    template.render(**variables), which fills them); a missing one is named here
    instead of surfacing as Mako's "render_body() missing ... arguments"."""
    import inspect

    try:
        params = inspect.signature(tmpl.callable_).parameters
    except (TypeError, ValueError):
        return {}
    missing = [n for n, prm in list(params.items())[1:]
               if prm.kind in (prm.POSITIONAL_OR_KEYWORD, prm.KEYWORD_ONLY) and prm.default is prm.empty and n not in data]
    if missing:
        line = None
        try:
            for n, text in enumerate(template.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if "<%page" in text:
                    line = n
                    break
        except OSError:
            pass
        raise TemplateError(str(template), line, f"undefined variable(s) in <%page args>: {', '.join(missing)}")
    # render_body(context, <page args>, **pageargs) takes every variable by name.
    return dict(data)


def _lorax_compat_modules() -> None:
    """lorax's own templates `from pylorax.sysutils import joinpaths`; where lorax is not
    installed composer provides that one helper under lorax's module name."""
    import importlib.util
    import types

    if "pylorax.sysutils" in sys.modules:
        return
    try:
        if importlib.util.find_spec("pylorax") is not None:
            return
    except (ImportError, ValueError):
        pass
    pkg = types.ModuleType("pylorax")
    pkg.__path__ = []  # a package, so that "pylorax.sysutils" can be imported
    sysutils = types.ModuleType("pylorax.sysutils")
    sysutils.joinpaths = joinpaths  # type: ignore[attr-defined]
    pkg.sysutils = sysutils  # type: ignore[attr-defined]
    sys.modules["pylorax"] = pkg
    sys.modules["pylorax.sysutils"] = sysutils


def joinpaths(*parts: str, follow_symlinks: bool = False) -> str:
    """Path parts joined with "/" whatever their leading slashes, normalized (lorax's meaning)."""
    path = os.path.normpath("/".join(parts))
    return os.path.realpath(path) if follow_symlinks else path


@dataclass(frozen=True)
class Product:
    """lorax's `product`: formats as its name, so `${product}` still gives the name."""

    name: str
    version: str
    release: str = ""
    variant: str = ""
    bugurl: str = ""
    isfinal: bool = False

    def __str__(self) -> str:
        return self.name


# lorax's ArchData: the BCJ filter of mksquashfs per base architecture.
_BCJ = {"x86_64": "x86", "ppc64le": "powerpc"}
_BASEARCH = {"i386": "i386", "i486": "i386", "i586": "i386", "i686": "i386", "athlon": "i386",
             "amd64": "x86_64", "armv7hl": "arm", "armv7l": "arm", "armhfp": "arm", "ppc64le": "ppc64le",
             "s390x": "s390x", "aarch64": "aarch64", "arm64": "aarch64", "riscv64": "riscv64"}


@dataclass(frozen=True)
class Arch:
    """lorax's `arch`: .buildarch (the --buildarch), .basearch, .libdir, .bcj; formats as buildarch."""

    buildarch: str
    basearch: str
    libdir: str = "lib64"
    bcj: str | None = None

    @classmethod
    def of(cls, buildarch: str) -> Arch:
        base = _BASEARCH.get(buildarch, buildarch)
        return cls(buildarch=buildarch, basearch=base, bcj=_BCJ.get(base))

    def __str__(self) -> str:
        return self.buildarch


@dataclass(frozen=True)
class BootImage:
    path: str


@dataclass(frozen=True)
class Kernel:
    """lorax's kernel: .path (in the tree, "boot/vmlinuz-VER"), .version, .arch, .flavor,
    and .initrd/.upgrade/... (.path) for the images next to it. Formats as its version."""

    path: str
    version: str
    arch: str | None = None
    flavor: str | None = None
    images: Mapping[str, BootImage] = field(default_factory=dict)

    def __getattr__(self, name: str) -> BootImage:
        images = self.__dict__.get("images", {})
        if name in images:
            return images[name]
        raise AttributeError(f"kernel {self.__dict__.get('version')} has no {name}")

    def __str__(self) -> str:
        return self.version


@dataclass(frozen=True)
class Branding:
    """lorax's `branding`: the system-release and logos packages (None with --skip-branding)."""

    release: str | None = None
    logos: str | None = None


_KERNEL_FLAVORS = ("debug", "PAE", "PAEdebug", "smp", "xen", "lpae", "64k")
_KERNEL_NAME = re.compile(rf"vmlinuz-(?P<version>.+?[.-](?P<arch>[a-z0-9_]+)(\.(?P<flavor>{'|'.join(_KERNEL_FLAVORS)}))?)$")


def find_boot_kernels(tree: Path, kdir: str = "boot") -> list[Kernel]:
    """The kernels in tree/kdir named as lorax finds them (vmlinuz-VERSION with an arch
    suffix), each with the images "<type>-VERSION.img" beside it (initramfs counts as initrd)."""
    try:
        d = resolve_in_tree(tree, kdir)
        names = sorted(os.listdir(d))
    except (OSError, PathEscapeError):
        return []
    found = []
    for name in names:
        m = _KERNEL_NAME.match(name)
        if not m:
            continue
        version = m.group("version")
        images = {}
        for other in names:
            if other.endswith(f"-{version}.img"):
                kind = other.split("-", 1)[0]
                images["initrd" if kind == "initramfs" else kind] = BootImage(f"{kdir}/{other}")
        found.append(Kernel(f"{kdir}/{name}", version, m.group("arch"), m.group("flavor"), images))
    return found


def udev_escape(label: str) -> str:
    """A volume label as udev names it in /dev/disk/by-label: bytes outside
    [A-Za-z0-9#+.:=@_-] become \\xNN (lorax's `udev` filter)."""
    ok = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789#+.:=@_-")
    return "".join(c if c in ok else f"\\x{ord(c):02x}" for c in label)


def lorax_lower(text: str) -> str:
    return text.lower()


def lorax_variables(
    product: Product,
    arch: Arch,
    *,
    branding: Branding | None = None,
    isolabel: str | None = None,
    runtime_img: str = "images/install.img",
    domacboot: bool = True,
    doupgrade: bool = True,
    workdir: str = "/var/tmp",
    extra_boot_args: str = "",
) -> dict[str, object]:
    """The variables lorax gives its runtime and arch templates (those that do not
    depend on the tree; TemplateRunner adds root, inroot, outroot, kernels, glob,
    exists), plus composer's own names (version, release, variant, bugurl, isfinal)."""
    return {
        "product": product,
        "arch": arch,
        "basearch": arch.basearch,
        "libdir": arch.libdir,
        "branding": branding or Branding(),
        "runtime_img": runtime_img,
        "runtime_base": os.path.basename(runtime_img),
        "isolabel": isolabel if isolabel is not None else f"{product.name}-{product.version}-{arch.basearch}",
        "udev": udev_escape,
        "lower": lorax_lower,
        "domacboot": domacboot,
        "doupgrade": doupgrade,
        "workdir": workdir,
        "extra_boot_args": extra_boot_args,
        # where lorax copies config_files/ for runtime-postinstall.tmpl (TemplateRunner.stage_config_files)
        "configdir": "tmp/config_files",
        # composer's names (its templates before the lorax model; kept as extensions)
        "version": product.version,
        "release": product.release,
        "variant": product.variant,
        "bugurl": product.bugurl,
        "isfinal": product.isfinal,
    }



# --------------------------------------------------------------------------- commands


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


_KMOD_SUFFIX = re.compile(r"\.ko(\.(xz|gz|zst|bz2))?$")
_SYSTEMCTL_VERBS = ("enable", "disable", "mask", "unmask", "set-default")


def sample_variables(basearch: str = "x86_64") -> dict[str, object]:
    """Plausible variables for checking templates without a build (template-check)."""
    buildarch = {"i386": "i686", "arm": "armv7hl"}.get(basearch, basearch)
    product = Product("Fedora", "41", "41", "", "https://bugzilla.redhat.com", False)
    variables = lorax_variables(product, Arch.of(buildarch), branding=Branding("fedora-release", "fedora-logos"),
                                isolabel="Fedora-41-" + basearch)
    variables["rootfs_type"] = "btrfs"
    variables["configdir"] = "tmp/config_files"  # lorax gives it to runtime-postinstall.tmpl
    return variables


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
        text, origins = _render(template, [self.templatedir, template.parent], data, protect_data=True)
        with _no_gc():
            lines = self._parse(template, text, origins)
        if self.dry_run:
            debug(f"template {template.name}: {len(lines)} commands (dry run)")
            return
        info(f"template {template.name}: {len(lines)} commands")
        for line in lines:
            self._execute(line)

    def render(self, template: Path, extra: Mapping[str, object] | None = None) -> str:
        """The text Mako makes of `template` with this runner's variables (nothing runs)."""
        template = Path(template)
        if not template.is_absolute() and not template.exists():
            template = self.templatedir / template
        if not template.is_file():
            raise ComposerError(f"template not found: {template}")
        text, _ = _render(template, [self.templatedir, template.parent], self._template_data(extra))
        return text

    def install_sources(self, text: str) -> list[Path]:
        """Files of the template directory that can reach the tree: config_files/ (lorax
        copies it in for runtime-postinstall.tmpl; `install` itself reads the tree)."""
        del text  # kept for callers: the rendered text no longer names template files
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
        fname, lineno = (origins[idx] if idx < len(origins) else (None, None))
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
            raise TemplateError(fname, lineno, f"{where}the command name comes from a variable's value "
                                f"({shown!r}): values are data, never commands")
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
        if not args:
            raise _Usage("PKGGLOB...")

        def action() -> None:
            pm = self._need_pkgmgr()
            installed = pm.installed()
            for pattern in args:
                names = [n for n in installed if fnmatch.fnmatchcase(n, pattern)]
                if not names:
                    info(f"removepkg: no installed package matches {pattern}")
                for name in names:
                    count = self._delete_package_files(pm.files_of(name))
                    debug(f"removepkg {name}: {count} files removed")

        return action

    def _p_removefrom(self, args: list[str]) -> Callable[[], None]:
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
            pm = self._need_pkgmgr()
            names = [n for n in pm.installed() if fnmatch.fnmatchcase(n, pkgglob)]
            if not names:
                info(f"removefrom: no installed package matches {pkgglob}")
            for name in names:
                files = pm.files_of(name)
                hit = [f for f in files if any(fnmatch.fnmatchcase(self._pkgfile(f), g) for g in rest)]
                chosen = [f for f in files if f not in set(hit)] if allbut else hit
                count = self._delete_package_files(chosen)
                debug(f"removefrom {name}: {count} files removed")

        return action

    def _p_removekmod(self, args: list[str]) -> Callable[[], None]:
        # lorax: each GLOB names paths below lib/modules/*/kernel/ (a directory means
        # everything in it); a KEEPGLOB after --allbut keeps every file whose path
        # contains a match (it is taken as *KEEPGLOB*).
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
        for g in globs:
            check_lexical(g)
        keep_res = [re.compile(fnmatch.translate(f"*{k}*")) for k in keep]

        def action() -> None:
            removed = 0
            seen: set[Path] = set()
            kdirs = glob_in_tree(self.tree, "/usr/lib/modules/*/kernel") + glob_in_tree(self.tree, "/lib/modules/*/kernel")
            for kdir in kdirs:
                base = self._path(kdir)
                if base in seen or not base.is_dir():
                    continue
                seen.add(base)
                for g in globs:
                    for hit in glob_in_tree(base, g):
                        top = resolve_in_tree(base, hit, follow_last=False)
                        if top.is_dir() and not top.is_symlink():
                            files = [Path(d) / f for d, _, fs in os.walk(top) for f in fs]
                        else:
                            files = [top]  # composer: a module file itself (lorax walks directories only)
                        for host in files:
                            tree_path = f"{kdir}/{host.relative_to(base).as_posix()}"
                            if any(r.match(tree_path) for r in keep_res) or not os.path.lexists(host):
                                continue
                            host.unlink()
                            removed += 1
                for dirpath, _, _ in sorted(os.walk(base), key=lambda t: -len(t[0])):
                    if Path(dirpath) != base and not os.listdir(dirpath):
                        os.rmdir(dirpath)
            if removed:
                self.kmods_changed = True
            info(f"removekmod: {removed} files removed")

        return action

    def _p_run_pkg_transaction(self, args: list[str]) -> Callable[[], None]:
        if args:
            raise _Usage("(no arguments)")
        return lambda: self._need_pkgmgr().run_transaction()

    def _p_install(self, args: list[str]) -> Callable[[], None]:
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
        if not args:
            raise _Usage("DIR...")
        self._in_tree(*args)

        def action() -> None:
            for d in args:
                self._path(d).mkdir(parents=True, exist_ok=True)

        return action

    def _p_append(self, args: list[str]) -> Callable[[], None]:
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
                        host.write_bytes(new.encode("utf-8", errors="surrogateescape"))

        return action

    def _p_remove(self, args: list[str]) -> Callable[[], None]:
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
        return self._two_path_op(args, "hardlink", follow_src=True)

    def _p_copy(self, args: list[str]) -> Callable[[], None]:
        return self._two_path_op(args, "copy", follow_src=True)

    def _p_move(self, args: list[str]) -> Callable[[], None]:
        return self._two_path_op(args, "move", follow_src=False)

    def _p_chmod(self, args: list[str]) -> Callable[[], None]:
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
            else:
                run(argv, cwd=Path(tree))

        return action

    def _p_systemctl(self, args: list[str]) -> Callable[[], None]:
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
            base = ["systemctl", f"--root={os.path.abspath(self.tree)}", "--quiet", verb]
            if verb == "set-default":
                run([*base, *units])  # composer's own verb: the default target must exist
                return
            # lorax runs one unit at a time and goes on when a unit does not exist.
            for unit in units:
                try:
                    run([*base, unit])
                except ComposerError as e:
                    info(f"systemctl {verb} {unit}: failed, going on as lorax does ({str(e).splitlines()[0]})")

        return action

    def _p_log(self, args: list[str]) -> Callable[[], None]:
        message = " ".join(args)
        return lambda: info(message)

    def _p_treeinfo(self, args: list[str]) -> Callable[[], None]:
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
        return self._install_boot_file(args, "kernel")

    def _p_installinitrd(self, args: list[str]) -> Callable[[], None]:
        return self._install_boot_file(args, "initrd")

    def _p_installupgradeinitrd(self, args: list[str]) -> Callable[[], None]:
        return self._install_boot_file(args, "upgrade")

    def _p_createaddrsize(self, args: list[str]) -> Callable[[], None]:
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
        return path[len(root):] or "/" if path == root or path.startswith(root + "/") else path

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
        "xz": lambda f: lzma.LZMAFile(f, "wb", format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=level),  # noqa: SIM115
        "lzma": lambda f: lzma.LZMAFile(f, "wb", format=lzma.FORMAT_ALONE, preset=level),  # noqa: SIM115
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
