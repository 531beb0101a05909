"""`composer mkksiso`: remaster an existing boot.iso without root, loop device or mount.

Command line as lorax's mkksiso (embed a kickstart, add files, edit the kernel command
line, change the volume id, add an updates image); a pipeline in two steps:

* plan (read only): the volume descriptors (volume id, dates, Joliet) read from the
  file, the El Torito and system-area layout from `xorriso -report_el_torito
  as_mkisofs`, the boot menus extracted with osirrox (GRUB for BIOS and UEFI,
  isolinux) and, inside efiboot.img, read with mtools; every menu edited in memory;
* execute: one xorriso run loads the input, replays its boot layout (`-boot_image any
  replay`: El Torito BIOS + UEFI images, hybrid MBR/GPT, appended partitions), swaps
  in the edited menus, the edited efiboot.img (a file in the ISO or an appended
  partition, both when both exist) and the added files, then implantisomd5; the
  output appears under its name only when complete.

Nothing from the ISO is ever run (no grub-mkimage, no mkefiboot: efiboot.img is
edited in place with mcopy), so an ISO of any architecture can be remastered on any
host. With SOURCE_DATE_EPOCH (or --source-date-epoch) the output is byte-for-byte
reproducible: xorriso's dates and GPT GUID are fixed, added and edited files dated at
the epoch. The volume's creation/modification date (what GRUB's `search --fs-uuid`
sees) is always kept from the input, so such menus keep finding the medium.
"""

from __future__ import annotations

import dataclasses
import errno
import fnmatch
import os
import re
import shlex
import stat
import time
from collections.abc import Sequence
from pathlib import Path

from composer.images.efiboot import mtools_env
from composer.images.iso import check_volid, iso_date
from composer.kickstart import read_kickstart
from composer.preflight import MENU_SYNTAX, check_kernel_arg, check_kernel_args, check_line, describe_char
from composer.reproducible import seed_uuid
from composer.run import CommandError, ComposerError, info, output_path, run, scratch_beside, stage
from composer.templates import udev_escape

SECTOR = 2048
# Boot menus composer edits, by where they live in the ISO (fnmatch patterns, case
# sensitive as ISO 9660 with Rock Ridge is) and their kind.
GRUB_MENUS = ("EFI/BOOT/grub.cfg", "EFI/BOOT/BOOT.conf", "EFI/BOOT/*/grub.cfg", "boot/grub2/grub.cfg", "boot/grub/grub.cfg")
SYSLINUX_MENUS = ("isolinux/isolinux.cfg", "isolinux/*.cfg", "syslinux/syslinux.cfg", "boot/isolinux/isolinux.cfg")
# Inside efiboot.img (paths as mdir -/ -b lists them, without "::/").
EFIBOOT_MENUS = ("EFI/BOOT/grub.cfg", "EFI/BOOT/BOOT.conf", "EFI/BOOT/*/grub.cfg")
# Lines that carry a kernel command line: GRUB's `linux PATH ARGS`, syslinux's `append ARGS`.
GRUB_KERNEL_COMMANDS = ("linux", "linuxefi", "linux16")
SYSLINUX_APPEND = "append"
# A name we put on the command line as inst.ks=hd:LABEL=V:/NAME needs no quoting.
_ROOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


# --------------------------------------------------------------------------- pure logic


def split_args(text: str) -> list[str]:
    """Split a command line into words as GRUB and the kernel do (quotes group, backslash
    escapes), keeping every word's text as written, so untouched words come back unchanged."""
    words: list[str] = []
    cur: list[str] = []
    quote = ""
    in_word = False
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            cur.append(c)
            if c == quote:
                quote = ""
            elif c == "\\" and quote == '"' and i + 1 < len(text):
                i += 1
                cur.append(text[i])
        elif c.isspace():
            if in_word:
                words.append("".join(cur))
                cur, in_word = [], False
        else:
            in_word = True
            cur.append(c)
            if c in "'\"":
                quote = c
            elif c == "\\" and i + 1 < len(text):
                i += 1
                cur.append(text[i])
        i += 1
    if in_word:
        words.append("".join(cur))
    return words


def unquote(word: str) -> str:
    """The value a word stands for: quotes removed, backslash escapes resolved."""
    try:
        return "".join(shlex.split(word, posix=True)) if any(c in word for c in "'\"\\") else word
    except ValueError:
        return word


def arg_key(word: str) -> str:
    return unquote(word).split("=", 1)[0]


@dataclasses.dataclass(frozen=True)
class ArgEdit:
    """How to change every kernel command line: remove (a NAME removes every NAME and
    NAME=..., a NAME=VALUE that one argument), then append what is not there yet."""

    remove: tuple[str, ...] = ()
    add: tuple[str, ...] = ()

    def apply(self, words: Sequence[str]) -> list[str]:
        out = [w for w in words if not self._removed(w)]
        present = {unquote(w) for w in out}
        for a in self.add:
            if unquote(a) not in present:
                out.append(a)
                present.add(unquote(a))
        return out

    def _removed(self, word: str) -> bool:
        value = unquote(word)
        key = value.split("=", 1)[0]
        return any(r == value if "=" in r else r == key for r in self.remove)


def replace_volid(text: str, old: str, new: str) -> str:
    """The volume id in label references: LABEL=/CDLABEL= (udev-escaped, as on the
    kernel command line) and GRUB's `search --label`/`-l` (as is, maybe quoted).
    Words that merely contain the old id (a menu title) are left alone."""
    if old == new:
        return text
    old_esc, new_esc = udev_escape(old), udev_escape(new)
    text = re.sub(r"(LABEL=)" + re.escape(old_esc) + r"(?=$|[\s:'\"/])", lambda m: m.group(1) + new_esc, text)
    return re.sub(
        r"(\s(?:--label|-l)[= ]+)(['\"]?)" + re.escape(old) + r"\2(?=\s|$)",
        lambda m: m.group(1) + m.group(2) + new + m.group(2),
        text,
        flags=re.M,
    )


@dataclasses.dataclass(frozen=True)
class MenuEdit:
    """Everything done to the text of one boot menu."""

    args: ArgEdit
    old_volid: str
    new_volid: str
    replace: tuple[tuple[str, str], ...] = ()


def edit_menu(text: str, kind: str, edit: MenuEdit, where: str = "menu") -> tuple[str, int]:
    """(new text, number of kernel command lines edited); kind "grub" or "syslinux".
    The result is checked (check_edited): ComposerError if it would not boot as meant."""
    original = text
    for a, b in edit.replace:
        text = text.replace(a, b)
    text = replace_volid(text, edit.old_volid, edit.new_volid)
    lines = text.splitlines(keepends=True)
    count = 0
    for n, line in enumerate(lines):
        body = line.rstrip("\r\n")
        eol = line[len(body) :]
        stripped = body.lstrip()
        indent = body[: len(body) - len(stripped)]
        first, rest = (re.split(r"\s", stripped, maxsplit=1) + [""])[:2]
        tail = ""
        if kind == "grub" and first in GRUB_KERNEL_COMMANDS:
            # Only this command's words: a `; next` or `# comment` after them stays after them.
            end = grub_command_end(rest)
            rest, tail = rest[:end], rest[end:].strip()
            words = split_args(rest)
            if not words:
                continue
            head, args = [first, words[0]], words[1:]
        elif kind == "syslinux" and first.lower() == SYSLINUX_APPEND:
            head, args = [first], split_args(rest)
        else:
            continue
        lines[n] = indent + " ".join(head + edit.args.apply(args) + ([tail] if tail else [])) + eol
        count += 1
    new = "".join(lines)
    if new != original:
        check_edited(original, new, kind, edit, where)
    return new, count


# --------------------------------------------------------------------------- menu syntax

# GRUB script's operators outside quotes (grub-core/script/yylex.l): each ends a word.
GRUB_OPERATORS = ";|&<>{}"


def grub_command_end(text: str) -> int:
    """Where the first GRUB command in `text` (one line) ends: at an unquoted operator or
    a comment (`#` starting a word); len(text) if it runs to the end."""
    quote = ""
    i, word = 0, False
    while i < len(text):
        c = text[i]
        if quote:
            if c == quote:
                quote = ""
            elif c == "\\" and quote == '"':
                i += 1
        elif c in "'\"":
            quote, word = c, True
        elif c == "\\":
            i, word = i + 1, True
        elif c in GRUB_OPERATORS or (c == "#" and not word):
            return i
        else:
            word = not c.isspace()
        i += 1
    return len(text)


def grub_tokens(text: str) -> tuple[list[tuple[int, str, str]], bool]:
    """GRUB script as (line, "word"|"op", text) tokens, words with quotes and escapes
    resolved, comments dropped; and whether the text ends inside a quote. Enough of
    GRUB's lexer to see commands, blocks and arguments, not to run anything."""
    tokens: list[tuple[int, str, str]] = []
    cur: list[str] = []
    line = start = 0
    quote, word = "", False
    i = 0

    def end_word() -> None:
        nonlocal cur, word
        if word:
            tokens.append((start, "word", "".join(cur)))
        cur, word = [], False

    while i < len(text):
        c = text[i]
        if c == "\n":
            line += 1
        if quote:
            if c == quote:
                quote = ""
            elif c == "\\" and quote == '"' and i + 1 < len(text) and text[i + 1] in '$"\\\n':
                i += 1
                line += text[i] == "\n"
                cur.append("" if text[i] == "\n" else text[i])
            else:
                cur.append(c)
        elif c == "\\" and i + 1 < len(text):
            i += 1
            line += text[i] == "\n"
            start, word = (start if word else line), True
            cur.append("" if text[i] == "\n" else text[i])
        elif c == "#" and not word:
            while i + 1 < len(text) and text[i + 1] != "\n":
                i += 1
        elif c == "$" and text[i + 1 : i + 2] == "{" and "}" in text[i:]:
            close = text.index("}", i)
            start, word = (start if word else line), True
            cur.append(text[i : close + 1])
            i = close
        elif c.isspace() or c in GRUB_OPERATORS:
            end_word()
            if c == "\n" or c in GRUB_OPERATORS:
                tokens.append((line - (c == "\n"), "op", c))
        else:
            if c in "'\"":
                quote = c
            else:
                cur.append(c)
            start, word = (start if word else line), True
        i += 1
    end_word()
    return tokens, bool(quote)


def grub_commands(text: str) -> list[tuple[int, list[str]]]:
    """(line, words) of every simple GRUB command in `text`."""
    out: list[tuple[int, list[str]]] = []
    words: list[str] = []
    first = 0
    for line, kind, value in grub_tokens(text)[0] + [(0, "op", "\n")]:
        if kind == "word":
            first = first if words else line
            words.append(value)
        elif words:
            out.append((first, words))
            words = []
    return out


def _grub_shape(text: str) -> tuple[list[tuple[int, str]], bool]:
    """What must not change when a menu is edited: every operator (;, braces, newlines)
    on its line, and whether the text ends inside a quote."""
    tokens, open_quote = grub_tokens(text)
    return [(line, value) for line, kind, value in tokens if kind == "op"], open_quote


def _kernel_lines(text: str, kind: str) -> list[tuple[int, list[str]]]:
    """(line, arguments) of every kernel command line, as the boot loader reads them."""
    if kind == "grub":
        return [(n, words[2:]) for n, words in grub_commands(text) if words[0] in GRUB_KERNEL_COMMANDS]
    out = []
    for n, line in enumerate(text.splitlines()):
        words = line.split()
        if words and words[0].lower() == SYSLINUX_APPEND:
            out.append((n, words[1:]))
    return out


def check_edited(old: str, new: str, kind: str, edit: MenuEdit, where: str) -> None:
    """The edited menu is the old one with other arguments: the same lines, the same
    commands on each (no `;`, brace, comment or quote moved), as many kernel command
    lines, and every argument added is one whole argument on each of them."""
    how = (
        "--replace changes text anywhere in a menu: give FROM and TO that leave its commands, quotes and braces as they are"
        if edit.replace
        else "this menu cannot be edited safely; --skip-mkefiboot leaves efiboot.img as it is"
    )
    old_lines, new_lines = old.splitlines(), new.splitlines()
    if len(old_lines) != len(new_lines):
        raise ComposerError(f"{where}: the edit changes its number of lines; {how}")
    if kind == "grub":
        old_shape, new_shape = _grub_shape(old), _grub_shape(new)
        if old_shape != new_shape:
            # The first line where an operator moved (or the last, if only the ending quote differs).
            o, w = old_shape[0], new_shape[0]
            i = next((k for k in range(min(len(o), len(w))) if o[k] != w[k]), min(len(o), len(w)))
            n = min([ops[i][0] for ops in (o, w) if i < len(ops)] or [len(new_lines) - 1])
            raise ComposerError(
                f"{where}:{n + 1}: the edited line {new_lines[n].strip()!r} is no longer the command it was; {how}"
            )
    before, after = _kernel_lines(old, kind), _kernel_lines(new, kind)
    if len(before) != len(after):
        raise ComposerError(f"{where}: the edit leaves {len(after)} kernel command lines of {len(before)}; {how}")
    added = [unquote(a) for a in edit.args.add]
    for n, args in after:
        missing = [a for a in added if a not in args]
        if missing:
            raise ComposerError(
                f"{where}:{n + 1}: {missing[0]} is not one argument of the edited kernel "
                f"command line {new_lines[n].strip()!r}; {how}"
            )


def menu_kind(
    path: str, grub: Sequence[str] = GRUB_MENUS, syslinux: Sequence[str] = SYSLINUX_MENUS, *, fold_case: bool = False
) -> str | None:
    """ "grub", "syslinux" or None (not a menu we edit); fold_case for FAT names."""
    if fold_case:
        path, grub, syslinux = path.lower(), [g.lower() for g in grub], [s.lower() for s in syslinux]
    if any(fnmatch.fnmatchcase(path, p) for p in grub):
        return "grub"
    if any(fnmatch.fnmatchcase(path, p) for p in syslinux):
        return "syslinux"
    return None


# --------------------------------------------------------------------------- the input ISO


@dataclasses.dataclass(frozen=True)
class VolumeInfo:
    volid: str
    modified: str  # YYYYMMDDhhmmsscc (GMT) as xorriso's -volume_date uuid wants it, or ""
    joliet: bool


def read_volume_info(iso: Path) -> VolumeInfo:
    """The primary volume descriptor's id and modification date, and whether a Joliet
    tree is there; ComposerError if iso is not an ISO 9660 image."""
    volid = modified = None
    joliet = False
    try:
        with iso.open("rb") as f:
            for n in range(16, 64):
                f.seek(n * SECTOR)
                vd = f.read(SECTOR)
                if len(vd) < SECTOR or vd[1:6] != b"CD001":
                    break
                if vd[0] == 1 and volid is None:
                    volid = vd[40:72].decode("ascii", "replace").rstrip(" \0")
                    date = vd[830:846].decode("ascii", "replace")
                    modified = date if date.isdigit() and date.strip("0") else ""
                elif vd[0] == 2 and vd[88:91] in (b"%/@", b"%/C", b"%/E"):
                    joliet = True
                elif vd[0] == 255:
                    break
    except OSError as e:
        raise ComposerError(f"INPUT {iso}: {e.strerror or e}") from None
    if volid is None:
        raise ComposerError(f"INPUT {iso}: not an ISO 9660 image (no volume descriptor at sector 16)")
    return VolumeInfo(volid, modified or "", joliet)


@dataclasses.dataclass(frozen=True)
class Interval:
    """A byte range of a host file, from xorriso's --interval:local_fs:START-END::PATH."""

    path: Path
    start: int
    end: int  # exclusive


_UNITS = {"": 1, "d": 512, "s": 2048, "k": 1024, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_interval(spec: str) -> Interval | None:
    m = re.fullmatch(r"--interval:local_fs:(\d+)([dskmgt]?)-(\d+)([dskmgt]?):[^:]*:(.+)", spec)
    if not m:
        return None
    start = int(m.group(1)) * _UNITS[m.group(2)]
    end = (int(m.group(3)) + 1) * _UNITS[m.group(4)]
    return Interval(Path(m.group(5)), start, end)


@dataclasses.dataclass(frozen=True)
class BootLayout:
    """What -report_el_torito as_mkisofs says about the boot equipment."""

    options: tuple[tuple[str, ...], ...]  # one tuple per report line (shlex-split)
    bios_image: str | None  # -b path in the ISO
    efi_image: str | None  # -e value: an ISO path or an --interval: spec
    appended: dict[int, tuple[str, str]]  # partition number -> (type code, source)

    @property
    def efi_partition(self) -> int | None:
        """The appended partition the EFI El Torito image is, if it is one."""
        m = re.match(r"--interval:appended_partition_(\d+)", self.efi_image or "")
        return int(m.group(1)) if m else None


def parse_layout(report_lines: Sequence[str]) -> BootLayout:
    opts: list[tuple[str, ...]] = []
    bios = efi = None
    appended: dict[int, tuple[str, str]] = {}
    for line in report_lines:
        try:
            words = tuple(shlex.split(line))
        except ValueError:
            continue
        if not words:
            continue
        opts.append(words)
        if words[0] == "-b" and len(words) > 1:
            bios = words[1]
        elif words[0] == "-e" and len(words) > 1:
            efi = words[1]
        elif words[0] == "-append_partition" and len(words) > 3 and words[1].isdigit():
            appended[int(words[1])] = (words[2], words[3])
    return BootLayout(tuple(opts), bios, efi, appended)


@dataclasses.dataclass(frozen=True)
class FileAttr:
    """Owner and mode of a file in the ISO (Rock Ridge), restored on files we replace."""

    mode: int
    uid: str
    gid: str


_LSDL = re.compile(r"^([-dlcbps][-rwxsStT]{9})\s+\d+\s+(\S+)\s+(\S+)\s+\S+\s+\S+\s+\S+\s+\S+\s+('.*)$")


def parse_mode(text: str) -> int:
    """'-rwsr-x--T' -> 0o5754 (ls -l permission letters to a mode)."""
    mode = 0
    for i, c in enumerate(text[1:10]):
        if c in "rwxst":
            mode |= 1 << (8 - i)
        if c in "sS":
            mode |= 0o4000 if i == 2 else 0o2000
        elif c in "tT":
            mode |= 0o1000
    return mode


def inspect_iso(iso: Path) -> tuple[BootLayout, dict[str, FileAttr]]:
    """The boot layout and every file (path without the leading '/') of an ISO."""
    try:
        proc = run(
            [
                "xorriso",
                "-indev",
                os.fspath(iso),
                "-report_el_torito",
                "as_mkisofs",
                "-find",
                "/",
                "-type",
                "f",
                "-exec",
                "lsdl",
                "--",
            ],
            capture=True,
            env={"LANG": "C", "LC_ALL": "C"},
        )
    except CommandError as e:
        raise ComposerError(f"INPUT {iso}: xorriso cannot read it: {e.reason} (damaged or truncated ISO?)") from None
    report: list[str] = []
    files: dict[str, FileAttr] = {}
    for line in proc.stdout.decode(errors="surrogateescape").splitlines():
        m = _LSDL.match(line)
        if m:
            try:
                path = shlex.split(m.group(4))[0].lstrip("/")
            except (ValueError, IndexError):
                continue
            files[path] = FileAttr(parse_mode(m.group(1)), m.group(2), m.group(3))
        elif line.startswith("-"):
            report.append(line)
    return parse_layout(report), files


# --------------------------------------------------------------------------- options and plan


@dataclasses.dataclass(frozen=True)
class MkksisoOptions:
    input: Path
    output: Path
    ks: Path | None = None
    add: tuple[Path, ...] = ()
    cmdline: str = ""
    rm_args: tuple[str, ...] = ()
    volid: str | None = None
    updates: Path | None = None
    replace: tuple[tuple[str, str], ...] = ()
    skip_efiboot: bool = False
    force: bool = False
    implant_md5: bool = True
    source_date_epoch: int | None = None


@dataclasses.dataclass(frozen=True)
class MenuChange:
    where: str  # ISO path, or "efiboot.img:PATH"
    kind: str
    old: str
    new: str
    lines: int
    host: Path | None = None  # the edited file (ISO menus; efiboot.img's are written into the image)


@dataclasses.dataclass(frozen=True)
class Plan:
    opts: MkksisoOptions
    volume: VolumeInfo
    layout: BootLayout
    new_volid: str
    args: ArgEdit
    menus: tuple[MenuChange, ...]
    additions: tuple[tuple[Path, str], ...]  # (host path, ISO path)
    efiboot: EfiBoot | None
    attrs: dict[str, FileAttr]  # of the input's files (those replaced keep theirs)


@dataclasses.dataclass(frozen=True)
class EfiBoot:
    """Where the input's efiboot.img lives, and its menus edited."""

    source: str  # ISO path or "partition N"
    iso_paths: tuple[str, ...]  # copies inside the ISO (files) to replace
    partitions: tuple[tuple[int, str], ...]  # appended partitions to replace: (number, type code)
    menus: tuple[MenuChange, ...]


def check_kickstart(path: Path) -> None:
    """The kickstart must parse (pykickstart, latest syntax); %include of files that only
    exist at install time (e.g. written by %pre) is allowed."""
    read_kickstart(path, includes_required=False)


def _root_name(path: Path, option: str) -> str:
    name = path.name
    if not name or name in (".", ".."):
        raise ComposerError(f"{option} {path}: has no name to put at the ISO's root")
    return name


def check_options(opts: MkksisoOptions) -> None:
    """Everything that can be refused before reading the ISO's contents."""
    if not opts.input.exists():
        raise ComposerError(f"INPUT {opts.input}: no such file")
    if not opts.input.is_file():
        raise ComposerError(f"INPUT {opts.input}: not a regular file")
    read_volume_info(opts.input)
    check_output(opts)
    if opts.volid is not None:
        check_volid(opts.volid)
    check_menu_options(opts)
    names: dict[str, str] = {}
    for option, path in (
        ([("--ks", opts.ks)] if opts.ks else [])
        + ([("--updates", opts.updates)] if opts.updates else [])
        + [("--add", p) for p in opts.add]
    ):
        if not path.exists():
            raise ComposerError(f"{option} {path}: no such file or directory")
        if option != "--add" and not path.is_file():
            raise ComposerError(f"{option} {path}: not a regular file")
        if not os.access(path, os.R_OK):
            raise ComposerError(f"{option} {path}: not readable")
        name = _root_name(path, option)
        if option != "--add" and not _ROOT_NAME.fullmatch(name):
            raise ComposerError(
                f"{option} {path}: the name {name!r} goes on the kernel command line; "
                "rename the file to use only A-Z a-z 0-9 . _ + -"
            )
        if name in names:
            raise ComposerError(f"{option} {path}: {names[name]} already puts /{name} on the ISO")
        names[name] = f"{option} {path}"
    if not (opts.ks or opts.updates or opts.add or opts.cmdline or opts.rm_args or opts.volid or opts.replace):
        raise ComposerError("nothing to do: give --ks, --add, --cmdline, --rm-args, --volid, --updates or --replace")
    if opts.ks:
        check_kickstart(opts.ks)


def check_output(opts: MkksisoOptions) -> None:
    """OUTPUT is a new file, or with --force a regular file to replace; never a symbolic
    link (its target would be replaced), a directory or the INPUT."""
    out = output_path(opts.output)
    if os.path.islink(out):
        raise ComposerError(
            f"OUTPUT {out} is a symbolic link (to {os.readlink(out)}): composer never writes "
            "through a link to replace its target; remove the link or choose another OUTPUT"
        )
    if out == opts.input.resolve() or (out.exists() and os.path.samefile(out, opts.input)):
        raise ComposerError(f"OUTPUT {opts.output}: is the INPUT; write the remastered ISO to a new file")
    if out.exists():
        if out.is_dir():
            raise ComposerError(f"OUTPUT {opts.output}: is a directory")
        if not opts.force:
            raise ComposerError(f"OUTPUT {opts.output}: exists (use --force to replace it)")
        if not out.is_file():
            raise ComposerError(f"OUTPUT {opts.output}: not a regular file; --force replaces only an ISO file")
    parent = out.parent
    if not parent.is_dir():
        raise ComposerError(f"OUTPUT {opts.output}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ComposerError(f"OUTPUT {opts.output}: cannot write in {parent}")


def check_menu_options(opts: MkksisoOptions) -> None:
    """What goes into boot menus is checked as boot-iso's --kernel-arg is: one word per
    kernel argument, no quotes or menu syntax (a `;` would start a second GRUB command,
    a `#` comment out what follows, a brace end the menu entry)."""
    if opts.cmdline.strip():
        check_kernel_args("--cmdline", opts.cmdline)
    for r in opts.rm_args:
        check_kernel_args("--rm-args", r)
    for a, b in opts.replace:
        if not a:
            raise ComposerError(
                f"--replace '' {b!r}: FROM is empty (it would insert TO between every "
                "character of every menu); give the text to replace"
            )
        for what, value in (("FROM", a), ("TO", b)):
            check_line(f"--replace {what}", value)
            bad = next((c for c in value if c in MENU_SYNTAX), None)
            if bad is not None:
                raise ComposerError(
                    f"--replace {a!r} {b!r}: {what} holds {describe_char(bad)}, which is syntax in "
                    "boot menus; --replace changes plain text (titles, arguments): give it without"
                )


def _extract(iso: Path, paths: Sequence[str], dest: Path) -> list[Path]:
    """Copy files out of the ISO (osirrox, no mount) to dest/0, dest/1, ... (in order)."""
    if not paths:
        return []
    dest.mkdir(parents=True, exist_ok=True)
    argv = ["xorriso", "-osirrox", "on", "-indev", os.fspath(iso), "-iso_rr_pattern", "off"]
    out = []
    for n, p in enumerate(paths):
        target = dest / str(n)
        argv += ["-extract", "/" + p, os.fspath(target)]
        out.append(target)
    run(argv, env={"LANG": "C", "LC_ALL": "C"})
    for target in out:
        target.chmod(target.stat().st_mode | stat.S_IWUSR)
    return out


def _read_text(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        info(f"{where}: not UTF-8; edited as Latin-1")
        return data.decode("latin-1")


def _encode_like(text: str, original: bytes) -> bytes:
    """Encode an edited menu the way _read_text decoded the original."""
    try:
        original.decode("utf-8")
        return text.encode("utf-8")
    except UnicodeDecodeError:
        return text.encode("latin-1", "replace")


def _mtools(argv: list[str], epoch: int | None, **kw):
    return run(argv, env=mtools_env(epoch), **kw)


def _efiboot_menus(img: Path, edit: MenuEdit, work: Path, epoch: int | None) -> tuple[MenuChange, ...]:
    """Edit the GRUB menus inside a FAT image in place (mtools), return what changed."""
    listing = _mtools(["mdir", "-/", "-b", "-i", os.fspath(img), "::/"], epoch, capture=True)
    paths = [
        ln.strip()[3:]
        for ln in listing.stdout.decode(errors="replace").splitlines()
        if ln.strip().startswith("::/") and not ln.strip().endswith("/")
    ]
    changes: list[MenuChange] = []
    for p in paths:
        if not menu_kind(p, EFIBOOT_MENUS, (), fold_case=True):
            continue
        raw = _mtools(["mtype", "-i", os.fspath(img), f"::/{p}"], epoch, capture=True).stdout
        old = _read_text(raw, f"efiboot.img:{p}")
        new, count = edit_menu(old, "grub", edit, f"efiboot.img:{p}")
        if new == old:
            continue
        tmp = work / f"efiboot-menu-{len(changes)}"
        tmp.write_bytes(_encode_like(new, raw))
        copy = ["mcopy", "-o", "-i", os.fspath(img)]
        if epoch is not None:
            # -m keeps the file's mtime (the epoch) instead of "now".
            os.utime(tmp, (epoch, epoch))
            copy.append("-m")
        try:
            _mtools([*copy, os.fspath(tmp), f"::/{p}"], epoch)
        except CommandError as e:
            raise ComposerError(
                f"efiboot.img: cannot write the edited {p} back ({e.reason}); --skip-mkefiboot leaves efiboot.img as it is"
            ) from None
        changes.append(MenuChange(f"efiboot.img:{p}", "grub", old, new, count))
    return tuple(changes)


def _read_interval(iv: Interval, dest: Path) -> None:
    with iv.path.open("rb") as src, dest.open("wb") as out:
        src.seek(iv.start)
        left = iv.end - iv.start
        while left > 0:
            chunk = src.read(min(left, 1 << 20))
            if not chunk:
                raise ComposerError(f"{iv.path}: ends inside its EFI partition (truncated ISO?)")
            out.write(chunk)
            left -= len(chunk)


def plan(opts: MkksisoOptions, work: Path) -> Plan:
    """Read the input, decide every change (check_options first); edited files are
    written under work."""
    volume = read_volume_info(opts.input)
    layout, files = inspect_iso(opts.input)
    if layout.bios_image is None and layout.efi_image is None:
        raise ComposerError(
            f"INPUT {opts.input}: no El Torito boot record: not a bootable ISO "
            "(composer mkksiso remasters boot media such as boot.iso)"
        )
    new_volid = opts.volid or volume.volid
    if not new_volid:
        raise ComposerError(f"INPUT {opts.input}: has no volume id; give --volid")
    args = arg_edit(opts, new_volid)
    additions = [(given.resolve(), given.name) for given in (opts.ks, opts.updates) if given is not None]
    additions += [(p.resolve(), _root_name(p, "--add")) for p in opts.add]
    edit = MenuEdit(args, volume.volid, new_volid, opts.replace)

    for host, name in additions:
        if name in files or any(f.startswith(name + "/") for f in files):
            info(f"mkksiso: /{name} is already on the ISO: {host} replaces it")

    menu_paths = [f for f in files if menu_kind(f)]
    changes: list[MenuChange] = []
    (work / "edited").mkdir(parents=True)
    for path, host in zip(menu_paths, _extract(opts.input, menu_paths, work / "menus"), strict=True):
        raw = host.read_bytes()
        old = _read_text(raw, path)
        kind = menu_kind(path) or "grub"
        new, count = edit_menu(old, kind, edit, path)
        if new == old:
            continue
        edited = work / "edited" / str(len(changes))
        edited.write_bytes(_encode_like(new, raw))
        edited.chmod(stat.S_IMODE(host.stat().st_mode) | stat.S_IRUSR)
        changes.append(MenuChange(path, kind, old, new, count, edited))
    if not menu_paths:
        info("mkksiso: no GRUB or isolinux menu on the ISO: kernel arguments and the volume id are not changed in menus")

    efi = None
    if layout.efi_image is not None and not opts.skip_efiboot:
        efi = _plan_efiboot(opts, layout, files, edit, work)
    elif layout.efi_image is not None:
        info("mkksiso: --skip-mkefiboot: efiboot.img (UEFI El Torito) is left as it is; its menu is not edited")
    return Plan(opts, volume, layout, new_volid, args, tuple(changes), tuple(additions), efi, files)


def arg_edit(opts: MkksisoOptions, volid: str) -> ArgEdit:
    """The kernel arguments every menu loses and gets: -r, -c, and inst.ks=/inst.updates=
    for what --ks/--updates put at the root of the volume `volid`; each one checked."""
    add_args = list(check_kernel_args("--cmdline", opts.cmdline)) if opts.cmdline.strip() else []
    remove = [w for r in opts.rm_args for w in check_kernel_args("--rm-args", r)]
    for option, given, key in (("--ks", opts.ks, "inst.ks"), ("--updates", opts.updates, "inst.updates")):
        if given is None:
            continue
        # Ours replaces any earlier one (a remaster of a remaster must not carry two).
        remove.append(key)
        add_args = [a for a in add_args if arg_key(a) != key]
        add_args.append(_label_arg(option, f"{key}=hd:LABEL={udev_escape(volid)}:/{given.name}", volid))
    return ArgEdit(tuple(remove), tuple(add_args))


def _label_arg(option: str, arg: str, volid: str) -> str:
    """inst.ks=/inst.updates= with the volume id in it: a kernel argument like any other."""
    try:
        return check_kernel_arg(option, arg)
    except ComposerError:
        raise ComposerError(
            f"{option}: the volume id {volid!r} cannot be written in {arg!r} on the kernel command "
            "line; give --volid with only A-Z a-z 0-9 . _ -"
        ) from None


def _plan_efiboot(
    opts: MkksisoOptions, layout: BootLayout, files: dict[str, FileAttr], edit: MenuEdit, work: Path
) -> EfiBoot | None:
    """efiboot.img from where El Torito's UEFI entry finds it, edited; and every other
    copy of it to replace: lorax and composer put it both in an appended partition (USB)
    and in the ISO as images/efiboot.img; Debian-style ISOs point El Torito at the file
    and also append it as a partition."""
    img = work / "efiboot.img"
    part = layout.efi_partition
    efi = layout.efi_image or ""
    if part is not None:
        iv = parse_interval(layout.appended.get(part, ("", ""))[1])
        if iv is None:
            raise ComposerError(
                f"INPUT {opts.input}: cannot locate its EFI partition {part} "
                f"({layout.appended.get(part, ('', 'not reported'))[1]}); "
                "--skip-mkefiboot leaves it as it is"
            )
        _read_interval(iv, img)
        source = f"partition {part}"
    elif not efi.startswith("--interval:"):
        _extract(opts.input, [efi.lstrip("/")], work / "efi-extract")
        os.replace(work / "efi-extract" / "0", img)
        source = efi
    else:
        raise ComposerError(
            f"INPUT {opts.input}: its EFI boot image is neither a file nor an appended partition "
            f"({efi}); --skip-mkefiboot leaves it as it is"
        )
    data = img.read_bytes()
    partitions = []
    for num, (type_code, src) in sorted(layout.appended.items()):
        iv = parse_interval(src)
        if num == part or (iv is not None and iv.end - iv.start >= len(data) and _read_bytes(iv, len(data)) == data):
            partitions.append((num, type_code))
    candidates = [f for f in files if f == efi.lstrip("/") or f.rsplit("/", 1)[-1].lower() in ("efiboot.img", "efi.img")]
    iso_paths = [
        f
        for f, host in zip(candidates, _extract(opts.input, candidates, work / "efi-copies"), strict=True)
        if host.stat().st_size == len(data) and host.read_bytes() == data
    ]
    menus = _efiboot_menus(img, edit, work, opts.source_date_epoch)
    if not menus:
        info(f"mkksiso: efiboot.img ({source}): no menu to change")
        return None
    return EfiBoot(source, tuple(iso_paths), tuple(partitions), menus)


def _read_bytes(iv: Interval, size: int) -> bytes:
    with iv.path.open("rb") as f:
        f.seek(iv.start)
        return f.read(size)


# --------------------------------------------------------------------------- execute


def xorriso_argv(p: Plan, work: Path, output: Path) -> list[str]:
    """The one xorriso run that writes the remastered ISO."""
    opts = p.opts
    argv = [
        "xorriso",
        "-report_about",
        "WARNING",
        "-return_with",
        "SORRY",
        "32",
        "-iso_rr_pattern",
        "off",
        "-disk_pattern",
        "off",
        "-indev",
        os.fspath(opts.input.resolve()),
        "-outdev",
        os.fspath(output),
        # Replays -report_el_torito as_mkisofs: El Torito images, MBR/GPT, appended partitions.
        "-boot_image",
        "any",
        "replay",
    ]
    if p.new_volid != p.volume.volid:
        argv += ["-volid", p.new_volid]
    if p.volume.modified:
        argv += ["-volume_date", "uuid", p.volume.modified]
    elif opts.source_date_epoch is not None:
        argv += ["-volume_date", "uuid", iso_date(opts.source_date_epoch)]
    if opts.source_date_epoch is not None:
        seed = f"mkksiso/{p.volume.volid}/{p.new_volid}/{opts.source_date_epoch}"
        argv += ["-boot_image", "any", f"gpt_disk_guid={seed_uuid(seed, 'iso-gpt')}"]
    if p.volume.joliet:
        argv += ["-joliet", "on"]
    # Level 3: files of 4 GiB and more (a DVD's install image, an added directory).
    argv += ["-compliance", "iso_9660_level=3:joliet_long_names"]

    changed: list[str] = []
    for m in p.menus:
        assert m.host is not None
        argv += ["-update", os.fspath(m.host), "/" + m.where]
        changed.append("/" + m.where)
    if p.efiboot is not None:
        img = work / "efiboot.img"
        for path in p.efiboot.iso_paths:
            argv += ["-update", os.fspath(img), "/" + path]
            changed.append("/" + path)
    for path in changed:
        # -update took the owner and mode of our work file: give back the input's.
        a = p.attrs.get(path.lstrip("/"), FileAttr(0o644, "0", "0"))
        argv += ["-chmod", f"0{a.mode:o}", path, "--", "-chown", a.uid, path, "--", "-chgrp", a.gid, path, "--"]
    added = []
    for host, name in p.additions:
        argv += ["-map", os.fspath(host), "/" + name]
        added.append("/" + name)
    if added:
        # Owned by root like the rest of a boot.iso, readable by all, whoever ran the
        # remaster with whatever umask (the output does not depend on it).
        argv += ["-chown_r", "0", *added, "--", "-chgrp_r", "0", *added, "--", "-chmod_r", "go-w,a+r", *added, "--"]
        for path in added:
            argv += ["-find", path, "-type", "d", "-exec", "chmod", "a+x", "--"]
    if opts.source_date_epoch is not None and (changed or added):
        date = f"={opts.source_date_epoch}"
        argv += ["-alter_date_r", "b", date, *changed, *added, "--"]
    for num, type_code in p.efiboot.partitions if p.efiboot is not None else ():
        argv += ["-append_partition", str(num), type_code, os.fspath(work / "efiboot.img")]
    return argv + ["-commit"]


def supported_iso(iso: Path) -> bool:
    """Was the input's implanted MD5 marked "supported ISO"? (default yes, as boot-iso)."""
    proc = run(["checkisomd5", "--md5sumonly", os.fspath(iso)], capture=True, check=False)
    text = proc.stdout.decode(errors="replace")
    return "Supported ISO: no" not in text


def execute(p: Plan, work: Path, tmp: Path) -> dict[str, float]:
    """Write the ISO to tmp (then implant its MD5); the caller renames it."""
    opts = p.opts
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    with stage("mkksiso: xorriso"):
        run(xorriso_argv(p, work, tmp), env=_xorriso_env(opts.source_date_epoch))
    timings["xorriso"] = round(time.monotonic() - t0, 2)
    if opts.implant_md5:
        t0 = time.monotonic()
        with stage("mkksiso: implantisomd5"):
            argv = ["implantisomd5", "-f"]
            if supported_iso(opts.input):
                argv.append("--supported-iso")
            run([*argv, os.fspath(tmp)])
        timings["implantisomd5"] = round(time.monotonic() - t0, 2)
    return timings


def _xorriso_env(epoch: int | None) -> dict[str, str]:
    env = {"LANG": "C", "LC_ALL": "C"}
    if epoch is not None:
        # xorriso then dates nodes it makes itself (directories, the boot catalog) at the
        # epoch and sets atime/ctime of every file to its mtime.
        env["SOURCE_DATE_EPOCH"] = str(epoch)
    return env


def remaster(opts: MkksisoOptions) -> Path:
    """plan + execute; OUTPUT appears only complete (renamed over an old one with --force)."""
    check_options(opts)
    final = output_path(opts.output)
    t0 = time.monotonic()
    with scratch_beside(final) as scratch:
        work = scratch / "work"
        work.mkdir()
        with stage("mkksiso: plan"):
            p = plan(opts, work)
        _report_plan(p)
        tmp = scratch / "new.iso"
        timings = execute(p, work, tmp)
        _install(tmp, final, force=opts.force)
    in_size, out_size = opts.input.stat().st_size, final.stat().st_size
    info(
        f"mkksiso: {final}: {out_size / 2**20:.1f} MiB (input {in_size / 2**20:.1f} MiB), volume id {p.new_volid}, "
        f"{time.monotonic() - t0:.1f}s ({', '.join(f'{k} {v}s' for k, v in timings.items())})"
    )
    return final


def _install(tmp: Path, final: Path, *, force: bool) -> None:
    """Give the complete ISO its name. rename() and link() replace or refuse a symbolic
    link at `final` itself, never write its target; without --force a file that
    appeared meanwhile is kept (link() fails on any existing name)."""
    if os.path.islink(final):
        raise ComposerError(
            f"OUTPUT {final} became a symbolic link (to {os.readlink(final)}) meanwhile: composer "
            "never writes through a link; remove the link or choose another OUTPUT"
        )
    if force:
        os.replace(tmp, final)
        return
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise ComposerError(f"OUTPUT {final}: appeared meanwhile (use --force to replace it)") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EMLINK):
            raise
        # No hard links here (FAT, some FUSE): check, then rename (the window is tiny).
        if os.path.lexists(final):
            raise ComposerError(f"OUTPUT {final}: appeared meanwhile (use --force to replace it)") from None
        os.replace(tmp, final)


def _report_plan(p: Plan) -> None:
    if p.new_volid != p.volume.volid:
        info(f"mkksiso: volume id {p.volume.volid} -> {p.new_volid}")
    for m in p.menus + (p.efiboot.menus if p.efiboot else ()):
        info(f"mkksiso: {m.where}: {m.lines} kernel command lines edited")
    if p.efiboot is not None:
        where = [f"partition {num}" for num, _ in p.efiboot.partitions]
        where += [f"/{x}" for x in p.efiboot.iso_paths]
        info(f"mkksiso: efiboot.img edited in place (mtools), replaces {', '.join(where)}")
    for host, name in p.additions:
        info(f"mkksiso: adds /{name} from {host}")
    if p.args.remove or p.args.add:
        info(f"mkksiso: kernel arguments: remove {' '.join(p.args.remove) or '(none)'}; add {' '.join(p.args.add) or '(none)'}")


# --------------------------------------------------------------------------- command line
