"""The Fedora-shaped test product: Debian 12 binaries under Fedora's package names and paths.

    python -m testproduct.fedoraproduct DEST   ->  DEST/repo (createrepo_c'd, cached by its inputs)

The small test product's machinery (resolve, debrpm, translate, setuppkg) does the work; this
module adds what makes the repository Fedora-shaped (fedora.py's table): renamed packages,
files at Fedora's paths, Fedora-named meta packages, our own stand-ins (standins.py), and the
kernel's modules.block/modules.networking. lorax's stock 99-generic templates build a boot.iso
from it (scripts/lorax-oracle). See docs/testproduct.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from composer.run import ComposerError, atomic_dir, info, require, run, stage
from testproduct import builder_main, debrpm, fedora, resolve, setuppkg, standins, with_comps
from testproduct import translate as tr

BUILDER_VERSION = "1"
STAMP = ".fedoraproduct-key"
# Where Debian's python3 finds packages (pypi entries go there).
PYTHON3_DIST = "/usr/lib/python3/dist-packages"
SHAPING_MODULES = ("fedora.py", "fedoraproduct.py", "standins.py")
# Fedora's group ids for kickstart %packages (tools/testproduct/fedora-live.ks); keyed apart
# from the packages, as the small product's comps.xml.
COMPS = Path(__file__).resolve().with_name("fedora-comps.xml")


def cache_key(pkgs: list[resolve.DebPkg]) -> str:
    data = {
        "builder": BUILDER_VERSION,
        "testproduct-builder": __import__("testproduct").BUILDER_VERSION,
        "packages": [f"{p.name}={p.version}/{p.arch}" for p in pkgs],
        "setup": setuppkg.fingerprint(),
        "table": repr(fedora.FEDORA) + repr(fedora.PYPI) + repr(fedora.MOVES) + repr((fedora.BLOCK_DIRS, fedora.NET_DIRS)),
        "standins": standins.fingerprint(standins.all_standins()),
        # the shaping rules are code too: any change to these modules rebuilds
        "code": [hashlib.sha256((Path(__file__).parent / m).read_bytes()).hexdigest() for m in SHAPING_MODULES],
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------ Fedora shaping


def _own_parents(s: debrpm.Staged, path: str) -> None:
    parent = os.path.dirname(path)
    while parent != "/" and parent not in s.entries:
        s.entries[parent] = debrpm.Entry(parent, parent, "d", 0o755, "root", "root")
        parent = os.path.dirname(parent)


def apply_moves(s: debrpm.Staged, debname: str) -> int:
    """Move, copy or drop files of one unpacked package as fedora.MOVES says; returns how many."""
    changed = 0
    for path, e in sorted(s.entries.items()):
        if e.kind == "d":
            continue
        dests = fedora.relocate(debname, path)
        if dests == [path]:
            continue
        src = s.root / path.lstrip("/")
        for d in dests:
            if d == path:
                continue
            dst = s.root / d.lstrip("/")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst, follow_symlinks=False)
            kind = "f" if e.kind == "h" else e.kind
            s.entries[d] = debrpm.Entry(d, d, kind, e.mode, e.user, e.group, e.target if kind == "l" else "")
            _own_parents(s, d)
        if path not in dests:
            src.unlink()
            del s.entries[path]
        changed += 1
    return changed


def rename(s: debrpm.Staged, fedname: str) -> None:
    """Build a Debian package under its Fedora name; it still provides the Debian one."""
    debname, debver = s.fields["Package"], s.fields["Version"]
    provides = [p for p in (s.fields.get("Provides", "").strip(),) if p]
    provides.append(f"{debname} (= {debver})")
    s.fields["Provides"] = ", ".join(provides)
    s.fields["Package"] = fedname
    s.fields["Version"] = fedora.fedora_version(fedname, debver)


def write_module_lists(s: debrpm.Staged) -> list[str]:
    """modules.block and modules.networking in every /usr/lib/modules/VER the kernel ships."""
    written = []
    for moddir in sorted(
        p for p, e in s.entries.items() if e.kind == "d" and p.count("/") == 4 and p.startswith("/usr/lib/modules/")
    ):
        rel = [p[len(moddir) + 1 :] for p in s.entries if p.startswith(moddir + "/")]
        block, net = fedora.module_lists(rel)
        for fname, lines in (("modules.block", block), ("modules.networking", net)):
            path = f"{moddir}/{fname}"
            (s.root / path.lstrip("/")).write_text("".join(f"{m}\n" for m in lines))
            s.entries[path] = debrpm.Entry(path, path, "f", 0o644, "root", "root")
            written.append(path)
    return written


def shape(staged: list[debrpm.Staged]) -> None:
    for s in staged:
        debname = s.name
        moved = apply_moves(s, debname)
        fedname = fedora.rename_for(debname)
        if fedname == "kernel-core":
            info(f"fedora product: kernel module lists: {' '.join(write_module_lists(s))}")
        if fedname:
            rename(s, fedname)
        if moved or fedname:
            info(
                f"fedora product: {debname}" + (f" -> {fedname}" if fedname else "") + (f", {moved} files moved" if moved else "")
            )


# ---------------------------------------------------------- our own packages


def own_packages(staged: list[debrpm.Staged]) -> list[standins.Package]:
    """Stand-ins, plus a package for every meta and placeholder entry of the table."""
    evr = {s.name: s.evr for s in staged}
    pkgs = standins.all_standins()
    for f in fedora.FEDORA:
        if f.kind == "meta":
            # a meta carries the version of what it requires first (kernel: kernel-core's,
            # grub2-tools-extra: grub2-tools', which templates compare with >=)
            meta = standins.Package(
                name=f.name,
                summary=f"Fedora's {f.name}: Debian's {', '.join(f.debian)}",
                description=f"Requires the Debian packages that stand for Fedora's {f.name}. {f.note}".strip(),
                requires=f.debian,
            )
            e = evr.get(f.debian[0])
            if e is not None:
                meta.evr = e
            pkgs.append(meta)
        elif f.kind == "placeholder":
            placeholder = standins.Package(
                name=f.name,
                summary=f"Placeholder for Fedora's {f.name} (no files)",
                description=f"The stock templates install {f.name}; nothing on the boot path uses it. {f.note}",
            )
            # a grub2-* one carries grub2-tools' version: templates ask for grub2-*>=1:2.06-67
            if f.name.startswith("grub2-") and (e := evr.get("grub2-tools")) is not None:
                placeholder.evr = e
            pkgs.append(placeholder)
    return pkgs


def pypi_package(f: fedora.Fed, *, downloads: Path, work: Path) -> standins.Package:
    """A pure-Python package Debian lacks, from its PyPI release (fedora.PYPI), where Debian's
    python3 finds it. Its scripts and man pages are dropped: pip writes this interpreter's path
    into the scripts, and the man pages would land beside the modules."""
    spec = fedora.PYPI[f.name]
    target = work / "pypi" / f.name
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    run([*pip, "download", "--no-deps", "--dest", downloads, spec])
    dist, version = spec.split("==")
    # the file itself (a wheel, or an sdist pip builds with the setuptools it asks for)
    release = sorted(downloads.glob(f"{dist}-{version}[.-]*"))[-1]
    run([*pip, "install", "--no-deps", "--no-compile", "--target", target, release])
    files = {}
    for src in sorted(target.rglob("*")):
        rel = src.relative_to(target)
        if src.is_dir() or rel.parts[0] in ("bin", "share") or "__pycache__" in rel.parts or rel.name == "direct_url.json":
            continue
        try:
            files[f"{PYTHON3_DIST}/{rel}"] = (0o644, src.read_text())
        except UnicodeDecodeError:
            raise ComposerError(f"fedora product: {spec}: {rel} is not text (a pure-Python package was expected)") from None
    return standins.Package(
        name=f.name,
        evr=tr.EVR(None, version, "1"),
        summary=f"{spec} from PyPI",
        description=f"Fedora's {f.name}: {spec}, installed for Debian's python3. {f.note}",
        files=files,
        requires=("python3", *f.debian),
    )


# -------------------------------------------------------------------- build


def _resolve() -> list[resolve.DebPkg]:
    pkgs = resolve.resolve(fedora.debian_roots(resolve.EXTRA_ROOTS))
    clash = fedora.collisions({p.name for p in pkgs})
    if clash:
        raise ComposerError(f"fedora product: Debian's closure has packages named like ours: {' '.join(clash)}")
    return pkgs


def _build_all(staged: list[debrpm.Staged], debs: dict[str, Path], *, out: Path, work: Path, jobs: int) -> int:
    specdir = work / "specs"
    specdir.mkdir(exist_ok=True)
    order = sorted(staged, key=lambda s: (-debs[s.name].stat().st_size, s.name))

    def build_one(s: debrpm.Staged) -> None:
        spec = specdir / f"{s.name}.spec"
        spec.write_text(debrpm.deb_spec(s))
        try:
            debrpm.rpmbuild(spec, buildroot=s.root, arch=s.rpm_arch, rpmdir=out, workdir=work, mtime=s.mtime)
        except ComposerError as e:
            raise ComposerError(f"fedora product: building {s.name} failed (spec: {spec}): {e}") from None
        shutil.rmtree(s.root, ignore_errors=True)

    closure = {p: e for s in staged for p, e in s.entries.items()}
    owners = sorted({(p, e.user, e.group, e.mode) for p, e in closure.items() if (e.user, e.group) != ("root", "root")})
    debrpm.parallel(build_one, order, jobs)
    names = {s.name for s in staged}
    base = {s.name for s in staged if s.fields.get("Essential") == "yes"} | (names & set(setuppkg.BASE_EXTRA))
    setuppkg.build(workdir=work, rpmdir=out, release=BUILDER_VERSION, closure=closure, owner_fixups=owners, base=base)
    pypi = [f for f in fedora.FEDORA if f.kind == "pypi"]
    own = own_packages(staged) + [pypi_package(f, downloads=work.parent / "pypi", work=work) for f in pypi]
    debrpm.parallel(lambda p: standins.build_package(p, workdir=work, rpmdir=out, closure=closure), own, jobs)
    return len(staged) + 1 + len(own)


def build_fedoraproduct(dest: Path, *, force: bool = False, jobs: int | None = None) -> Path:
    """Build (or reuse) the Fedora-shaped product's repository; returns dest/repo."""
    dest = Path(dest).resolve()
    repo = dest / "repo"
    require("apt-get", "apt-cache", "dpkg-deb", "rpmbuild", "createrepo_c")
    jobs = jobs or min(os.cpu_count() or 2, 4)
    with stage("fedora product: resolve the Debian closure"):
        pkgs = _resolve()
    key = cache_key(pkgs)
    stamp = repo / STAMP
    if not force and stamp.is_file() and stamp.read_text().strip() == key:
        info(f"fedora product: up to date (cached) at {repo}")
        with_comps(repo, COMPS)
        return repo
    info(f"fedora product: {len(pkgs)} Debian packages")
    debdir = dest / "debs"
    with stage("fedora product: download"):
        debfiles = resolve.download(pkgs, debdir)
    work = dest / "work"
    if work.exists():
        shutil.rmtree(work)
    (work / "root").mkdir(parents=True)
    try:
        with atomic_dir(repo, force=True, require_marker=False) as out:
            with stage(f"fedora product: unpack {len(debfiles)} packages"):
                pairs = list(zip(pkgs, debfiles, strict=True))
                staged = debrpm.parallel(lambda pd: debrpm.unpack(pd[1], work / "root" / pd[0].name), pairs, jobs)
                debs = {s.name: d for s, d in zip(staged, debfiles, strict=True)}
            with stage("fedora product: Fedora names and paths, conflicts, dependencies"):
                shape(staged)
                debs = {s.name: d for s, d in zip(staged, debfiles, strict=True)}
                notes = debrpm.resolve_conflicts(staged)
                debrpm.translate_deps(staged, debrpm.build_universe(staged))
                info(f"fedora product: {len(notes)} file conflicts resolved")
            with stage(f"fedora product: rpmbuild ({jobs} jobs)"):
                count = _build_all(staged, debs, out=out, work=work, jobs=jobs)
            with stage("fedora product: createrepo_c"):
                run(["createrepo_c", "--quiet", "--no-database", out])
            (out / STAMP).write_text(key + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    with_comps(repo, COMPS)
    size = sum(f.stat().st_size for f in repo.rglob("*.rpm"))
    info(f"fedora product: {count} RPMs, {size / 1e6:.0f} MB in {repo}")
    return repo


def main(argv: list[str] | None = None) -> int:
    return builder_main("testproduct.fedoraproduct", __doc__, Path("build/fedoraproduct"), build_fedoraproduct, argv)


if __name__ == "__main__":
    sys.exit(main())
