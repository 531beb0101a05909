"""The test product: a local RPM repository made from Debian 12 packages.

Fedora mirrors are not always reachable (CI, this machine), so composer carries
a stand-in product: apt resolves a small closure (kernel, systemd/udev, dracut
with its live and squash modules, coreutils, util-linux, ...), each .deb is
repackaged as an RPM with a generated spec, and `testproduct-setup` does what
Debian's maintainer scripts would have done. See DESIGN.md, "The test product".

    build_testproduct(dest) -> dest/repo   (createrepo_c'd, cached by its inputs)

Layout under dest: debs/ (download cache, kept), repo/ (the result, replaced
atomically), work/ (unpacked packages and specs, removed afterwards). The repository's comps
(comps.xml beside this file: Fedora's group ids, for %packages groups) is keyed apart from
the packages: a change to it only reruns createrepo_c.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from composer.run import ComposerError, atomic_dir, info, require, run, stage
from testproduct import debrpm, resolve, setuppkg
from testproduct.setuppkg import BOOT_MARKER, CHECK_ARGS

# Bump whenever the repackaging rules change: it is part of the cache key.
BUILDER_VERSION = "3"
STAMP = ".testproduct-key"
COMPS = Path(__file__).resolve().with_name("comps.xml")
COMPS_STAMP = ".testproduct-comps"
# What the runtime installs is the template's business (templates/testproduct/runtime-install.tmpl);
# what the repository offers, a superset, is resolve.EXTRA_ROOTS and their dependencies.

__all__ = ["build_testproduct", "BUILDER_VERSION", "BOOT_MARKER", "CHECK_ARGS"]


def cache_key(pkgs: list[resolve.DebPkg]) -> str:
    data = {
        "builder": BUILDER_VERSION,
        "packages": [f"{p.name}={p.version}/{p.arch}" for p in pkgs],
        "setup": setuppkg.fingerprint(),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _du(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def build_testproduct(dest: Path, *, force: bool = False, jobs: int | None = None) -> Path:
    """Build (or reuse) the test product repository; returns dest/repo."""
    dest = Path(dest).resolve()
    repo = dest / "repo"
    require("apt-get", "apt-cache", "dpkg-deb", "rpmbuild", "createrepo_c")
    jobs = jobs or min(os.cpu_count() or 2, 4)

    with stage("test product: resolve the Debian closure"):
        pkgs = resolve.resolve()
    key = cache_key(pkgs)
    stamp = repo / STAMP
    if not force and stamp.is_file() and stamp.read_text().strip() == key:
        info(f"test product: up to date (cached) at {repo}")
        with_comps(repo)
        return repo
    info(f"test product: {len(pkgs)} Debian packages")

    debdir = dest / "debs"
    with stage("test product: download"):
        debs = resolve.download(pkgs, debdir)
        wanted = {d.name for d in debs}
        for old in debdir.glob("*.deb"):
            if old.name not in wanted:
                old.unlink()

    work = dest / "work"
    if work.exists():
        shutil.rmtree(work)
    (work / "root").mkdir(parents=True)
    try:
        with atomic_dir(repo, force=True, require_marker=False) as out:
            with stage(f"test product: unpack {len(debs)} packages"):
                staged = debrpm.parallel(
                    lambda pd: debrpm.unpack(pd[1], work / "root" / pd[0].name), list(zip(pkgs, debs, strict=True)), jobs
                )
            with stage("test product: file conflicts and dependencies"):
                notes = debrpm.resolve_conflicts(staged)
                universe = debrpm.build_universe(staged)
                debrpm.translate_deps(staged, universe)
                closure = {p: e for s in staged for p, e in s.entries.items()}
                owners = sorted(
                    {(p, e.user, e.group, e.mode) for p, e in closure.items() if (e.user, e.group) != ("root", "root")}
                )
                info(f"test product: {len(notes)} file conflicts resolved, {len(owners)} ownership fix-ups")
            specdir = work / "specs"
            specdir.mkdir()
            with stage(f"test product: rpmbuild {len(staged) + 1} packages ({jobs} jobs)"):
                sizes = {s.name: debs[i].stat().st_size for i, s in enumerate(staged)}
                order = sorted(staged, key=lambda s: (-sizes[s.name], s.name))

                def build_one(s: debrpm.Staged) -> None:
                    spec = specdir / f"{s.name}.spec"
                    spec.write_text(debrpm.deb_spec(s))
                    try:
                        debrpm.rpmbuild(spec, buildroot=s.root, arch=s.rpm_arch, rpmdir=out, workdir=work, mtime=s.mtime)
                    except ComposerError as e:
                        raise ComposerError(f"test product: building {s.name} failed (spec: {spec}): {e}") from None
                    shutil.rmtree(s.root, ignore_errors=True)

                debrpm.parallel(build_one, order, jobs)
                names = {s.name for s in staged}
                base = {s.name for s in staged if s.fields.get("Essential") == "yes"}
                base |= names & set(setuppkg.BASE_EXTRA)
                setuppkg.build(workdir=work, rpmdir=out, release=BUILDER_VERSION, closure=closure, owner_fixups=owners, base=base)
            with stage("test product: createrepo_c"):
                run(["createrepo_c", "--quiet", "--no-database", "-g", str(COMPS), out])
            (out / COMPS_STAMP).write_text(_comps_digest(COMPS) + "\n")
            (out / STAMP).write_text(key + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info(f"test product: {len(pkgs) + 1} RPMs, {_du(repo) / 1e6:.0f} MB in {repo}")
    return repo


def _comps_digest(comps: Path) -> str:
    return hashlib.sha256(comps.read_bytes()).hexdigest()


def with_comps(repo: Path, comps: Path = COMPS) -> None:
    """The repository's metadata with `comps` as it is now (a repository made before it
    had comps, or with an older one): createrepo_c --update reuses the packages' metadata.
    Keyed apart from the packages (both products): a comps change never rebuilds an RPM."""
    stamp = repo / COMPS_STAMP
    digest = _comps_digest(comps)
    if stamp.is_file() and stamp.read_text().strip() == digest:
        return
    with stage(f"{repo.parent.name}: comps"):
        run(["createrepo_c", "--quiet", "--no-database", "--update", "-g", str(comps), str(repo)])
    stamp.write_text(digest + "\n")


def main(argv: list[str] | None = None) -> int:
    """`python -m testproduct DEST` (tools/ on sys.path; `make testproduct` does this)."""
    return builder_main("testproduct", __doc__, Path("build/testproduct"), build_testproduct, argv)


def builder_main(name: str, doc: str | None, default: Path, build: Callable[..., Path], argv: list[str] | None) -> int:
    """The command line of a product builder: DEST [--force] [--jobs N] [-v]; one error line."""
    import argparse

    from composer.preflight import check_dir_creatable
    from composer.run import set_logging

    ap = argparse.ArgumentParser(prog=f"python -m {name}", description=(doc or name).splitlines()[0])
    ap.add_argument("dest", type=Path, nargs="?", default=default)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--jobs", type=int)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    set_logging(verbose=args.verbose)
    t0 = time.monotonic()
    try:
        # Before the closure is resolved and packages are downloaded.
        check_dir_creatable(args.dest, "DEST")
        repo = build(args.dest.resolve(), force=args.force, jobs=args.jobs)
    except ComposerError as e:
        print(f"{name.rpartition('.')[2]}: error: {e}", file=sys.stderr)
        return 1
    print(f"{repo} ({time.monotonic() - t0:.1f}s)")
    return 0
