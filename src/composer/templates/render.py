"""Mako rendering with line tracking: variables as data (TemplateValue), and every rendered line mapped
back to its source line for errors."""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import inspect
import os
import re
import sys
import types
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from composer.run import ComposerError
from composer.templates.errors import TemplateError
from composer.templates.lexer import _DATA_MARK, _DATA_PROTECT


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


for _m in (
    "lower",
    "upper",
    "title",
    "capitalize",
    "casefold",
    "strip",
    "lstrip",
    "rstrip",
    "replace",
    "removeprefix",
    "removesuffix",
    "__add__",
    "__getitem__",
    "__mod__",
    "zfill",
    "center",
    "ljust",
    "rjust",
):
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
            raise ComposerError(
                f"the value of {value.name or 'a variable'} holds U+{ord(reserved.group()):04X}, a "
                "private-use character composer's template parser reserves"
            )
        bad = _CONTROL.search(value)
        if bad:
            raise ComposerError(
                f"the value of {value.name or 'a variable'} holds {describe_control(bad.group())}: "
                "a value is data on one line, never a template line of its own"
            )
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
        from mako.template import ModuleInfo  # deferred, as in render_template

        minfo = ModuleInfo._modules.get(modname)
        if minfo is None:
            return None
        code = minfo.code
        meta = ModuleInfo.get_module_source_metadata(code, full_line_map=True)
        return list(meta["full_line_map"]), code.splitlines()
    except Exception:  # private Mako API; without it we report rendered lines
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


_FILTER_IMPORT = "from composer.templates.render import _data_filter as _composer_data"


def render_template(
    template: Path, lookup_dirs: Sequence[Path], data: Mapping[str, object], *, protect_data: bool = False
) -> tuple[str, list]:
    """Render with Mako; variables are passed as data (see TemplateValue).

    protect_data: the text is for the command parser, so values' quotes and braces
    are marked literal (boot configs and other text files get the plain text)."""
    # Deferred: Mako is imported only when a template is rendered (not by `composer --help`).
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
    except Exception as e:  # anything raised while rendering is the template's fault
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


def _page_args(tmpl, template: Path, data: Mapping[str, object]) -> dict[str, object]:
    """Keyword arguments for the template's <%page args=.../> (lorax renders with
    template.render(**variables), which fills them); a missing one is named here
    instead of surfacing as Mako's "render_body() missing ... arguments"."""
    try:
        params = inspect.signature(tmpl.callable_).parameters
    except (TypeError, ValueError):
        return {}
    missing = [
        n
        for n, prm in list(params.items())[1:]
        if prm.kind in (prm.POSITIONAL_OR_KEYWORD, prm.KEYWORD_ONLY) and prm.default is prm.empty and n not in data
    ]
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
