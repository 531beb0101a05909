"""URLs of package sources: the one reading every check and use of a URL shares.

A URL dnf fetches from (check_url: file, http, https, ftp), a local repository
(check_source), a proxy (proxy_url, check_proxy), a local mirror list's base URLs
(mirrorlist_urls), local URLs and their paths (is_local, path_of; parse_url and
local_path for a URL not yet checked), and the credentials of a URL split off it
(split_userinfo: its password is a secret from then on).
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import ParseResult, unquote, urlparse

from composer.run import ComposerError, register_secret

# The schemes dnf (librepo) fetches repositories from.
URL_SCHEMES = ("file", "http", "https", "ftp")
PROXY_SCHEMES = ("http", "https", "socks4", "socks4a", "socks5", "socks5h")
_AUTHORITY = re.compile(r"(?i)^([a-z][a-z0-9+.-]*://)([^/?#]*)")


def parse_url(url: str) -> ParseResult:
    """urlparse, or an empty result for what it cannot parse ("http://[::1"): the checks
    (check_url) say what is wrong with it."""
    try:
        return urlparse(url)
    except ValueError:
        return urlparse("")


def local_path(url: str, *, decoded: bool = False) -> Path | None:
    """The path a file: URL names (decoded: percent-escapes read), else None."""
    parsed = parse_url(url)
    if parsed.scheme != "file":
        return None
    return Path(unquote(parsed.path) if decoded else parsed.path)


def is_local(url: str) -> bool:
    """Whether a URL is written as a file: URL (how repositories and mirror lists tell
    local from remote; local_path is for a URL not yet checked)."""
    return url.startswith("file:")


def path_of(url: str) -> Path:
    """The path part of a URL, as written (percent-escapes kept)."""
    return Path(urlparse(url).path)


def check_url(url: str, option: str) -> ParseResult:
    """A URL dnf can fetch from (file, http, https, ftp), as urlparse parts."""
    try:
        parsed = urlparse(url)
        parsed.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise ComposerError(f"{option} {url!r}: not a URL ({e})") from None
    if parsed.scheme not in URL_SCHEMES or (parsed.scheme != "file" and not parsed.netloc):
        raise ComposerError(f"{option} {url}: not a URL (use file:///path, http:// or https://)")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ComposerError(f"{option} {url!r}: a URL holds no white space or control characters")
    return parsed


def is_url(url: str) -> bool:
    """Whether check_url takes it."""
    try:
        check_url(url, "")
    except ComposerError:
        return False
    return True


def check_source(url: str, option: str = "--source") -> None:
    """Fail early, with the option (or kickstart file:line) named, on a source that cannot work."""
    parsed = check_url(url, option)
    if parsed.scheme == "file":
        path = Path(parsed.path)
        repomd = path / "repodata" / "repomd.xml"
        if not repomd.is_file():
            raise ComposerError(f"{option} {url}: no repository there ({path}/repodata/repomd.xml is missing)")
        import xml.etree.ElementTree as ET

        # A local repository can be checked now; dnf would only say so after loading the rest.
        try:
            root = ET.parse(repomd).getroot()
        except (ET.ParseError, OSError) as e:
            raise ComposerError(f"{option} {url}: malformed repository: {repomd}: {e}") from None
        if root.tag.rpartition("}")[2] != "repomd":
            raise ComposerError(f"{option} {url}: malformed repository: {repomd} is not a repomd document")


def proxy_url(text: str) -> str:
    """A proxy as given on a command line: 'host:port' is http, as libcurl takes it. Its
    password is a secret from here on."""
    url = text if "://" in text else f"http://{text}"
    split_userinfo(url)
    return url


def check_proxy(url: str, option: str = "--proxy") -> None:
    parsed = urlparse(url)
    if parsed.scheme not in PROXY_SCHEMES or not parsed.netloc or any(c.isspace() or not c.isprintable() for c in url):
        raise ComposerError(f"{option} {url!r}: not a proxy URL (use e.g. http://proxy.example.com:3128)")


def mirrorlist_urls(url: str) -> list[str]:
    """The base URLs a local mirrorlist file lists (remote ones are dnf's to read)."""
    if not is_local(url):
        return []
    try:
        text = path_of(url).read_text(errors="replace")
    except OSError as e:
        raise ComposerError(f"--mirrorlist {url}: cannot read it: {e.strerror}") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def split_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """url without its user:password@, and the user and password (percent-decoded; None
    where not given). The password is a secret from now on, in either spelling."""
    m = _AUTHORITY.match(url)
    if not m or "@" not in m.group(2):
        return url, None, None
    # The host follows the last "@" (as urlsplit reads it): a password may hold one.
    userinfo, _, host = m.group(2).rpartition("@")
    user, sep, password = userinfo.partition(":")
    if sep:
        register_secret(password)
        register_secret(unquote(password))
    return m.group(1) + host + url[m.end() :], unquote(user), unquote(password) if sep else None
