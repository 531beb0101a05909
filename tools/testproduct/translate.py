"""Pure translation rules from Debian package metadata to RPM spec syntax.

Nothing here runs commands or touches the file system, so it is all unit-tested.

Version mapping
    Debian ``[epoch:]upstream[-revision]`` becomes RPM ``Epoch: epoch``,
    ``Version: upstream`` (``-`` and ``:`` turned into ``_``, which rpm compares
    as a plain separator) and ``Release: revision`` (``0`` for native packages).
    ``~`` keeps its meaning (sorts before everything) in both systems.

Dependencies
    ``Depends`` -> ``Requires``, ``Pre-Depends`` -> ``Requires(pre)``; an
    alternative ``a | b`` becomes the rich dependency ``(a or b)``; operators
    ``>= <= = << >>`` become ``>= <= = < >``. Arch qualifiers (``:any``) are
    dropped. Given the set of packages that will be in the repository, an
    alternative nothing provides is dropped, and a version constraint that no
    provider satisfies under rpm's comparison rules is dropped too (rpm and
    dpkg order a few strings differently; the closure apt chose must install).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

DEB_TO_RPM_OP = {">=": ">=", "<=": "<=", "=": "=", ">>": ">", "<<": "<", ">": ">=", "<": "<="}
DEB_TO_RPM_ARCH = {"amd64": "x86_64", "all": "noarch", "i386": "i686", "arm64": "aarch64"}


# ---------------------------------------------------------------- versions


@dataclass(frozen=True)
class EVR:
    epoch: str | None  # None: no epoch written (rpm treats it as 0)
    version: str
    release: str | None  # None: no release written (matches any release)

    def __str__(self) -> str:
        s = f"{self.epoch}:" if self.epoch else ""
        s += self.version
        if self.release is not None:
            s += f"-{self.release}"
        return s


def _rpm_safe(part: str) -> str:
    # rpm allows alphanumerics and . _ + ~ ^ in version and release; Debian
    # additionally allows - and : in the upstream part.
    return re.sub(r"[^A-Za-z0-9._+~^]", "_", part)


def deb_to_evr(debver: str, *, native_release: str | None = "0") -> EVR:
    """Map a Debian version to an rpm EVR.

    native_release is the Release given to versions without a Debian revision:
    "0" for a package's own version, None inside a dependency (no release
    written, so rpm compares the version only, as dpkg does for "1.2" vs "1.2-3"
    when the constraint is >=).
    """
    v = debver.strip()
    if not v:
        raise ValueError("empty Debian version")
    epoch: str | None = None
    m = re.match(r"^(\d+):(.*)$", v)
    if m:
        epoch, v = m.group(1), m.group(2)
        if int(epoch) == 0:
            epoch = None
    if "-" in v:
        upstream, revision = v.rsplit("-", 1)
        release: str | None = _rpm_safe(revision)
    else:
        upstream, release = v, native_release
    if not upstream:
        raise ValueError(f"bad Debian version {debver!r}")
    return EVR(epoch, _rpm_safe(upstream), release)


def _isalnum(c: str) -> bool:
    return c.isascii() and c.isalnum()


def _next_segment(s: str, i: int) -> int:
    """Where the next segment, `~` or `^` starts at or after `i` (other characters separate)."""
    while i < len(s) and not _isalnum(s[i]) and s[i] not in "~^":
        i += 1
    return i


def _tilde_caret_cmp(ca: str, cb: str) -> int | None:
    """The order `~` or `^` at this place decides: -1 or 1; 0 when both have the same one
    (step over it); None when neither has one. ca, cb: the next characters ("" at the end)."""
    if ca == "~" or cb == "~":
        if ca != "~":
            return 1
        return -1 if cb != "~" else 0
    if ca == "^" or cb == "^":
        if not ca:
            return -1  # "^" sorts after the end...
        if not cb:
            return 1
        if ca != "^":
            return 1  # ...but before anything else
        return -1 if cb != "^" else 0
    return None


def _segment_end(s: str, i: int, numeric: bool) -> int:
    while i < len(s) and s[i].isascii() and (s[i].isdigit() if numeric else s[i].isalpha()):
        i += 1
    return i


def _segment_cmp(s1: str, s2: str, numeric: bool) -> int:
    """Order of two segments of the type of s1 (s2 empty: b has the other type there)."""
    if not s2:
        return 1 if numeric else -1  # numeric beats alpha
    if numeric:
        s1, s2 = s1.lstrip("0"), s2.lstrip("0")
        if len(s1) != len(s2):
            return 1 if len(s1) > len(s2) else -1
    if s1 != s2:
        return 1 if s1 > s2 else -1
    return 0


def _segments_cmp(a: str, b: str) -> int:
    """rpm's version string comparison (rpmvercmp), re-implemented from its documented rules:
    strings are split into alternating digit and letter segments, other characters
    separate; numeric segments compare as numbers and beat letter segments; ``~``
    sorts before anything (even the end), ``^`` after the end but before anything else."""
    if a == b:
        return 0
    i = j = 0
    while i < len(a) or j < len(b):
        i, j = _next_segment(a, i), _next_segment(b, j)
        ca = a[i] if i < len(a) else ""
        cb = b[j] if j < len(b) else ""
        order = _tilde_caret_cmp(ca, cb)
        if order is None:
            if not (ca and cb):
                break
            numeric = ca.isdigit()
            si, sj = i, j
            i, j = _segment_end(a, i, numeric), _segment_end(b, j, numeric)
            order = _segment_cmp(a[si:i], b[sj:j], numeric)
        else:
            i, j = i + 1, j + 1  # past the ~ or ^ both have
        if order:
            return order
    ra, rb = i < len(a), j < len(b)
    if not ra and not rb:
        return 0
    return 1 if ra else -1


def rpmvercmp(a: str, b: str) -> int:
    return _segments_cmp(a, b)


def evr_cmp(a: EVR, b: EVR) -> int:
    """Compare as rpm/libsolv do for dependency matching: a missing epoch is 0,
    a missing release on either side is not compared."""
    c = rpmvercmp(a.epoch or "0", b.epoch or "0")
    if c:
        return c
    c = rpmvercmp(a.version, b.version)
    if c:
        return c
    if a.release is None or b.release is None:
        return 0
    return rpmvercmp(a.release, b.release)


def evr_satisfies(provided: EVR, op: str, wanted: EVR) -> bool:
    c = evr_cmp(provided, wanted)
    return {
        "=": c == 0,
        ">=": c >= 0,
        "<=": c <= 0,
        ">": c > 0,
        "<": c < 0,
    }[op]


# ------------------------------------------------------------ dependencies


@dataclass(frozen=True)
class DebDep:
    name: str
    op: str | None = None  # Debian operator
    version: str | None = None


_DEP_RE = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9.+\-]*)(?::[a-z0-9\-]+)?\s*"
    r"(?:\(\s*(?P<op><<|>>|<=|>=|=|<|>)\s*(?P<ver>[^)\s]+)\s*\))?\s*"
    r"(?:\[[^\]]*\])?\s*(?:<[^>]*>\s*)*$"
)


def parse_dep_field(value: str) -> list[list[DebDep]]:
    """Parse a Depends-like field into groups of alternatives."""
    groups: list[list[DebDep]] = []
    value = " ".join(value.split())
    if not value:
        return groups
    for group in value.split(","):
        if not group.strip():
            continue
        alts: list[DebDep] = []
        for alt in group.split("|"):
            m = _DEP_RE.match(alt)
            if not m:
                raise ValueError(f"cannot parse Debian dependency {alt.strip()!r}")
            alts.append(DebDep(m.group("name"), m.group("op"), m.group("ver")))
        groups.append(alts)
    return groups


@dataclass
class Universe:
    """What the repository will provide: package names and their Provides."""

    # name -> list of provided EVRs (None: unversioned provide)
    provides: dict[str, list[EVR | None]] = field(default_factory=dict)

    def add(self, name: str, evr: EVR | None) -> None:
        self.provides.setdefault(name, []).append(evr)

    def satisfies(self, name: str, op: str | None, evr: EVR | None) -> tuple[bool, bool]:
        """(name is provided at all, the versioned constraint holds for some provider)."""
        if name not in self.provides:
            return False, False
        if op is None or evr is None:
            return True, True
        for p in self.provides[name]:
            # rpm: an unversioned provide satisfies any versioned requirement
            if p is None or evr_satisfies(p, op, evr):
                return True, True
        return True, False


def rpm_dep_atom(dep: DebDep) -> str:
    if dep.op is None or dep.version is None:
        return dep.name
    return f"{dep.name} {DEB_TO_RPM_OP[dep.op]} {deb_to_evr(dep.version, native_release=None)}"


def translate_group(alts: Sequence[DebDep], universe: Universe | None = None) -> str | None:
    """One Debian dependency group -> one rpm requirement (None: drop it)."""
    out: list[str] = []
    for d in alts:
        if universe is not None:
            op = DEB_TO_RPM_OP[d.op] if d.op else None
            evr = deb_to_evr(d.version, native_release=None) if d.version else None
            known, ok = universe.satisfies(d.name, op, evr)
            if not known:
                continue
            if not ok:
                d = DebDep(d.name)
        atom = rpm_dep_atom(d)
        if atom not in out:
            out.append(atom)
    if not out:
        return None
    if len(out) == 1:
        return out[0]
    return "(" + " or ".join(out) + ")"


def translate_field(value: str, universe: Universe | None = None) -> list[str]:
    reqs: list[str] = []
    for group in parse_dep_field(value):
        r = translate_group(group, universe)
        if r is not None and r not in reqs:
            reqs.append(r)
    return reqs


def translate_provides(value: str) -> list[tuple[str, EVR | None]]:
    """Debian Provides (only unversioned or '=' entries are legal) -> (name, evr)."""
    out: list[tuple[str, EVR | None]] = []
    for group in parse_dep_field(value):
        for d in group:
            evr = deb_to_evr(d.version) if d.version and d.op == "=" else None
            out.append((d.name, evr))
    return out


# ------------------------------------------------------------------ files

_GLOB_ESCAPES = {"[": "[[]", "]": "[]]", "*": "[*]", "?": "[?]", "{": "[{]", "}": "[}]"}


def escape_files_path(path: str) -> str:
    """A literal path as a %files entry: rpm expands macros and globs there."""
    if "\n" in path or '"' in path:
        raise ValueError(f"cannot express path in %files: {path!r}")
    out = "".join(_GLOB_ESCAPES.get(c, c) for c in path).replace("%", "%%")
    # rpm's glob has no working escape for a backslash (systemd's "\x2d" unit
    # names), so let "?" match it (rpmbuild then globs, which is fine).
    out = out.replace("\\", "?")
    if any(c.isspace() for c in out):
        out = f'"{out}"'
    return out


def spec_text(value: str) -> str:
    """Free text inside a spec (Summary, %description): no macro expansion."""
    return value.replace("%", "%%")


def debian_description(desc: str) -> tuple[str, str]:
    """Debian Description field -> (summary, body)."""
    lines = desc.splitlines() or [""]
    summary = lines[0].strip() or "no summary"
    body: list[str] = []
    for line in lines[1:]:
        s = line[1:] if line.startswith(" ") else line
        body.append("" if s.strip() == "." else s)
    text = "\n".join(body).strip() or summary
    return summary, text


def parse_control(text: str) -> dict[str, str]:
    """An RFC 822 style control paragraph -> {Field: value} (continuation lines kept)."""
    fields: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if not line.strip() and key is None:
            continue
        if line[:1] in (" ", "\t") and key is not None:
            fields[key] += "\n" + line
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip()
            fields[key] = value.strip()
    return fields


USR_MERGE = ("bin", "sbin", "lib", "lib64", "lib32", "libx32")
# Debian's /var/run and /var/lock are links to /run and /run/lock
VAR_MOVES = {"/var/run": "/run", "/var/lock": "/run/lock"}


def merged_path(path: str) -> str:
    """Where a path of a Debian package lives in the usr-merged tree."""
    parts = path.split("/", 2)  # '', top, rest
    if len(parts) >= 2 and parts[1] in USR_MERGE:
        return "/usr" + path
    for old, new in VAR_MOVES.items():
        if path == old or path.startswith(old + "/"):
            return new + path[len(old) :]
    return path


def lang_of(path: str) -> str | None:
    """The %lang of a translation file (/usr/share/locale/<lang>/...), else None."""
    m = re.match(r"^/usr/share/locale/([^/]+)/.+", path)
    if not m:
        return None
    lang = m.group(1)
    if not re.fullmatch(r"[A-Za-z]{2,3}(_[A-Za-z0-9]+)?(\.[A-Za-z0-9\-]+)?(@[A-Za-z0-9]+)?", lang):
        return None
    return lang


def is_doc(path: str) -> bool:
    return path.startswith(("/usr/share/doc/", "/usr/share/man/", "/usr/share/info/"))
