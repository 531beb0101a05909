"""comps groups in a kickstart's %packages for `composer livemedia`: the request a kickstart
turns into (composer.kickstart.packages), how a dnf session carries it out (composer.dnf.groups,
DnfSession), and a missing group's one line, with the host's dnf over a repository of comps alone."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from composer.config import Config
from composer.dnf import Comps, DnfConfig, DnfSession, GroupSpec
from composer.dnf.groups import read_dnf4_environment, read_dnf4_listing, read_dnf5_environment, read_dnf5_table
from composer.kickstart import load_live_kickstart
from composer.preflight import check_config_values
from composer.run import ComposerError
from tests.conftest import ROOT, composer

COMPS = ROOT / "tools" / "testproduct" / "comps.xml"


def _repo(tmp_path: Path, comps: bool = True) -> Path:
    """A repository of no packages, with the test product's comps."""
    repo = tmp_path / "repo"
    repo.mkdir(exist_ok=True)
    subprocess.run(["createrepo_c", "-q", "--no-database", *(["-g", str(COMPS)] if comps else []), str(repo)], check=True)
    return repo


def _ks(tmp_path: Path, packages: str, header: str = "%packages") -> Path:
    (tmp_path / "fake" / "repodata").mkdir(parents=True, exist_ok=True)
    (tmp_path / "fake" / "repodata" / "repomd.xml").write_text("<repomd/>\n")  # what the source check looks for
    ks = tmp_path / "g.ks"
    ks.write_text(f"url --url=file://{tmp_path}/fake\n{header}\n{packages}\n%end\n")
    return ks


# ------------------------------------------------------------------ the request


def test_groups_environment_and_core_in_anacondas_order(tmp_path: Path) -> None:
    ks = load_live_kickstart(_ks(tmp_path, "less\n@standard\n@^minimal-environment\n-cpio"))
    assert ks.packages.installpkgs == ("@^minimal-environment", "@core", "@standard", "less")
    assert ks.packages.excludepkgs == ("cpio",)
    assert ks.not_yet == () and ks.packages.unused == ()


def test_include_types(tmp_path: Path) -> None:
    ks = load_live_kickstart(_ks(tmp_path, "@standard --nodefaults\n@system-tools --optional\n@core --optional"))
    assert ks.packages.installpkgs == (
        "@core/mandatory,default,conditional,optional",  # listed: its own types, first
        "@standard/mandatory,conditional",
        "@system-tools/mandatory,default,conditional,optional",
    )


def test_nocore_excludes_core(tmp_path: Path) -> None:
    ks = load_live_kickstart(_ks(tmp_path, "@core\n@standard\nbash", header="%packages --nocore"))
    assert ks.packages.installpkgs == ("@standard", "bash")
    assert ks.packages.excludepkgs == ("@core",)  # an environment does not bring it either
    assert not ks.request.core_added


def test_excluded_groups(tmp_path: Path) -> None:
    ks = load_live_kickstart(_ks(tmp_path, "@standard\n@system-tools\n-@system-tools\n-@dial-up\n-nano"))
    assert ks.packages.installpkgs == ("@core", "@standard")
    assert ks.packages.excludepkgs == ("nano", "@dial-up", "@system-tools")


def test_default_is_named_not_yet(tmp_path: Path) -> None:
    ks = load_live_kickstart(_ks(tmp_path, "bash", header="%packages --default"))
    assert ks.not_yet == ("%packages --default (the product's default environment: name it with @^ID)",)


def test_missing_group_lines(tmp_path: Path) -> None:
    path = _ks(tmp_path, "bash\n@Development Tools --optional\n@^nosuch-environment")
    ks = load_live_kickstart(path)
    assert str(ks.missing_group("@Development Tools/mandatory,default,conditional,optional")) == (
        f"kickstart {path}:4: %packages @Development Tools: no group 'Development Tools' in the repositories' comps "
        "(--ignoremissing skips it)"
    )
    assert str(ks.missing_group("@^nosuch-environment")).startswith(
        f"kickstart {path}:5: %packages @^nosuch-environment: no environment 'nosuch-environment'"
    )
    assert str(ks.missing_group("@core")) == (
        f"kickstart {path}:2: %packages: @core (added without --nocore): no group 'core' in the repositories' comps; "
        "add --nocore, or a comps file with a core group to a repository"
    )


def test_a_group_name_that_is_no_spec_is_refused_with_its_line(tmp_path: Path) -> None:
    path = _ks(tmp_path, "bash\n@core/optional")
    with pytest.raises(ComposerError, match=f"^kickstart {path}:4: %packages @core/optional: not a group id or name$"):
        load_live_kickstart(path)


def test_a_group_name_may_hold_spaces_a_package_name_not() -> None:
    cfg = Config("TestProduct", "1", Path("out"), installpkgs=("@Development Tools", "less"), excludepkgs=("@Dial-up",))
    check_config_values(cfg)
    with pytest.raises(ComposerError, match="a package name or glob is one word"):
        check_config_values(dataclasses.replace(cfg, installpkgs=("less more",)))


# ------------------------------------------------------------------ specs and dnf's listings


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("@core", GroupSpec("core")),
        ("@^minimal-environment", GroupSpec("minimal-environment", environment=True)),
        ("@standard/mandatory,conditional", GroupSpec("standard", types=("mandatory", "conditional"))),
        ("@Development Tools", GroupSpec("Development Tools")),
    ],
)
def test_group_spec_round_trip(spec: str, parsed: GroupSpec) -> None:
    assert GroupSpec.parse(spec) == parsed and str(parsed) == spec
    assert parsed.dnf_spec == "@" + parsed.id  # dnf 4 and dnf5 have no @^: @ID is a group or an environment


@pytest.mark.parametrize("spec", ["@", "@^", "@x/bogus", "@x/", "@^env/mandatory"])
def test_group_spec_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        GroupSpec.parse(spec)


def test_comps_matches_ids_and_names_as_dnf() -> None:
    comps = Comps({"core": "Core", "system-tools": "System Tools"}, {"minimal-environment": "Minimal Install"})
    assert comps.ids_of(GroupSpec("CORE")) == {"core"}
    assert comps.ids_of(GroupSpec("System Tools")) == {"system-tools"}
    assert comps.ids_of(GroupSpec("sys*")) == {"system-tools"}
    assert comps.ids_of(GroupSpec("minimal-environment")) == {"minimal-environment"}  # @ID may name an environment
    assert not comps.has(GroupSpec("core", environment=True))


DNF4_LIST = """Available Environment Groups:
   Minimal Install (minimal-environment)
Installed Groups:
   Core (core)
Available Groups:
   System Tools (system-tools)
Available Language Groups:
   Japanese Support (japanese-support) [ja]
"""
DNF5_GROUPS = """ID                   Name         Installed
core                 Core                no
system-tools         System Tools        no
Groups: 2 (0 installed, 2 available)
"""
DNF4_ENV = """Environment Group: Minimal Install
 Description: Basic functionality.
 Mandatory Groups:
   Core
   System Tools
 Optional Groups:
   Standard
"""
DNF5_ENV = """Id                   : minimal-environment
Name                 : Minimal Install
Required groups      : core
                     : system-tools
Optional groups      : standard
"""


def test_dnf_listings_read() -> None:
    comps = read_dnf4_listing(DNF4_LIST)
    assert comps.environments == {"minimal-environment": "Minimal Install"}
    assert comps.groups == {"core": "Core", "system-tools": "System Tools", "japanese-support": "Japanese Support"}
    assert read_dnf5_table(DNF5_GROUPS) == {"core": "Core", "system-tools": "System Tools"}
    assert read_dnf4_environment(DNF4_ENV, comps) == ["core", "system-tools"]
    assert read_dnf5_environment(DNF5_ENV) == ["core", "system-tools"]


# ------------------------------------------------------------------ the session


def _session(tmp_path: Path, excludepkgs: tuple[str, ...] = ()) -> DnfSession:
    source = f"file://{_repo(tmp_path)}"
    cfg = DnfConfig(releasever="1", arch="x86_64", sources=(source,), cachedir=tmp_path / "c", excludepkgs=excludepkgs)
    return DnfSession(tmp_path / "tree", cfg, tmp_path / "work")


def test_session_runs_group_types_apart_and_drops_excluded_groups(tmp_path: Path) -> None:
    s = _session(tmp_path, excludepkgs=("cpio", "@system-tools"))
    s._available = ["bash", "less"]
    s._comps = Comps({"core": "Core", "standard": "Standard", "system-tools": "System Tools"}, {})
    s.install(["bash", "@core", "@standard/mandatory,conditional", "@System Tools"])
    assert s._runs() == [(None, ["bash", "@core"]), (("mandatory", "conditional"), ["@standard"])]
    assert "--exclude=cpio" in s._dnf_argv() and not any("system-tools" in a for a in s._dnf_argv())
    assert s.program.cli.group_types(("mandatory", "conditional")) == ["--setopt=group_package_types=mandatory,conditional"]


def test_session_installs_an_environment_less_an_excluded_group_as_its_groups(tmp_path: Path) -> None:
    s = _session(tmp_path)
    s._comps = Comps({"core": "Core", "system-tools": "System Tools"}, {"minimal-environment": "Minimal Install"})
    s.install(["@^minimal-environment"])
    assert s._runs() == [(None, ["@minimal-environment"])]  # nothing of it excluded yet
    s._environment_groups = lambda env: ["core", "system-tools"]  # type: ignore[method-assign]
    s.config = dataclasses.replace(s.config, excludepkgs=("@system-tools",))
    assert s._runs() == [(None, ["@core"])]


def test_session_with_the_hosts_dnf(tmp_path: Path) -> None:
    """dnf 4's own listings of the test product's comps: groups, hidden @core, the environment's groups."""
    s = _session(tmp_path, excludepkgs=("@system-tools",))
    assert s.comps() == Comps(
        {"core": "Core", "standard": "Standard", "system-tools": "System Tools"}, {"minimal-environment": "Minimal Install"}
    )
    assert s.missing_groups(["bash", "@core", "@Standard", "@^minimal-environment", "@nosuch", "@^core"]) == ["@nosuch", "@^core"]
    assert s._environment_groups(GroupSpec("minimal-environment", environment=True)) == ["core", "system-tools"]
    s.install(["@nosuch"], required=False)  # --ignoremissing: skipped
    with pytest.raises(ComposerError, match="no group or environment matches '@nosuch'"):
        s.install(["@nosuch"])


def test_repository_without_comps_has_no_groups(tmp_path: Path) -> None:
    cfg = DnfConfig(releasever="1", arch="x86_64", sources=(f"file://{_repo(tmp_path, comps=False)}",), cachedir=tmp_path / "c")
    s = DnfSession(tmp_path / "tree", cfg, tmp_path / "work")
    assert s.comps() == Comps() and s.missing_groups(["@core"]) == ["@core"]


def test_missing_group_is_one_line_naming_the_kickstart_line(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    ks = tmp_path / "g.ks"
    ks.write_text(f"url --url=file://{repo}\n%packages\n@standard\n@no-such-group --optional\n%end\n")
    where = ("--tmp", str(tmp_path / "tmp"), "--resultdir", str(tmp_path / "out"), "--logfile", str(tmp_path / "lmc.log"))
    (tmp_path / "tmp").mkdir()
    base = ("livemedia", "--no-virt", "--project", "TestProduct", "--releasever", "1")
    proc = composer(*base, *where, "--make-tar", "--ks", str(ks), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .endswith(
            f"kickstart {ks}:4: %packages @no-such-group: no group 'no-such-group' in the repositories' comps "
            "(--ignoremissing skips it)"
        )
    )
    assert not (tmp_path / "out").exists()


SMALL_COMPS = """<?xml version="1.0" encoding="UTF-8"?>
<comps>
  <group><id>core</id><name>Core</name><uservisible>false</uservisible>
    <packagelist><packagereq type="mandatory">pa</packagereq></packagelist></group>
  <group><id>standard</id><name>Standard</name>
    <packagelist><packagereq type="mandatory">pb</packagereq><packagereq type="default">pc</packagereq></packagelist></group>
  <group><id>system-tools</id><name>System Tools</name>
    <packagelist><packagereq type="mandatory">pd</packagereq></packagelist></group>
  <environment><id>minimal-environment</id><name>Minimal Install</name>
    <grouplist><groupid>core</groupid><groupid>system-tools</groupid></grouplist></environment>
</comps>
"""


def test_dnf_installs_the_groups_less_the_excluded_one(tmp_path: Path) -> None:
    """A real dnf transaction over four empty packages: the environment less -@system-tools,
    @standard --nodefaults in a run of its own."""
    repo = tmp_path / "repo"
    for name in ("pa", "pb", "pc", "pd"):
        spec = tmp_path / f"{name}.spec"
        spec.write_text(
            f"Name: {name}\nVersion: 1\nRelease: 1\nSummary: s\nLicense: MIT\nBuildArch: noarch\n%description\nd\n%files\n"
        )
        argv = ["rpmbuild", "-bb", "--quiet", "--define", f"_topdir {tmp_path / 'top'}", "--define", f"_rpmdir {repo}", str(spec)]
        subprocess.run(argv, check=True, capture_output=True)
    (tmp_path / "comps.xml").write_text(SMALL_COMPS)
    subprocess.run(["createrepo_c", "-q", "--no-database", "-g", str(tmp_path / "comps.xml"), str(repo)], check=True)
    cfg = DnfConfig(
        releasever="1",
        arch="x86_64",
        sources=(f"file://{repo}",),
        cachedir=tmp_path / "c",
        nogpgcheck=True,
        excludepkgs=("@system-tools",),
    )
    s = DnfSession(tmp_path / "tree", cfg, tmp_path / "work")
    s.install(["@^minimal-environment", "@standard/mandatory,conditional"])
    s.run_transaction()
    assert s.installed() == ["pa", "pb"]


# ---------------------------------------------------- the Fedora-shaped product's live spin


def test_fedora_live_spin_reads_and_its_groups_are_in_the_products_comps(tmp_path: Path) -> None:
    """tools/testproduct/fedora-live.ks (test_livemedia_fedora.py builds it) as composer reads
    it: every command honoured or ignored as anaconda does, and each group it asks for (and
    each package it takes out of one) in tools/testproduct/fedora-comps.xml."""
    import xml.etree.ElementTree as ET

    text = (ROOT / "tools/testproduct/fedora-live.ks").read_text()
    ks_path = _ks(tmp_path, "")  # the fake source's repomd.xml
    ks_path.write_text(text.replace("@REPO@", f"file://{tmp_path}/fake"))
    ks = load_live_kickstart(ks_path)
    comps = ET.parse(ROOT / "tools/testproduct/fedora-comps.xml").getroot()
    members = {g.findtext("id"): {p.text for p in g.iter("packagereq")} for g in comps.iter("group")}
    groups = [p.removeprefix("@").split("/")[0] for p in ks.packages.installpkgs if p.startswith("@")]
    assert groups == ["core", "standard", "system-tools"]
    assert set(groups) <= set(members)
    assert ks.packages.excludepkgs == ("nano",) and "nano" in members["standard"]
    s = ks.system
    assert (s.hostname, s.enabled, s.disabled) == (
        "fedora-live",
        ("rsyslog.service", "composer-boot-check.service"),
        ("ssh.service",),
    )
    assert [u.name for u in s.users] == ["liveuser"] and s.selinux == "disabled"
    assert ks.packages.kernel_args == ("console=ttyS0", "composer.check=poweroff")
    assert ks.not_yet == ()
