"""`composer boot-iso` refuses bad input with one line, before any build, leaving nothing behind."""

import functools
from pathlib import Path

from tests.conftest import BUILD
from tests.conftest import composer as _composer
from tests.integration.test_bootiso import one_error_line


def compose_args(repo: Path, *extra: str) -> list[str]:
    return [
        "boot-iso",
        "--product",
        "TestProduct",
        "--version",
        "1",
        "--source",
        f"file://{repo}",
        "--nogpgcheck",
        "--cachedir",
        str(BUILD / "cache"),
        *extra,
    ]


composer = functools.partial(_composer, check=False)


REPO = BUILD / "testproduct" / "repo"  # never reached: every case fails before dnf runs


def test_bad_volid_stops_before_building(tmp_path):
    out = tmp_path / "out"
    proc = composer(*compose_args(REPO, "--volid", "X" * 33, str(out)))
    assert "at most 32" in one_error_line(proc)
    proc = composer(*compose_args(REPO, "--volid", "has space", str(out)))
    assert "not allowed" in one_error_line(proc)
    assert list(tmp_path.iterdir()) == []


def test_existing_outdir_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    proc = composer(*compose_args(REPO, str(out)))
    assert "exists (use --force" in one_error_line(proc)
    assert [p.name for p in out.iterdir()] == ["keep"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_template_error(tmp_path):
    bad = tmp_path / "bad.tmpl"
    bad.write_text("log fine\nnosuchcommand x\n")
    proc = composer(*compose_args(REPO, "--add-arch-template", str(bad), str(tmp_path / "out")))
    assert "bad.tmpl:2" in one_error_line(proc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tmpl"]


def test_bad_kickstart(tmp_path):
    ks = tmp_path / "bad.ks"
    ks.write_text("timezone UTC\nurl\n")
    proc = composer(*compose_args(REPO, "--ks", str(ks), str(tmp_path / "out")))
    assert f"{ks}:2:" in one_error_line(proc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ks"]


def test_kickstart_and_options_reach_the_pipeline(tmp_path, monkeypatch):
    import argparse

    from composer.cli import bootiso, netboot

    seen = {}
    monkeypatch.setattr(bootiso, "compose_boot_iso", lambda cfg, opts: seen.update(cfg=cfg, opts=opts))
    monkeypatch.setattr(netboot, "compose_netboot", lambda cfg, opts: seen.update(ncfg=cfg, nopts=opts))
    ks = tmp_path / "a.ks"
    ks.write_text('url --url=http://example.com/os/\nbootloader --append="quiet x=1"\n%packages\nvim\n-nano\n%end\n')
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    bootiso.register(sub)
    netboot.register(sub)
    args = parser.parse_args(
        [
            "boot-iso",
            "-p",
            "TestProduct",
            "-v",
            "1",
            "--ks",
            str(ks),
            "--kernel-arg",
            "y=2",
            "--add-arch-template-var",
            "flavor=big",
            str(tmp_path / "out"),
        ]
    )
    assert args.func(args) == 0
    cfg, opts = seen["cfg"], seen["opts"]
    assert opts.volid == "TestProduct-1-x86_64" or opts.volid.startswith("TestProduct-1-")
    assert opts.kernel_args == ("quiet", "x=1", "y=2")
    assert opts.arch_template_vars == (("flavor", "big"),)
    assert "http://example.com/os/" in cfg.sources and "vim" in cfg.installpkgs and "nano" in cfg.excludepkgs
    args = parser.parse_args(
        ["netboot", "-p", "TestProduct", "-v", "1", "--ks", str(ks), "--url", "http://s/x", str(tmp_path / "out")]
    )
    assert args.func(args) == 0
    assert seen["nopts"].url == "http://s/x/" and seen["nopts"].kernel_args == ("quiet", "x=1")
