"""The logs lorax leaves next to --logfile, which Pungi's buildinstall phase reads.

lorax writes lorax.log (--logfile), pylorax.log (everything pylorax logs; Pungi greps it
for "Dependency check failed"), program.log (the programs it ran and their output),
dnf.log, and pkglists/<package> (the files of each installed package). composer logs
to one file (--logfile); after a build the first two are derived from it, dnf writes its
own logs there (Config.dnf_logdir), and pkglists/ is written from the tree's rpm database
before the cleanup template removes it.

Run as a script (`python3 loraxlogs.py pkglists TREE DEST`, from a template's runcmd
on the host) it needs only the standard library: it may run outside composer's sys.path.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

# rpm's database in the tree (composer.dnf.RPMDB; repeated so that the script stands alone)
RPMDB = "/usr/lib/sysimage/rpm"
_CMD = re.compile(r"^(\[\s*[\d.]+s\] )?\$ ")
_STAMP = re.compile(r"^\[\s*[\d.]+s\] ")
_DEPSOLVE = re.compile(r"nothing provides|conflicts with|Problem( \d+)?:|cannot install|depsolv", re.IGNORECASE)


def write_pkglists(tree: Path, dest: Path) -> int:
    """pkglists/<name>: the files of each installed package, one per line (lorax's writepkglists)."""
    proc = subprocess.run(["rpm", f"--root={tree}", f"--dbpath={RPMDB}", "-qa", "--queryformat=[%{=NAME}\t%{FILENAMES}\n]"],
                          capture_output=True, text=True, errors="replace", check=False)
    if proc.returncode != 0:
        raise SystemExit(f"pkglists: rpm failed: {proc.stderr.strip()[-300:]}")
    files: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        name, sep, path = line.partition("\t")
        if sep and path.startswith("/"):
            files.setdefault(name, []).append(path)
    dest.mkdir(parents=True, exist_ok=True)
    for name, paths in sorted(files.items()):
        if "/" in name or name.startswith("."):
            continue
        (dest / name).write_text("".join(f"{p}\n" for p in paths))
    return len(files)


def derive_logs(logfile: Path, error: str | None = None) -> None:
    """pylorax.log and program.log next to logfile, from composer's log; the error (if
    any) is added to lorax.log and pylorax.log, with lorax's wording for a failed depsolve."""
    logdir = logfile.parent
    text = logfile.read_text(errors="replace") if logfile.is_file() else ""
    if error:
        tail = f"ERROR: {error}\n"
        if _DEPSOLVE.search(error):
            tail += f"Dependency check failed: {error}\n"  # what Pungi looks for in pylorax.log
        with open(logfile, "a") as f:
            f.write(tail)
        text += tail
    (logdir / "pylorax.log").write_text(text)
    program: list[str] = []
    in_cmd = False
    for line in text.splitlines():
        if _CMD.match(line):
            in_cmd = True
            program.append(_STAMP.sub("", line, count=1))
        elif in_cmd and not _STAMP.match(line) and not line.startswith(("/", "template ")):
            program.append(line)  # a command's multi-line argument or output
        else:
            in_cmd = False
    (logdir / "program.log").write_text("".join(f"{line}\n" for line in program))


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "pkglists":
        n = write_pkglists(Path(argv[1]), Path(argv[2]))
        print(f"pkglists: {n} packages", file=sys.stderr)
        return 0
    print("usage: loraxlogs.py pkglists TREE DEST", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
