"""NBD: where a netboot guest finds install.img as a network block device, and the
nbd-server(5) configuration that exports it (the tree's nbd-server.conf, and the
loopback server of a boot check)."""

from __future__ import annotations

import dataclasses

NBD_PORT = 10809  # IANA's port for NBD, nbd-server's default


@dataclasses.dataclass(frozen=True)
class NbdServer:
    """Where the guest finds install.img as a network block device: host, port, export name."""

    host: str
    port: int = NBD_PORT
    export: str = "install.img"


def nbd_server_conf(server: NbdServer, image: str, *, listen: str | None = None) -> str:
    """An nbd-server(5) configuration exporting `image` read-only as the menus ask for it
    (listen: the one address to listen on; default all)."""
    generic = ([f"    listenaddr = {listen}"] if listen else []) + [f"    port = {server.port}"]
    return "\n".join(["[generic]", *generic, f"[{server.export}]", f"    exportname = {image}", "    readonly = true", ""])
