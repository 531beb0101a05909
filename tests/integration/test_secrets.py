"""Credentials stay secret, end to end (issue 20): the test product's repository served over
HTTP with basic auth, behind a proxy that wants credentials of its own, reached by a --source
URL, a --mirrorlist URL, a --repo file (username=/password=) and --proxy, each with other
credentials. While composer runs, every process's argv (what `ps` shows every user) is
sampled; afterwards every file the build wrote is grepped for every credential: the console,
--logfile, the kept work directory (the tree, dnf's logs and history), dnf's cache, the
outputs, and the runtime image unpacked. One `composer lorax` run, failing on a source whose
password is wrong, does the same for lorax's logs (lorax.log, pylorax.log, program.log, dnf's).

Cost: one compose without the tree cache (a cache hit would run no dnf transaction, the very
thing checked) into a cache of its own (dnf's cache is named by the URL, whose port changes
from run to run), lz4. Measured 2026-12-06 on 2 shared cores at load 3-5: 67 s in all, the
compose 48 s, unpacking and grepping 13 s, the lorax run 1 s.
"""

from __future__ import annotations

import base64
import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

# user -> password; each reaches composer by one way. The --source password is given
# percent-encoded in its URL ("!"): both spellings are looked for.
SOURCE = ("SrcUserQ7", "Src-S3cret!x")
MIRROR = ("MirrorUserQ7", "Mirror-S3cret")
REPOFILE = ("RepoUserQ7", "Repo-S3cret")
PROXY = ("ProxyUserQ7", "Proxy-S3cret")
WRONG = ("SrcUserQ7", "Wrong-S3cret")  # the lorax run's failing source
CREDENTIALS = (SOURCE, MIRROR, REPOFILE, PROXY, WRONG)


def _token(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


NEEDLES = sorted(
    {*(p for _, p in CREDENTIALS), "Src-S3cret%21x", *(u for u, _ in CREDENTIALS), *(_token(u, p) for u, p in CREDENTIALS)}
)


class _Origin(http.server.SimpleHTTPRequestHandler):
    """The repository; only with the credentials of SOURCE, MIRROR or REPOFILE. /mirrorlist
    lists the repository itself (no credentials: dnf gives the mirrorlist repository's)."""

    used: set[str] = set()

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization", "")
        user = next((u for u, p in (SOURCE, MIRROR, REPOFILE) if auth == f"Basic {_token(u, p)}"), None)
        if user is None:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="repo"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        type(self).used.add(user)
        if self.path == "/mirrorlist":
            body = f"http://127.0.0.1:{self.server.server_address[1]}/\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


class _Proxy(http.server.BaseHTTPRequestHandler):
    """A forward proxy wanting PROXY's credentials; passes the rest of the request on."""

    proxied = 0

    def do_GET(self) -> None:
        if self.headers.get("Proxy-Authorization", "") != f"Basic {_token(*PROXY)}":
            self.send_response(407)
            self.send_header("Proxy-Authenticate", 'Basic realm="proxy"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        type(self).proxied += 1
        req = urllib.request.Request(
            self.path, headers={k: v for k, v in self.headers.items() if k.lower() in ("authorization", "range")}
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            resp = opener.open(req, timeout=60)
        except urllib.error.HTTPError as e:
            resp = e
        body = resp.read()
        self.send_response(resp.status if hasattr(resp, "status") else resp.code)
        for k, v in resp.headers.items():
            if k.lower() in ("www-authenticate", "content-type", "last-modified"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def _serve(handler) -> tuple[http.server.ThreadingHTTPServer, int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


class _ArgvSampler:
    """Every process's command line, read from /proc as `ps` does, while a build runs; but
    composer's own, which holds what the user typed (the credentials given on it, which only
    a --repo file keeps out of sight)."""

    def __init__(self) -> None:
        self.ignore: set[str] = set()
        self.leaks: dict[str, str] = {}
        self.seen_dnf = self.seen_bwrap = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if pid in self.ignore:
                    continue
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if argv.startswith(f"{sys.executable} -m composer "):
                    continue  # composer itself, before ignore has its pid
                self.seen_dnf += "--installroot=" in argv
                self.seen_bwrap += argv.startswith("bwrap ")
                for needle in NEEDLES:
                    if needle in argv:
                        self.leaks[f"{needle} in {pid}"] = argv[:400]
            self._stop.wait(0.05)

    def __enter__(self) -> _ArgvSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _grep(paths: list[Path]) -> list[str]:
    """Files below paths holding any needle, as bytes (binary files and images too)."""
    args = [a for n in NEEDLES for a in ("-e", n)]
    proc = subprocess.run(
        ["grep", "-rlaF", "--devices=skip", *args, "--", *map(str, paths)], capture_output=True, text=True, check=False
    )
    assert proc.returncode in (0, 1), proc.stderr
    return proc.stdout.splitlines()


def _in_text(text: str) -> list[str]:
    return [n for n in NEEDLES if n in text]


@pytest.fixture(scope="module")
def servers(testproduct_repo) -> Iterator[tuple[int, int]]:
    origin, port = _serve(functools.partial(_Origin, directory=str(testproduct_repo)))
    proxy, proxy_port = _serve(_Proxy)
    yield port, proxy_port
    for s in (origin, proxy):
        s.shutdown()
        s.server_close()


def _repo_options(tmp_path: Path, port: int, proxy_port: int) -> list[str]:
    repofile = tmp_path / "private.repo"
    repofile.write_text(
        f"[private]\nname=Private\nbaseurl=http://127.0.0.1:{port}/\nusername={REPOFILE[0]}\npassword={REPOFILE[1]}\ngpgcheck=0\n"
    )
    return [
        "--source",
        f"http://{SOURCE[0]}:Src-S3cret%21x@127.0.0.1:{port}/",
        "--mirrorlist",
        f"http://{MIRROR[0]}:{MIRROR[1]}@127.0.0.1:{port}/mirrorlist",
        "--repo",
        str(repofile),
        "--proxy",
        f"http://{PROXY[0]}:{PROXY[1]}@127.0.0.1:{proxy_port}",
    ]


def _composer(*args: str, sampler: _ArgvSampler | None = None) -> subprocess.CompletedProcess[str]:
    # libcurl would not send 127.0.0.1 through the proxy if no_proxy named it.
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "http_proxy", "https_proxy")}
    env["PYTHONPATH"] = str(ROOT / "src")  # this checkout's composer
    argv = [sys.executable, "-m", "composer", *args]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as p:
        if sampler is not None:
            sampler.ignore.add(str(p.pid))
        out, err = p.communicate()
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


def _unpacked_image(out: Path, dest: Path) -> list[Path]:
    """install.img's rootfs.img, and the tree in it read back with btrfs restore (no mount)."""
    dest.mkdir()
    proc = subprocess.run(
        ["unsquashfs", "-q", "-n", "-d", str(dest / "squash"), str(out / "images" / "install.img")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    img = dest / "squash" / "LiveOS" / "rootfs.img"
    tree = dest / "tree"
    tree.mkdir()
    proc = subprocess.run(["btrfs", "restore", "-S", "-x", str(img), str(tree)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert (tree / "usr").is_dir() and (tree / "etc").is_dir()
    return [img, tree]


def test_a_compose_keeps_every_credential_secret(servers, tmp_path):
    port, proxy_port = servers
    _Origin.used, _Proxy.proxied = set(), 0
    work, cache, out, log = tmp_path / "work", tmp_path / "cache", tmp_path / "out", tmp_path / "build.log"
    start = time.monotonic()
    with _ArgvSampler() as argv:
        proc = _composer(
            "--logfile",
            str(log),
            "runtime",
            "--product",
            "TestProduct",
            "--version",
            "1",
            *_repo_options(tmp_path, port, proxy_port),
            "--nogpgcheck",
            "--keep-workdir",
            "--workdir",
            str(work),
            "--cachedir",
            str(cache),
            "--no-cache",
            "--compression",
            "lz4",
            str(out),
            sampler=argv,
        )
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"compose {took:.0f} s")
    # The check means something: every credential was given to the server that wants it,
    # through the proxy, and the sampler saw dnf and bubblewrap run.
    assert _Origin.used == {SOURCE[0], MIRROR[0], REPOFILE[0]}, _Origin.used
    assert _Proxy.proxied > 0
    assert argv.seen_dnf and argv.seen_bwrap, "no dnf command line sampled"
    assert argv.leaks == {}, argv.leaks
    assert _in_text(proc.stdout + proc.stderr) == [], "the console"
    assert "http://***@127.0.0.1" in log.read_text(), "a URL with credentials is shown masked"
    (kept,) = work.iterdir()
    assert (kept / "tree" / "usr").is_dir() and list((kept / "dnf-log").iterdir())
    assert _grep([tmp_path / "private.repo"]), "the grep finds nothing even where a credential is"
    found = _grep([log, work, cache, out, *_unpacked_image(out, tmp_path / "image")])
    assert found == [], found


def test_lorax_logs_keep_every_credential_secret(servers, tmp_path):
    """`composer lorax` fails on a source whose password is wrong: the error names it, masked,
    and lorax's logs (lorax.log, pylorax.log, program.log, dnf's beside them) hold no credential."""
    port, proxy_port = servers
    logs = tmp_path / "logs"
    logs.mkdir()
    (tmp_path / "tmp").mkdir()
    proc = _composer(
        "lorax",
        "-p",
        "TestProduct",
        "-v",
        "1",
        "-r",
        "1",
        *_repo_options(tmp_path, port, proxy_port),
        "--source",
        f"http://{WRONG[0]}:{WRONG[1]}@127.0.0.1:{port}/wrong/",
        "--sharedir",
        str(ROOT / "tools" / "testproduct" / "lorax-templates"),
        "--logfile",
        str(logs / "lorax.log"),
        "--tmp",
        str(tmp_path / "tmp"),
        "--cachedir",
        str(tmp_path / "cache"),
        str(tmp_path / "out"),
    )
    assert proc.returncode != 0
    error = proc.stderr.strip().splitlines()[-1]
    assert f"--source http://***@127.0.0.1:{port}/wrong/: cannot read the repository" in error, proc.stderr[-2000:]
    assert _in_text(proc.stdout + proc.stderr) == [], "the console"
    names = {p.name for p in logs.iterdir()}
    assert {"lorax.log", "dnf.log", "dnf.librepo.log"} <= names, names
    found = _grep([logs, tmp_path / "tmp", tmp_path / "cache"])
    assert found == [], found
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
