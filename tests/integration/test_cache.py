"""The tree cache for real: compose, compose again with only later stages changed (a hit),
then compose with --no-cache (a clean install), and compare what got installed.

The work directory, the cache and the source repository are each reached through a
symbolic link, as users have them (a /var/tmp or build volume linked elsewhere)."""

import json
import re
from pathlib import Path

import pytest

from tests.conftest import composer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def builds(testproduct_repo, base) -> dict[str, tuple[dict, str]]:
    conf = base / "fast-dracut.conf"
    conf.write_text('compress="cat"\n')  # this test is about the install stage
    extra = base / "marker.tmpl"
    extra.write_text("append /etc/composer-marker later-stage-only\n")

    links = base / "links"
    links.mkdir()
    for name, target in (("work", base / "work"), ("cache", base / "cache"), ("repo", testproduct_repo)):
        Path(target).mkdir(exist_ok=True)
        (links / name).symlink_to(target)

    def build(name: str, *args: str) -> tuple[dict, str]:
        out = base / name
        proc = composer(
            "runtime",
            "--product",
            "TestProduct",
            "--version",
            "1",
            "--source",
            f"file://{links / 'repo'}",
            "--nogpgcheck",
            "--cachedir",
            str(links / "cache"),
            "--workdir",
            str(links / "work"),
            "--compression",
            "lz4",
            "--rootfs-type",
            "squashfs",
            "--dracut-conf",
            str(conf),
            *args,
            str(out),
        )
        return json.loads((out / "manifest.json").read_text()), proc.stderr

    results = {
        "cold": build("cold"),
        # Only later stages differ: an extra template after postinstall, another dracut option.
        "hit": build("hit", "--add-template", str(extra), "--dracut-arg", "--no-early-microcode"),
        "nocache": build("nocache", "--no-cache"),
    }
    # An entry holding what cc38539 stored (/tmp at 0755): the next build must not use it.
    (entry,) = (base / "cache" / "trees").iterdir()
    (entry / "tree" / "tmp").chmod(0o755)
    results["tampered"] = build("tampered")
    return results


def test_first_build_stores_the_tree(builds):
    _, stderr = builds["cold"]
    assert "install: tree cache miss" in stderr
    assert re.search(r"install: tree cached as [0-9a-f]{12} \(\d+ MiB", stderr)


def test_second_build_is_a_hit_with_the_same_packages(builds):
    cold, _ = builds["cold"]
    hit, stderr = builds["hit"]
    m = re.search(r"install: tree cache hit \(key ([0-9a-f]{12})", stderr)
    assert m, stderr[-3000:]
    assert "dnf: installing" not in stderr
    assert hit["packages"] == cold["packages"]
    assert hit["timings"]["install"] < cold["timings"]["install"]
    print(f"install stage: cold {cold['timings']['install']}s, hit {hit['timings']['install']}s")


def test_no_cache_installs_afresh(builds):
    cold, _ = builds["cold"]
    fresh, stderr = builds["nocache"]
    assert "tree cache not used (--no-cache)" in stderr
    assert "tree cache hit" not in stderr and "dnf: installing" in stderr
    assert "tree cached as" not in stderr, "--no-cache must not pay for a cache copy either"
    assert fresh["packages"] == cold["packages"]


def test_an_entry_that_fails_the_tree_check_is_not_used(builds, base):
    tampered, stderr = builds["tampered"]
    assert re.search(
        r"tree cache entry [0-9a-f]{12} fails its check \(/tmp: is d 0755 0:0, package base-files "
        r"says d 1777 0:0\); installing afresh",
        stderr,
    ), stderr[-3000:]
    assert "dnf: installing" in stderr and "tree cached as" in stderr
    assert tampered["packages"] == builds["cold"][0]["packages"]
    (entry,) = (base / "cache" / "trees").iterdir()
    assert (entry / "tree" / "tmp").stat().st_mode & 0o7777 == 0o1777


def test_one_entry_and_no_leftovers(builds, base):
    entries = [p.name for p in (base / "cache" / "trees").iterdir()]
    assert len(entries) == 1 and re.fullmatch(r"[0-9a-f]{64}", entries[0]), entries
    assert list((base / "work").iterdir()) == []
