"""A dnf session: one install tree and the transactions that fill it.

Templates decide which packages go in (installpkg ... run_pkg_transaction); a session
only turns their requests into dnf runs, comps groups (@ID, composer.dnf.groups) included:
dnf expands those. dnf runs on the host with --installroot, so the
tree needs no package manager of its own; the repositories (composer.dnf.repos), the
command line (composer.dnf.programs), the sandbox (composer.dnf.sandbox) and the rpm
database (composer.dnf.rpmdb) are modules of their own.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from composer.dnf.groups import Comps, GroupSpec, is_group
from composer.dnf.programs import DnfProgram, dnf_reason, find_dnf, repo_error, scrub_logs
from composer.dnf.repos import (
    SOURCES_REPO,
    Repository,
    check_config,
    file_sources,
    local_paths,
    metadata_digest,
    origins,
    repositories,
    write_repofiles,
)
from composer.dnf.rpmdb import RPMDB, RPMMACROS, Rpmdb, RpmFile, install_macros, put_back
from composer.dnf.sandbox import sandbox
from composer.dnf.settings import DnfConfig
from composer.run import CommandError, ComposerError, debug, info, run

# Tree paths a dnf run itself may create (mount points for scriptlets, libdnf's module
# state, dnf5's lock directory): kept only as a package makes them.
DNF_MADE = ("dev", "proc", "sys", "etc", "etc/dnf", "etc/dnf/modules.d", "run", "run/dnf")
# Options naming work paths, not what lands in the tree: left out of the cache key.
_WORK_OPTIONS = ("--installroot=", "--setopt=reposdir=") + tuple(
    f"--setopt={o}="
    for o in ("cachedir", "system_cachedir", "logdir", "persistdir", "system_state_dir", "transaction_history_dir", "sslverify")
)


class DnfSession:
    """One install tree and the dnf transactions that fill it (a templates.PackageManager)."""

    def __init__(self, tree: Path, config: DnfConfig, workdir: Path) -> None:
        self.tree = tree
        self.config = config
        self.workdir = workdir
        self._to_install: list[str] = []
        self._groups: list[GroupSpec] = []
        self._available: list[str] | None = None
        self._comps: Comps | None = None
        check_config(config)
        self.home = workdir / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / ".rpmmacros").write_text(RPMMACROS + install_macros(config.install_langs))
        # Repository definitions, with their credentials only while dnf runs (_credentials).
        self.reposdir = workdir / "repos.d"
        self.reposdir.mkdir(mode=0o700, exist_ok=True)
        self.repositories = repositories(config)
        write_repofiles(self.reposdir, self.repositories, secrets=False)
        for r in (r for _, repos in self.repositories for r in repos):
            debug(f"dnf: repository {r.id} from {r.origin}")  # debug masks a URL's credentials
        self.logdir = config.logdir or workdir / "dnf-log"
        self.logdir.mkdir(parents=True, exist_ok=True)
        (workdir / "dnf-state").mkdir(exist_ok=True)
        tree.mkdir(parents=True, exist_ok=True)
        self.env = {"HOME": str(self.home), "LC_ALL": "C.UTF-8"}
        self._program: DnfProgram | None = None
        self.rpmdb = Rpmdb(self._rpm)

    @contextlib.contextmanager
    def _credentials(self) -> Iterator[None]:
        """The repositories' credentials in reposdir while dnf runs, and only then."""
        write_repofiles(self.reposdir, self.repositories, secrets=True)
        try:
            yield
        finally:
            write_repofiles(self.reposdir, self.repositories, secrets=False)
            scrub_logs(self.logdir)

    @property
    def program(self) -> DnfProgram:
        """The dnf this session runs (found on first use: a session may never run dnf)."""
        if self._program is None:
            self._program = find_dnf(self.config.dnf, self.config.root)
            info(f"dnf: {self._program.describe()}")
        return self._program

    def _sandbox(self, transaction: bool, private_tmp: bool = True) -> list[str]:
        root = self.program.root
        rw = [self.workdir, self.tree, self.config.cachedir, self.logdir]
        ro = local_paths(self.config, self.repositories) if root is not None or private_tmp else []
        return sandbox(self.tree, root, rw, ro, transaction=transaction, private_tmp=private_tmp)

    # -- dnf command line -------------------------------------------------------
    def _dnf_argv(self) -> list[str]:
        c = self.config
        c.cachedir.mkdir(parents=True, exist_ok=True)
        program = self.program
        cli = program.cli
        argv = [
            program.command,
            "-y",
            "--quiet",
            f"--installroot={self.tree}",
            f"--releasever={c.releasever}",
            f"--forcearch={c.arch}",
            "--noplugins",
            f"--setopt=reposdir={self.reposdir}",
            # Paths that reach the host whether or not dnf puts the installroot in front.
            *cli.state(self._host_path, cachedir=c.cachedir, logdir=self.logdir, state=self.workdir / "dnf-state"),
            "--setopt=keepcache=True",
            f"--setopt=install_weak_deps={c.weak_deps}",
            "--setopt=check_config_file_age=False",
            # A repository that cannot be read is an error, not an empty repository
            # (else a typo in a URL surfaces as "no package matches").
            "--setopt=skip_if_unavailable=False",
        ]
        if c.nodocs:
            argv.append("--setopt=tsflags=nodocs")
        if c.nogpgcheck:
            argv.append("--nogpgcheck")
        # An excluded group (-@ID) is not dnf's --exclude: _groups_to_install leaves it out.
        argv += [f"--exclude={pattern}" for pattern in c.excludepkgs if not is_group(pattern)]
        # Enabled first, then disabled, as lorax applies them.
        argv += cli.repos_switched(c.enablerepos, c.disablerepos)
        if c.disablerepos:
            # The --source repositories are not the .repo files' to switch off (as when they
            # were dnf's --repofrompath, which nothing disables).
            argv += cli.repos_switched([r.id for r in self._sources()], ())
        # How packages are fetched, not which: left out of the cache key (shaping_options).
        # The proxy and the credentials are in the repositories' files (_credentials).
        if not c.sslverify:
            argv.append("--setopt=sslverify=False")
        return argv

    def shaping_options(self) -> list[str]:
        """dnf and the options that decide what lands in the tree, without work paths (cache keys)."""
        # Which dnf (and rpm) it is, not where it lives: dnf 4 and dnf5 trees differ (rpm database).
        repos = [line for _, rs in self.repositories for r in rs for line in r.shaping()]
        macros = [f"rpm macro {m}" for m in install_macros(self.config.install_langs).splitlines()]
        argv = [a for a in self._dnf_argv()[1:] if not a.startswith(_WORK_OPTIONS)]
        return [self.program.identity(), *argv, *repos, *macros]

    def _sources(self) -> list[Repository]:
        return next((repos for name, repos in self.repositories if name == SOURCES_REPO), [])

    def _rpm(self, *args: str) -> str:
        # The rpm beside dnf: the database it wrote is the one it reads best.
        argv = ["rpm", f"--root={self.tree}", f"--dbpath={RPMDB}", *args]
        proc = run(self._sandbox(transaction=False, private_tmp=False) + argv, env=self.env, capture=True)
        return proc.stdout.decode(errors="replace")

    def _host_path(self, host: Path) -> str:
        """A value for dnf's cachedir or logdir that reaches `host` from the tree.

        dnf 4 puts the installroot in front of these, whatever they are set to; one `..`
        per component of the tree's path leads back to /, so the package cache, logs and
        history stay on the host and nothing is created in the tree for them.
        """
        depth = len(self.tree.resolve().parts) - 1
        return "/" + "../" * depth + str(host.resolve()).lstrip("/")

    @contextlib.contextmanager
    def _tidy(self) -> Iterator[None]:
        """Put back what dnf itself makes in the tree.

        libdnf creates /etc/dnf/modules.d under the installroot, and bubblewrap the mount
        points of /dev, /proc and /sys (rpmdb.put_back). After a failed or interrupted run
        the tree is thrown away: nothing to put back, no rpm to wait for.
        """
        made = [p for p in DNF_MADE if not os.path.lexists(self.tree / p)]
        yield
        made = [p for p in made if os.path.lexists(self.tree / p)]
        if made:
            owned = self.packaged_files() if (self.tree / RPMDB.lstrip("/")).is_dir() else {}
            put_back(self.tree, made, owned)

    def _dnf(self, *args: str, capture: bool = False, transaction: bool = False) -> subprocess.CompletedProcess[bytes]:
        # Scriptlets get /dev, /proc and /sys as on a real system (see sandbox.sandbox).
        argv = self._dnf_argv() + list(args)
        with self._tidy(), self._credentials():
            return run(self._sandbox(transaction) + argv, env=self.env, capture=capture)

    # -- what the repositories offer ---------------------------------------------
    def available(self) -> list[str]:
        """Names of all packages the repositories offer (one metadata load, cached)."""
        if self._available is None:
            self._available = self._query()
            debug(f"{len(self._available)} package names available")
        return self._available

    def providers(self, capability: str) -> list[str]:
        """Names of the available packages that provide `capability` (lorax's branding asks
        who provides system-release)."""
        return self._query(provides=capability)

    def _query(self, provides: str | None = None) -> list[str]:
        try:
            proc = self._dnf(*self.program.cli.available("%{name}\n", provides=provides), capture=True)
        except CommandError as e:
            raise ComposerError(repo_error(e.stderr, origins(self.repositories))) from None
        return sorted(set(proc.stdout.decode().split()))

    def comps(self) -> Comps:
        """The groups and environments the repositories offer (one listing, cached)."""
        if self._comps is None:
            cli = self.program.cli
            outputs = []
            for query in cli.comps_queries():
                try:
                    outputs.append(self._dnf(*query, capture=True).stdout.decode(errors="replace"))
                except CommandError as e:
                    # dnf 4 fails a listing when no repository has comps: nothing offered, not an error.
                    if "No group data" not in e.stderr:
                        raise ComposerError(repo_error(e.stderr, origins(self.repositories))) from None
                    outputs.append("")
            self._comps = cli.read_comps(outputs)
            debug(f"comps: {len(self._comps.groups)} groups, {len(self._comps.environments)} environments")
        return self._comps

    def missing_groups(self, specs: Sequence[str]) -> list[str]:
        """The group and environment specs (@ID, @^ID) no repository's comps has."""
        return [s for s in specs if is_group(s) and not self.comps().has(_group(s))]

    def _gpg_reason(self, stderr: str) -> str | None:
        """dnf's signature complaints ("Problem repository: [id]") as what is wrong and what to do."""
        if not re.search(r"\bGPG\b|not signed|public key", stderr):
            return None
        unsigned = self._an_unsigned_package()
        what = (
            f"package {unsigned} is not signed"
            if unsigned
            else "package signatures cannot be checked (no GPG key for the repository)"
        )
        return (
            f"{what}: signature checks are on by default; give the repository's key (gpgkey= in a --repo "
            "file) or pass --nogpgcheck to trust the source as it is"
        )

    def _an_unsigned_package(self) -> str | None:
        """The first package without a signature in a local --source (remote ones are not read)."""
        for path in file_sources(self.config):
            for rpm in sorted(path.rglob("*.rpm"))[:50]:
                try:
                    out = self._rpm("-qp", "--nosignature", "--queryformat=%{SIGPGP:pgpsig}%{RSAHEADER:pgpsig}", str(rpm))
                except CommandError:
                    continue
                if out.strip() == "(none)(none)":
                    return rpm.name
        return None

    # -- templates.PackageManager -------------------------------------------------
    def install(self, patterns: Sequence[str], *, required: bool = True, exclude: Sequence[str] = ()) -> None:
        for pattern in patterns:
            if is_group(pattern):
                self._request_group(pattern, required)
                continue
            names = self.available()
            name, _, constraint = pattern.partition(" ")  # "NAME >= VER" (lorax's installpkg NAME>=VER)
            matches = [n for n in names if fnmatch.fnmatchcase(n, name)]
            matches = [m for m in matches if not any(fnmatch.fnmatchcase(m, e) for e in exclude)]
            matches = [m for m in matches if not any(fnmatch.fnmatchcase(m, e) for e in self.config.excludepkgs)]
            if not matches:
                if required:
                    raise ComposerError(f"no package matches {pattern!r} in the repositories")
                debug(f"optional package {pattern!r} not available, skipped")
                continue
            self._to_install.extend(f"{m} {constraint}" if constraint else m for m in matches)

    def _request_group(self, spec: str, required: bool) -> None:
        group = _group(spec)
        if not self.comps().has(group):
            if required:
                raise ComposerError(f"no group or environment matches {spec!r} in the repositories' comps")
            info(f"group {spec!r} is in no repository's comps, skipped")
            return
        self._groups.append(group)

    def has_pending(self) -> bool:
        return bool(self._to_install or self._groups)

    def _environment_groups(self, environment: GroupSpec) -> list[str]:
        cli = self.program.cli
        try:
            proc = self._dnf(*cli.environment_info(environment.id), capture=True)
        except CommandError as e:
            raise ComposerError(repo_error(e.stderr, origins(self.repositories))) from None
        return cli.read_environment(proc.stdout.decode(errors="replace"), self.comps())

    def _groups_to_install(self) -> list[GroupSpec]:
        """The requested groups less the excluded ones (-@ID among the excludes), as anaconda
        has dnf install them. dnf's command line cannot exclude a group: an environment with
        an excluded group is installed as its other groups."""
        excluded_specs = [_group(e) for e in self.config.excludepkgs if is_group(e)]
        if not (excluded_specs and self._groups):
            return list(self._groups)
        comps = self.comps()
        excluded = set().union(*(comps.ids_of(e) for e in excluded_specs))
        kept: list[GroupSpec] = []
        for g in self._groups:
            if comps.ids_of(g) & excluded:
                info(f"dnf: {g} left out (excluded)")
                continue
            members = self._environment_groups(g) if g.environment else []
            if set(members) & excluded:
                others = [m for m in members if m not in excluded]
                left = f"its groups {' '.join(others)}" if others else "none of its groups"
                info(f"dnf: {g} without {', '.join(sorted(set(members) & excluded))}: {left}")
                kept += [GroupSpec(m) for m in others]
            else:
                kept.append(g)
        return kept

    def _runs(self) -> list[tuple[tuple[str, ...] | None, list[str]]]:
        """The pending requests as dnf runs: the packages and the groups of dnf's own package
        types in one, and one per other set of types (dnf's command line sets them per run)."""
        runs: dict[tuple[str, ...] | None, list[str]] = {None: sorted(set(self._to_install))}
        for g in self._groups_to_install():
            runs.setdefault(g.types, []).append(g.dnf_spec)
        return [(types, list(dict.fromkeys(specs))) for types, specs in runs.items() if specs]

    def run_transaction(self) -> None:
        for types, specs in self._runs():
            self._install(specs, types)
        self._to_install.clear()
        self._groups.clear()

    def _install(self, specs: list[str], types: tuple[str, ...] | None) -> None:
        cli = self.program.cli
        groups = [s for s in specs if is_group(s)]
        packages = len(specs) - len(groups)
        what = ", ".join(([f"{packages} requested packages"] if packages else []) + groups)
        how = f" (package types {','.join(types)})" if types else ""
        info(f"dnf: installing {what}{how} and their dependencies")
        try:
            self._dnf(*(cli.group_types(types) if types else []), *cli.install(specs), transaction=True)
        except CommandError as e:
            reason = self._gpg_reason(e.stderr) or dnf_reason(e.stderr)
            raise ComposerError(f"dnf transaction failed: {reason}") from None

    # -- the tree's rpm database (composer.dnf.rpmdb) -----------------------------
    def installed(self) -> list[str]:
        return self.rpmdb.installed()

    def files_of(self, name: str) -> list[str]:
        return self.rpmdb.files_of(name)

    def files_by_package(self) -> dict[str, list[str]]:
        return self.rpmdb.files_by_package()

    def packaged_files(self) -> dict[str, list[RpmFile]]:
        return self.rpmdb.packaged_files()

    def nevras(self) -> list[str]:
        return self.rpmdb.nevras()

    def metadata_digest(self) -> str:
        """A digest of the repositories' metadata (repos.metadata_digest), for keying caches."""
        return metadata_digest(self.config, self.repositories, self.available)


def _group(spec: str) -> GroupSpec:
    try:
        return GroupSpec.parse(spec)
    except ValueError as e:
        raise ComposerError(str(e)) from None
