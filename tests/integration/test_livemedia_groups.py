"""`composer livemedia --make-tar` of tools/testproduct/groups.ks, for real: dnf expands the
kickstart's comps groups and environment from the test product's comps (tools/testproduct/comps.xml),
through two repositories with options of their own (--excludepkgs, --includepkgs, --cost), and rpm
installs the translations %packages --inst-langs names.
A missing group's one line: tests/unit/test_kickstart_groups.py (a repository of comps alone)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from tests.integration.test_livemedia import livemedia, write_kickstart

pytestmark = pytest.mark.slow


def test_tar_holds_the_groups_packages_and_not_the_excluded_ones(testproduct_repo, tmp_path: Path) -> None:
    ks = write_kickstart("groups.ks", testproduct_repo, tmp_path)
    tar_path = livemedia(ks, tmp_path / "tar", "--make-tar", "--compression", "gzip") / "root.tar.gz"
    with tarfile.open(tar_path) as tar:
        names = set(tar.getnames())
    log = (tmp_path / "tar" / "livemedia.log").read_text()

    def has(path: str) -> bool:
        return f"./{path}" in names

    # @core (added without --nocore, and the environment's): its mandatory packages.
    assert has("usr/bin/bash") and has("usr/lib/systemd/systemd") and has("usr/bin/passwd")
    # @standard --nodefaults: the mandatory package, not the default ones.
    assert has("usr/bin/less")
    assert not has("usr/bin/cpio") and not has("usr/bin/xz")
    # -@system-tools, a group of @^minimal-environment: neither its mandatory nor its default package.
    assert not has("usr/sbin/nbd-client") and not has("usr/bin/curl")
    assert "without system-tools" in log  # the environment was installed as its other groups
    # @core's default kmod: out of one repository (--excludepkgs), not in the other (--includepkgs=less).
    assert not has("usr/bin/kmod")
    # --inst-langs=de:pt_BR: rpm's %_install_langs, as anaconda sets it.
    messages = "usr/share/locale/{}/LC_MESSAGES/coreutils.mo"
    assert has(messages.format("de")) and has(messages.format("pt_BR"))
    assert not has(messages.format("fr")) and not has(messages.format("es"))
    assert "package types mandatory,conditional" in log  # @standard's run
