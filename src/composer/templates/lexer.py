"""Splitting a rendered line into words: POSIX-shell quoting, brace expansion, and the marks that keep
variable values data (their quotes, backslashes and braces literal)."""

from __future__ import annotations

import itertools
import warnings

from composer.run import ComposerError

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
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "\\m" stays "\\m", as in lorax
            out = text.encode("ascii", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as e:
        raise ComposerError(f"bad escape in {text!r}: {e.reason}") from None
    return out.replace(_DATA_BACKSLASH, "\\")  # a value's backslash is a backslash


# Commands that take care of a value's marked backslash themselves.
_RAW_BACKSLASH = ("append",)
