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

The package, along its seams: errors (TemplateError, PathEscapeError), paths (path
confinement, globs in the tree), lexer (words, quoting, brace expansion), variables
(lorax's variable model), render (Mako with line tracking, values as data), runner
(the command set: TemplateRunner). Every name callers use is importable from here.

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

from composer.templates.errors import PathEscapeError, TemplateError
from composer.templates.lexer import brace_expand, split_line
from composer.templates.paths import MAX_SYMLINK_HOPS, check_lexical, glob_in_tree, resolve_in_tree
from composer.templates.render import TemplateValue, describe_control, joinpaths, render_template
from composer.templates.runner import ChangeRecorder, PackageManager, TemplateRunner, iter_template_files
from composer.templates.variables import (
    Arch,
    BootImage,
    Branding,
    Kernel,
    Product,
    find_boot_kernels,
    lorax_lower,
    lorax_variables,
    sample_variables,
    udev_escape,
)

__all__ = [
    "render_template",
    "Arch",
    "BootImage",
    "Branding",
    "ChangeRecorder",
    "Kernel",
    "MAX_SYMLINK_HOPS",
    "PackageManager",
    "PathEscapeError",
    "Product",
    "TemplateError",
    "TemplateRunner",
    "TemplateValue",
    "brace_expand",
    "check_lexical",
    "describe_control",
    "find_boot_kernels",
    "glob_in_tree",
    "iter_template_files",
    "joinpaths",
    "lorax_lower",
    "lorax_variables",
    "resolve_in_tree",
    "sample_variables",
    "split_line",
    "udev_escape",
]
