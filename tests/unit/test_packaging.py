"""packaging/composer.spec against pyproject.toml: every Python dependency is an RPM
requirement under Fedora's name, at least as new as pyproject asks (tests/integration/test_rpm.py
builds and installs it)."""

from __future__ import annotations

import re
import tomllib

from tests.conftest import ROOT

SPEC = ROOT / "packaging/composer.spec"
# PyPI distribution -> Fedora's package of it (Fedora names python3-<import name> for these).
FEDORA_NAMES = {"mako": "python3-mako", "pykickstart": "python3-kickstart", "productmd": "python3-productmd"}


def spec_requires(text: str) -> dict[str, str]:
    """The main package's `Requires: name [>= version]` lines (those before the first %package)."""
    main = text.split("\n%package", 1)[0]
    return {m.group(1): m.group(2) or "" for m in re.finditer(r"^Requires:\s+(\S+)(?:\s+>=\s+(\S+))?\s*$", main, re.M)}


def pyproject_dependencies() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = {}
    for dep in project["dependencies"]:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(?:>=\s*([0-9.]+))?", dep)
        assert m, f"pyproject dependency {dep!r}: only `name>=version` is mapped to RPM"
        deps[m.group(1).lower()] = m.group(2) or ""
    return deps


def test_spec_requires_cover_pyproject_dependencies() -> None:
    requires = spec_requires(SPEC.read_text())
    python = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires.get("python3") == python.removeprefix(">="), "python3 as pyproject's requires-python"
    for dist, version in pyproject_dependencies().items():
        assert dist in FEDORA_NAMES, f"{dist}: a pyproject dependency with no Fedora name here"
        fedora = FEDORA_NAMES[dist]
        assert fedora in requires, f"composer.spec does not require {fedora} (pyproject: {dist})"
        assert requires[fedora] == version, f"{fedora} >= {requires[fedora]}, pyproject asks {dist}>={version}"


def test_spec_requires_parse() -> None:
    text = "Requires: a >= 1.2\nRequires:  b\n%package lorax\nRequires: c\n"
    assert spec_requires(text) == {"a": "1.2", "b": ""}


def test_spec_version_is_pyproject_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert re.search(rf"^Version:\s+{re.escape(version)}$", SPEC.read_text(), re.M)
