"""lorax drop-in: lorax's template sets checked with lorax's variables, lorax's command line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from composer.cli import main
from composer.loraxcheck import check_sharedir

LORAX_GENERIC = Path("/work/shared/lorax-43.12/99-generic")  # lorax's own templates: test input only
needs_lorax_templates = pytest.mark.skipif(not LORAX_GENERIC.is_dir(), reason=f"no {LORAX_GENERIC}")


@needs_lorax_templates
def test_lorax_43_templates_pass_template_check(capsys):
    assert main(["template-check", "--sharedir", str(LORAX_GENERIC)]) == 0
    out = capsys.readouterr().out
    for name in ("runtime-install.tmpl", "runtime-postinstall.tmpl", "runtime-cleanup.tmpl", "x86.tmpl",
                 "aarch64.tmpl", "ppc64le.tmpl", "s390.tmpl", "efi.tmpl: through", "live/x86.tmpl"):
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
        f"{d}/runtime-postinstall.tmpl:{len((d / 'runtime-postinstall.tmpl').read_text().splitlines())}: "
        "systemctl: wrong arguments; usage: systemctl enable|disable|mask|unmask|set-default UNIT...",
        f"{d}/x86.tmpl:{n + 1}: chmod: bad mode 'images/boot.iso': the order is chmod FILEGLOB MODE (lorax's), not MODE FILE",
        f"{d}/x86.tmpl:{n + 2}: installimg: wrong arguments; usage: installimg [--xz|--gzip|--bzip2|--lzma] [-ARG]... SRCDIR DESTFILE",
    ]
    assert captured.err.strip().splitlines()[-1].startswith("composer: error: --sharedir")


def test_template_check_sharedir_page_args(tmp_path):
    d = tmp_path / "set"
    d.mkdir()
    (d / "runtime-install.tmpl").write_text('<%page args="product, root, branding, nothere"/>\ninstallpkg ${product.name}-release\n')
    (d / "x86.tmpl").write_text('<%page args="kernels, inroot, outroot, isolabel, udev"/>\n'
                                "%for kernel in kernels:\ninstallkernel images-x86_64 ${kernel.path} images/vmlinuz\n%endfor\n")
    r = check_sharedir(d)
    assert r.errors == [f"{d}/runtime-install.tmpl:1: undefined variable(s) in <%page args>: nothere"]


def test_template_check_sharedir_missing(tmp_path, capsys):
    assert main(["template-check", "--sharedir", str(tmp_path / "none")]) == 1
    assert "--sharedir" in capsys.readouterr().err
