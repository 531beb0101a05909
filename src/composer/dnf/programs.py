"""The two dnf command lines, dnf 4 and dnf5, behind one small interface, and finding
the one to run.

dnf 4 (Debian 12, Fedora up to 40) and dnf5 (Fedora 41+, where `dnf` is dnf5) take the
same options for what goes into a tree; they differ in where they keep their state and
how a few options are spelled. CommandLine says what a session asks of either (mkosi's
installer/ has one class per package manager the same way); Dnf4 and Dnf5 answer.
find_dnf finds the dnf on the host or in a --dnf-root and says which it is (DnfProgram);
dnf_reason and repo_error read what either says went wrong, scrub_logs masks secrets in its logs.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from composer.config import DnfChoice
from composer.dnf.groups import Comps, read_dnf4_environment, read_dnf4_listing, read_dnf5_environment, read_dnf5_table
from composer.dnf.sandbox import root_sandbox
from composer.run import CommandError, ComposerError, debug, redact, run
from composer.userns import inside as userns_inside

# dnf's own log files (dnf 4: dnf.log, dnf.librepo.log, dnf.rpm.log, hawkey.log; dnf5: dnf5.log).
DNF_LOGS = ("dnf", "hawkey")
# Environment variable naming a --dnf-root when the option is not given.
DNF_ROOT_ENV = "COMPOSER_DNF_ROOT"
# Program names to try, in order, for each choice (a Fedora 41+ `dnf` is dnf5, `dnf4` and
# `dnf-3` are dnf 4 wherever they exist).
_CANDIDATES = {
    DnfChoice.AUTO: ("dnf", "dnf5", "dnf-3"),
    DnfChoice.DNF4: ("dnf4", "dnf-3", "dnf"),
    DnfChoice.DNF5: ("dnf5", "dnf"),
}


class CommandLine:
    """What differs between dnf's command lines: the interface a session builds argv with.
    The defaults are what both spell alike."""

    flavor: DnfChoice

    def version(self, command: str) -> list[str]:
        return [command, "--version"]

    def state(self, reach: Callable[[Path], str], *, cachedir: Path, logdir: Path, state: Path) -> list[str]:
        """Options putting the package cache, dnf's logs and its state (history, install
        reasons, lock) on the host; `reach` makes a host path that survives dnf putting
        the installroot in front of it."""
        raise NotImplementedError

    def repos_switched(self, enable: Sequence[str], disable: Sequence[str]) -> list[str]:
        """Options enabling, then disabling (lorax's order), repository ids or globs."""
        raise NotImplementedError

    def install(self, packages: Sequence[str]) -> list[str]:
        return ["install", *packages]

    def group_types(self, types: Sequence[str]) -> list[str]:
        """The option installing these package types of the groups of one run (before the command)."""
        return [f"--setopt=group_package_types={','.join(types)}"]

    def comps_queries(self) -> list[list[str]]:
        """The listings of the groups (hidden ones too: @core is) and environments the repositories offer."""
        raise NotImplementedError

    def read_comps(self, outputs: Sequence[str]) -> Comps:
        """What comps_queries printed, in their order."""
        raise NotImplementedError

    def environment_info(self, environment: str) -> list[str]:
        raise NotImplementedError

    def read_environment(self, output: str, comps: Comps) -> list[str]:
        """The ids of the groups an install of the environment installs (environment_info printed)."""
        raise NotImplementedError

    def available(self, queryformat: str, *, provides: str | None = None) -> list[str]:
        """A query of the packages the repositories offer (those providing `provides`)."""
        return ["repoquery", "--available", *([f"--whatprovides={provides}"] if provides else []), f"--queryformat={queryformat}"]


class Dnf4(CommandLine):
    flavor = DnfChoice.DNF4

    def state(self, reach: Callable[[Path], str], *, cachedir: Path, logdir: Path, state: Path) -> list[str]:
        # dnf 4 puts the installroot in front of cachedir and logdir, not of persistdir (its
        # history): that is a host path as it is.
        return [f"--setopt=cachedir={reach(cachedir)}", f"--setopt=logdir={reach(logdir)}", f"--setopt=persistdir={state}"]

    def repos_switched(self, enable: Sequence[str], disable: Sequence[str]) -> list[str]:
        return [f"--enablerepo={g}" for g in enable] + [f"--disablerepo={g}" for g in disable]

    def comps_queries(self) -> list[list[str]]:
        # `ids` as a word: dnf 4 refuses --hidden beside --ids.
        return [["group", "list", "--hidden", "ids"]]

    def read_comps(self, outputs: Sequence[str]) -> Comps:
        return read_dnf4_listing(outputs[0])

    def environment_info(self, environment: str) -> list[str]:
        return ["group", "info", environment]

    def read_environment(self, output: str, comps: Comps) -> list[str]:
        return read_dnf4_environment(output, comps)


class Dnf5(CommandLine):
    flavor = DnfChoice.DNF5

    def state(self, reach: Callable[[Path], str], *, cachedir: Path, logdir: Path, state: Path) -> list[str]:
        # dnf5 puts the installroot in front of its own state (install reasons, history) and
        # the lock in persistdir, and takes the rest as given.
        return [
            f"--setopt=cachedir={reach(cachedir)}",
            f"--setopt=logdir={reach(logdir)}",
            f"--setopt=persistdir={reach(state)}",
            *(f"--setopt={o}={reach(state)}" for o in ("system_state_dir", "transaction_history_dir")),
            f"--setopt=system_cachedir={reach(cachedir)}",
        ]

    def repos_switched(self, enable: Sequence[str], disable: Sequence[str]) -> list[str]:
        return [f"--enable-repo={g}" for g in enable] + [f"--disable-repo={g}" for g in disable]

    def comps_queries(self) -> list[list[str]]:
        return [["group", "list", "--hidden"], ["environment", "list"]]

    def read_comps(self, outputs: Sequence[str]) -> Comps:
        return Comps(read_dnf5_table(outputs[0]), read_dnf5_table(outputs[1]))

    def environment_info(self, environment: str) -> list[str]:
        return ["environment", "info", environment]

    def read_environment(self, output: str, comps: Comps) -> list[str]:
        # dnf5 also installs the optionlist's default="true" groups, which its info does not
        # mark: the required ones are taken, as dnf 4 installs them.
        return read_dnf5_environment(output)


COMMAND_LINES: dict[DnfChoice, CommandLine] = {c.flavor: c for c in (Dnf4(), Dnf5())}


@dataclasses.dataclass(frozen=True)
class DnfProgram:
    """The dnf that fills trees: its command line's major version and where it runs."""

    flavor: DnfChoice  # DNF4 or DNF5
    command: str  # as found on PATH (the host's or the root's)
    version: str  # dnf's own version line
    rpm_version: str  # the rpm that writes the database beside it
    root: Path | None = None

    @property
    def cli(self) -> CommandLine:
        return COMMAND_LINES[self.flavor]

    def identity(self) -> str:
        """What decides the tree's bytes (for the tree cache key): not where the root lies."""
        return f"{self.flavor} {self.version}; {self.rpm_version}"

    def describe(self) -> str:
        return f"{self.flavor} ({self.version})" + (f" from --dnf-root {self.root}" if self.root else "")


def dnf_reason(stderr: str) -> str:
    """The lines of dnf's complaint that say what is wrong."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    # rpm's transaction test: "At least 450MB more space needed on the /var/tmp/... filesystem."
    space = [ln for ln in lines if re.search(r"more space", ln, re.I)]
    if space:
        return f"not enough disk space for the tree: {space[-1]} (free some, or give --workdir elsewhere)"
    # Whole words only (not "libgpg-error0"), and not bare headings such as "Failed:".
    keep = [
        ln
        for ln in lines
        if not re.fullmatch(r"[\w ]+:", ln)
        and re.search(r"\b(error|problem|no match|nothing provides|conflicts?|cannot|failed)\b", ln, re.I)
    ]
    text = " | ".join((keep or lines)[-4:])
    return text or "see the log for dnf's output"


def repo_error(stderr: str, origins: dict[str, str]) -> str:
    """dnf's complaint about a repository, naming where it came from (origins: id -> "--source URL")."""
    reason = dnf_reason(stderr)
    for rid, origin in origins.items():
        # dnf 4: "... for repo 'ID'"; dnf5: '... for repository "ID": ...'.
        for quoted in (f"'{rid}'", f'"{rid}"'):
            if quoted in reason:
                reason = re.sub(r" for (repo|repository) " + re.escape(quoted), "", reason)
                reason = re.sub(r"^Error: ", "", reason.replace(quoted, "it"))
                return f"{origin}: cannot read the repository: {reason}"
    return f"cannot read the package repositories: {reason}"


def scrub_logs(logdir: Path) -> None:
    """dnf's logs with every secret composer knows masked: a credential dnf was not given
    (a mirror list's URLs) must not stay in a log others read."""
    for log in logdir.glob("*.log"):
        if log.name.startswith(DNF_LOGS) and log.is_file() and not log.is_symlink():
            text = log.read_text(errors="surrogateescape")
            clean = redact(text)
            if clean != text:
                log.write_text(clean, errors="surrogateescape")


def _version_line(argv: list[str]) -> str:
    try:
        out = run(argv, capture=True, quiet=True).stdout.decode(errors="replace")
    except CommandError as e:
        raise ComposerError(f"{' '.join(argv[-2:])} does not run: {dnf_reason(e.stderr)}") from None
    return (out.strip().splitlines() or ["unknown"])[0].strip()


def _flavor(version_line: str) -> DnfChoice:
    # dnf5: "dnf5 version 5.4.6.0"; dnf 4: "4.14.0".
    return DnfChoice.DNF5 if version_line.startswith(("dnf5", "5.")) else DnfChoice.DNF4


@functools.cache
def find_dnf(choice: DnfChoice = DnfChoice.AUTO, root: Path | None = None) -> DnfProgram:
    """The dnf to use: the host's (or root's) `dnf` for auto, else the major version asked for."""
    option = f"--dnf {choice}" if choice is not DnfChoice.AUTO else "dnf"
    if root is not None:
        if not (root / "usr" / "bin").is_dir():
            raise ComposerError(f"--dnf-root {root}: not a root directory (no usr/bin; scripts/dnf5-root makes one)")
        prefix = root_sandbox(root) + ["--"]
        found = [n for n in _CANDIDATES[choice] if (root / "usr" / "bin" / n).exists()]
        where = f"in --dnf-root {root}"
    else:
        # In composer's user namespace the host's /var/log is not root's to write: dnf 4's
        # --version (which ignores --setopt=logdir) runs over a throwaway /var there.
        prefix = root_sandbox(Path("/")) + ["--dir", "/var/log", "--"] if userns_inside() else []
        found = [n for n in _CANDIDATES[choice] if shutil.which(n)]
        where = "on this host"
    for name in found:
        line = _version_line(prefix + CommandLine().version(name))
        flavor = _flavor(line)
        if choice is DnfChoice.AUTO or flavor is choice:
            rpm = _version_line(prefix + ["rpm", "--version"]) if (root is None or (root / "usr/bin/rpm").exists()) else ""
            if not rpm:
                raise ComposerError(f"--dnf-root {root}: has dnf but no rpm")
            program = DnfProgram(flavor, name, line, rpm, root)
            debug(f"dnf: {program.describe()}, {rpm}")
            return program
    if choice is DnfChoice.DNF5:
        hint = (
            "give --dnf-root DIR (or COMPOSER_DNF_ROOT), a root with dnf5 in it (scripts/dnf5-root makes "
            "Debian unstable's), or install dnf5"
        )
    elif root is not None:
        hint = "give a root with dnf in it, or leave out --dnf-root to use the host's"
    else:
        hint = "install dnf (apt-get install dnf), or give --dnf-root DIR, a root with dnf in it"
    what = {DnfChoice.AUTO: "no dnf", DnfChoice.DNF4: "no dnf 4", DnfChoice.DNF5: "no dnf5"}[choice]
    raise ComposerError(f"{option}: {what} {where}: {hint}")
