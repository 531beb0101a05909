"""Pungi's `openssh` runroot against a builder on this machine (issue 22, item 3): an sshd that
listens on 127.0.0.1 only (its own host key and configuration, started and stopped here), and
an ordinary user with subordinate ids who pip-installed composer; Pungi's buildinstall logs in
as that user with a key made for the run and runs `lorax` there, without root. The same
configuration with N hostnames is Pungi's scale-out, not composer's business."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from builder_user import ordinary_user, pip_install

HOST = "composer-builder-x86-64"  # what Pungi's configuration names; ssh_config maps it to 127.0.0.1
SSHD = Path("/usr/sbin/sshd")


class SshError(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keys(ssh: Path) -> tuple[Path, Path]:
    """The sshd's host key and Pungi's client key, made for this run."""
    host, client = ssh / "host_ed25519", ssh / "id_ed25519"
    for key in (host, client):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key.name, "-f", str(key)], check=True)
    return host, client


def _authorize(user, client: Path) -> None:
    home = Path(user.pw_dir) / ".ssh"
    home.mkdir(mode=0o700, exist_ok=True)
    (home / "authorized_keys").write_text(client.with_suffix(".pub").read_text())
    subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(home)], check=True)
    # Not locked ('!' makes sshd refuse even a key without PAM), no password either.
    subprocess.run(["usermod", "--password", "*", user.pw_name], check=True, capture_output=True)


def _sshd_config(ssh: Path, port: int, host_key: Path, user: str) -> Path:
    conf = ssh / "sshd_config"
    conf.write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {host_key}\nPidFile {ssh / 'sshd.pid'}\n"
        f"AllowUsers {user}\nPermitRootLogin no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nAuthorizedKeysFile .ssh/authorized_keys\n"
    )
    return conf


def _client_config(ssh: Path, port: int, host_key: Path, client: Path) -> Path:
    known = ssh / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_key.with_suffix('.pub').read_text()}")
    conf = ssh / "ssh_config"
    conf.write_text(
        f"Host {HOST}\n  HostName 127.0.0.1\n  Port {port}\n  IdentityFile {client}\n  IdentitiesOnly yes\n"
        f"  StrictHostKeyChecking yes\n  UserKnownHostsFile {known}\n  HostKeyAlias [127.0.0.1]:{port}\n"
    )
    conf.chmod(0o600)
    return conf


def _wait_listening(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SshError(f"sshd exited ({proc.returncode}): {log.read_text()[-1000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise SshError(f"sshd did not listen on 127.0.0.1:{port} in 30 s")


@contextlib.contextmanager
def builder(base: Path) -> Iterator[tuple[str, int, Path, Path]]:
    """(user name, its group, ssh_config for Pungi's ssh, the user's venv bin directory) while
    the sshd runs."""
    if not SSHD.is_file():
        raise SshError("no sshd on this host (apt-get install openssh-server)")
    ssh = base / "ssh"
    shutil.rmtree(ssh, ignore_errors=True)
    ssh.mkdir(parents=True)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    with ordinary_user("composer-pb-") as user:
        home = base / "builder"
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        venv_bin = pip_install(user, home)
        script = packages_script(venv_bin)
        script.write_text(PACKAGES)
        script.chmod(0o755)
        host_key, client = _keys(ssh)
        _authorize(user, client)
        port = _free_port()
        conf = _sshd_config(ssh, port, host_key, user.pw_name)
        log = ssh / "sshd.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(conf)], stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_listening(port, proc, log)
            check = subprocess.run(
                ["ssh", "-F", str(_client_config(ssh, port, host_key, client)), "-oBatchMode=yes", "-n"]
                + ["-l", user.pw_name, HOST, "id -u"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if check.returncode != 0 or check.stdout.strip() != str(user.pw_uid):
                raise SshError(f"ssh to {HOST} as {user.pw_name} failed: {check.stderr.strip()[-1000:]}")
            yield user.pw_name, user.pw_gid, ssh / "ssh_config", venv_bin
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            # the user's build processes are gone with the session; anything left is the user's
            subprocess.run(["pkill", "-KILL", "-u", user.pw_name], check=False)
            shutil.rmtree(home, ignore_errors=True)


def pungi_options(user: str, venv_bin: Path) -> str:
    """pungi.conf lines: buildinstall through the openssh runroot, the other phases local."""
    return (
        'runroot_method = {"buildinstall": "openssh"}\n'
        'global_runroot_method = "local"\n'
        f'runroot_ssh_hostnames = {{"x86_64": "{HOST}"}}\n'
        f'runroot_ssh_username = "{user}"\n'
        'runroot_tag = "f43-build"\n'
        f"runroot_ssh_run_template = {run_template(venv_bin)!r}\n"
    )


def run_template(venv_bin: Path) -> str:
    """The ssh session's shell: the user's pip-installed composer first on PATH. After the task
    Pungi runs `rpm -qa` the same way and wants the builder's packages (a compose records what
    its images were made with): this builder is Debian, its rpm database is empty, so a shell
    function answers for it with dpkg's list (PACKAGES). A function of this shell only:
    composer, a child, runs the real rpm. Braces doubled: Pungi formats it; no quote of one
    kind and no backslash: Pungi's configuration parser reads no escapes."""
    rpm = f'rpm() {{{{ if [ "$1" = -qa ]; then {packages_script(venv_bin)}; else command rpm "$@"; fi; }}}}'
    return f"PATH={venv_bin}:$PATH; export PATH; {rpm}; {{command}}"


def packages_script(venv_bin: Path) -> Path:
    return venv_bin.parent.parent / "buildroot-packages"  # in the user's home


PACKAGES = (
    "#!/bin/sh\n# the builder's packages, one Package-Version.Architecture a line\n"
    "exec dpkg-query -W -f='${Package}-${Version}.${Architecture}\\n'\n"
)


def ssh_wrapper(ssh_config: Path) -> str:
    """`ssh` for Pungi's PATH: the builder's client configuration (a builder farm puts it in
    ~/.ssh/config of the user who runs Pungi; this one is not ours to change)."""
    return f'#!/bin/sh\nexec /usr/bin/ssh -F {ssh_config} "$@"\n'
