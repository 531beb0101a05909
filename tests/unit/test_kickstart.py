"""--ks: what composer takes from a kickstart, and what it reports."""

import pytest

from composer.config import Config
from composer.kickstart import apply_kickstart, config_with_kickstart, load_kickstart
from composer.run import ComposerError

KS = """\
url --url=http://example.com/os/
repo --name=extra --baseurl=http://example.com/extra/
repo --name=mirrored --mirrorlist=http://example.com/mirrors
rootpw --plaintext secret
timezone UTC
bootloader --append="nomodeset inst.text"
%packages
vim-minimal
kernel-*
-nano
@core
%end
%post
echo hi
%end
"""


def write(tmp_path, text, name="test.ks"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_used_parts(tmp_path):
    ks = load_kickstart(write(tmp_path, KS))
    assert ks.sources == ("http://example.com/os/", "http://example.com/extra/")
    assert ks.mirrorlists == ("http://example.com/mirrors",)
    assert sorted(ks.installpkgs) == ["kernel-*", "vim-minimal"]
    assert ks.excludepkgs == ("nano",)
    assert ks.kernel_args == ("nomodeset", "inst.text")


def test_unused_commands_reported_by_name(tmp_path):
    ks = load_kickstart(write(tmp_path, KS))
    for name in ("rootpw", "timezone", "%packages @core", "%post"):
        assert name in ks.unused, ks.unused
    for used in ("url", "repo", "bootloader"):
        assert used not in ks.unused


def test_report_in_log(tmp_path, capsys):
    cfg = Config(
        product="TestProduct", version="1", outdir=tmp_path / "out", sources=("file:///r",), installpkgs=("vim-minimal",)
    )
    new, _ = config_with_kickstart(cfg, write(tmp_path, KS))
    err = capsys.readouterr().err
    assert "not used by composer: rootpw, timezone" in err
    assert new.sources == ("file:///r", "http://example.com/os/", "http://example.com/extra/")
    assert new.mirrorlists == ("http://example.com/mirrors",)
    assert new.installpkgs[0] == "vim-minimal" and set(new.installpkgs) == {"vim-minimal", "kernel-*"}
    assert new.excludepkgs == ("nano",)
    assert config_with_kickstart(cfg, None) == (cfg, None)


def test_apply_keeps_command_line_first(tmp_path):
    cfg = Config(product="P", version="1", outdir=tmp_path, excludepkgs=("a",))
    ks = load_kickstart(write(tmp_path, "%packages\n-b\n-a\n%end\n"))
    assert apply_kickstart(cfg, ks).excludepkgs == ("a", "b")


def test_parse_error_names_file_and_line(tmp_path):
    p = write(tmp_path, "rootpw --plaintext x\nurl\n")
    with pytest.raises(ComposerError) as e:
        load_kickstart(p)
    msg = str(e.value)
    assert f"{p}:2:" in msg and "url" in msg and "\n" not in msg


def test_unknown_command_is_an_error_with_line(tmp_path):
    p = write(tmp_path, "timezone UTC\n\nfrobnicate --now\n")
    with pytest.raises(ComposerError, match=rf"{p}:3:"):
        load_kickstart(p)


def test_missing_file(tmp_path):
    with pytest.raises(ComposerError, match="no such file"):
        load_kickstart(tmp_path / "nope.ks")
