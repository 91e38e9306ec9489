"""The data-source policy: which data files and URLs a training run may read.

Untrusted people type data sources into the Airflow trigger form, so a source is *input*: this
module checks it against the deployment's policy. It imports only the standard library because two
callers share it:

- the DAGs (`tagifai.orchestration.runners`, for `dags/tagifai_training.py`) check the
  trigger params before any container starts (`SourcePolicy.check`: no DNS, no I/O), always
  enforcing;
- the steps read the sources (`tagifai.pipeline.sources.read`, on urllib3), checking each hop and
  address with this policy, enforcing only where the deployment says so.

Rules:

- **Local data** (a plain path or a `file://` URL) is read only from the folders named in
  `TAGIFAI_DATA_DIRS` (colon-separated absolute paths) and the folders of `TAGIFAI_PROJECTS_URL` /
  `TAGIFAI_TAGS_URL` when those are local. Paths and folders are resolved (`os.path.realpath`:
  symlinks, `..`) before the check; a relative path is refused; a directory is not a data file.
  The file is then opened one path part at a time following no link, so a link swapped into any
  part after the check is refused.
- **URLs** are `http` or `https` only, allowed by `TAGIFAI_ALLOWED_URL_HOSTS` (comma-separated
  `host`, `host:port` — a bare `host` allows any port — or a URL prefix ending in `/`, such as
  `https://files.example/data/`). When that variable is unset or empty only URLs in the folders of
  the caller's pinned upstream URLs are allowed (not their whole host: raw.githubusercontent.com
  serves anyone's files). URLs in the folders of `TAGIFAI_PROJECTS_URL` / `TAGIFAI_TAGS_URL`
  (when they are URLs) are allowed too, as the deployer chose them. Under a prefix, a path with a
  `.` or `..` segment (plain or percent-encoded) is refused: a server would leave the folder.
- A host that resolves to any address that is not globally routable (loopback, private,
  link-local such as 169.254.169.254, shared, reserved, multicast, also inside IPv4-mapped, 6to4
  or NAT64 addresses) is refused, however it is allowed, unless `TAGIFAI_PRIVATE_URL_HOSTS`
  (comma-separated `host` or `host:port`) names it: the deployer's explicit word that this host
  is on a private network (such a host is allowed too).
- The connection goes to the address that was vetted (no DNS rebinding) while the request and TLS
  use the host name. Redirects (at most 5) are followed by hand, each hop checked again.
- A read stops at `max_bytes`, and the whole fetch (every hop and read) at `deadline_seconds`.
- The DAG always enforces (`enforce=True`). Elsewhere the policy is enforced only when
  `TAGIFAI_DATA_DIRS`, `TAGIFAI_ALLOWED_URL_HOSTS` or `TAGIFAI_PRIVATE_URL_HOSTS` is present in the
  environment (even empty),
  so the CLI on a person's own machine reads what that person can. The caps apply always.

A refused source raises `SourceRefused` (one line: the source, the rule, the setting that would
change it; a retry cannot help); a source that cannot be read raises `SourceUnavailable`, whose
`transient` says whether a retry might.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from tagifai.contract import names

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
# Characters left as they are in a request target; anything else (non-ASCII) is percent-encoded.
_TARGET_SAFE = "".join(map(chr, range(33, 127)))
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_KINDS = (
    ("is_unspecified", "an unspecified"),
    ("is_loopback", "a loopback"),
    ("is_link_local", "a link-local"),
    ("is_multicast", "a multicast"),
    ("is_private", "a private"),
    ("is_reserved", "a reserved"),
)
_USERINFO = re.compile(r"(?<=://)[^/?#\s]*@")


class SourceRefused(ValueError):
    """The deployment's policy does not allow this source.

    `str(exc)` is one line naming the source, the rule and the fix (which setting to change).
    A retry cannot help.
    """


class SourceUnavailable(OSError):
    """The source could not be read.

    Attributes:
        transient: True for network errors, timeouts, the deadline and HTTP 5xx/408/429 (worth a
            retry); False for a missing file, a directory, HTTP 4xx.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        """Keep the one-line message and whether a retry may help."""
        super().__init__(message)
        self.transient = transient


class Url(NamedTuple):
    """An http(s) URL as a request needs it: the host normalised, the port explicit, the target encoded."""

    scheme: str
    host: str
    port: int
    target: str

    @property
    def host_port(self) -> str:
        """`host:port`, an IPv6 host in brackets: as a Host header and a host:port entry spell it."""
        return f"{_bracketed(self.host)}:{self.port}"


@dataclass(frozen=True)
class SourcePolicy:
    """Where data may come from in this deployment.

    Attributes:
        enforced: whether the folder and host rules apply (the size and time caps always do).
        data_dirs: resolved absolute folders local data may be read from.
        allowed_hosts: lower-case `host` or `host:port` entries: any URL on them is allowed.
        allowed_prefixes: URL prefixes (`scheme://host[:port]/folder/`, the default port unsaid):
            URLs under them are allowed.
        private_hosts: the `host` or `host:port` entries of `TAGIFAI_PRIVATE_URL_HOSTS`: allowed, and
            the only hosts that may resolve to addresses that are not globally routable.
    """

    enforced: bool
    data_dirs: tuple[str, ...] = ()
    allowed_hosts: frozenset[str] = frozenset()
    allowed_prefixes: frozenset[str] = frozenset()
    private_hosts: frozenset[str] = frozenset()

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str], default_urls: Sequence[str], enforce: bool | None = None
    ) -> SourcePolicy:
        """Build the policy from deployment settings.

        Args:
            environ: the environment (`os.environ` or the worker's settings).
            default_urls: the pinned upstream URLs; their folders are allowed when
                `TAGIFAI_ALLOWED_URL_HOSTS` is unset.
            enforce: True or False to decide; None to enforce exactly when `TAGIFAI_DATA_DIRS`,
                `TAGIFAI_ALLOWED_URL_HOSTS` or `TAGIFAI_PRIVATE_URL_HOSTS` is a key of `environ`.

        Raises:
            ValueError: a `TAGIFAI_DATA_DIRS`, `TAGIFAI_ALLOWED_URL_HOSTS` or `TAGIFAI_PRIVATE_URL_HOSTS`
                entry is malformed.
        """
        if enforce is None:
            enforce = any(name in environ for name in names.POLICY_ENVS)
        chosen = [environ[name] for name in names.SOURCE_URL_ENVS if environ.get(name)]
        dirs = [_named_dir(entry) for entry in environ.get(names.DATA_DIRS_ENV, "").split(":") if entry.strip()]
        paths = [path for path in map(_local_path, chosen) if path and os.path.isabs(path)]
        dirs += [os.path.dirname(os.path.realpath(path)) for path in paths]
        hosts, prefixes = frozenset(), _url_folders(default_urls)
        if listed := _entries(environ, names.ALLOWED_HOSTS_ENV):  # empty is unset: a compose file passes it so
            hosts = frozenset(_host_entry(entry, names.ALLOWED_HOSTS_ENV) for entry in listed if "://" not in entry)
            prefixes = frozenset(_prefix_entry(entry) for entry in listed if "://" in entry)
        private = frozenset(
            _host_entry(entry, names.PRIVATE_HOSTS_ENV) for entry in _entries(environ, names.PRIVATE_HOSTS_ENV)
        )
        return cls(bool(enforce), tuple(dict.fromkeys(dirs)), hosts, prefixes | _url_folders(chosen), private)

    def check(self, source: str) -> str:
        """Check `source` (a path, a `file://` URL or an `http(s)://` URL) against the policy without reading it.

        For URLs this checks scheme and host name only (no DNS): cheap enough for the Airflow
        scheduler's pre-flight. `fetch` checks the addresses when it connects.

        Returns:
            The canonical source: the resolved absolute path of a local source, or the URL.

        Raises:
            SourceRefused: the policy does not allow the source.
        """
        if not source:
            raise SourceRefused("(empty source) is not a path or a URL: give a path, a file:// URL or an http(s) URL")
        if is_local(source):
            return self._check_path(source)
        if scheme(source) not in ("http", "https"):
            raise SourceRefused(f"{shown(source)} is not an http(s) URL, a path or a file:// URL")
        self.check_url(source, parse_url(source))
        return source

    def data_dir_of(self, path: str) -> str | None:
        """The innermost of `data_dirs` holding the resolved local `path`: what a container must mount.

        None for a URL, or a path outside every folder.
        """
        local = _local_path(path)
        if local is None:
            return None
        resolved = os.path.realpath(local)
        return max((folder for folder in self.data_dirs if _inside(resolved, folder)), key=len, default=None)

    def _check_path(self, source: str) -> str:
        path = path_of(source)
        if not self.enforced:
            return os.path.realpath(path)
        if not os.path.isabs(path):
            raise SourceRefused(
                f"{shown(source)} is a relative path: this deployment reads only absolute paths inside its data "
                f"folders ({self._dirs_shown()})"
            )
        resolved = os.path.realpath(path)
        if not any(_inside(resolved, folder) for folder in self.data_dirs):
            raise SourceRefused(
                f"{shown(source)} is outside the data folders this deployment allows ({self._dirs_shown()}): "
                "ask the deployer to add its folder, or use a file in one of them"
            )
        return resolved

    def check_url(self, source: str, url: Url) -> None:
        """Refuse a URL that no allowed host (and port) or prefix covers; a literal IP is vetted too."""
        if not self.enforced:
            return
        hosts = self.allowed_hosts | self.private_hosts
        if url.host not in hosts and url.host_port not in hosts and not self._under_a_prefix(url):
            on_host = any(_prefix_origin(prefix) == _origin(url) for prefix in self.allowed_prefixes)
            rule = "is not under an allowed URL prefix" if on_host else "is not an allowed host"
            raise SourceRefused(f"{shown(source)} {rule} ({self._urls_shown()})")
        if _is_ip(url.host):
            self.check_addresses(source, url, [url.host])

    def _under_a_prefix(self, url: Url) -> bool:
        path = url.target.partition("?")[0]
        segments = urllib.parse.unquote(path).replace("\\", "/").split("/")
        if "." in segments or ".." in segments:  # a server would resolve them: out of the folder
            return False
        return any(f"{_origin(url)}{path}".startswith(prefix) for prefix in self.allowed_prefixes)

    def check_addresses(self, source: str, url: Url, addresses: Sequence[str]) -> None:
        """Refuse non-global addresses unless the host is listed in `TAGIFAI_PRIVATE_URL_HOSTS`."""
        if not self.enforced or url.host in self.private_hosts or url.host_port in self.private_hosts:
            return
        for address in addresses:
            kind = _non_global_kind(ipaddress.ip_address(address))
            if kind:
                verb = "is" if _is_ip(url.host) else "resolves to"
                raise SourceRefused(
                    f"{shown(source)} {verb} {address}, {kind} address: "
                    f"only hosts listed in {names.PRIVATE_HOSTS_ENV} may be private"
                )

    def _urls_shown(self) -> str:
        shown_urls = (
            f"{names.ALLOWED_HOSTS_ENV}: {', '.join(sorted(self.allowed_hosts | self.allowed_prefixes)) or 'none'}"
        )
        if self.private_hosts:
            shown_urls += f"; {names.PRIVATE_HOSTS_ENV}: {', '.join(sorted(self.private_hosts))}"
        return shown_urls

    def _dirs_shown(self) -> str:
        name = names.DATA_DIRS_ENV
        return f"{name}={':'.join(self.data_dirs)}" if self.data_dirs else f"{name} names no folder"


# Local files


def scheme(source: str) -> str:
    """The lower-case scheme of `source` ("" for a plain path)."""
    match = _SCHEME.match(source)
    return match.group(1).lower() if match else ""


def is_local(source: str) -> bool:
    """Return whether `source` is a plain path or a `file://` URL (not a URL of another scheme)."""
    return scheme(source) in ("", "file")


def path_of(source: str) -> str:
    """The filesystem path a local source names (not resolved)."""
    path = source
    if scheme(source) == "file":
        try:
            parts = urllib.parse.urlsplit(source)
        except ValueError as exc:  # e.g. "file://[/x": an unclosed IPv6 host
            raise SourceRefused(f"{shown(source)} is not a valid file:// URL ({exc}): use file:///path") from None
        if parts.netloc not in ("", "localhost"):
            raise SourceRefused(f"{shown(source)} is a file:// URL on another host: use file:///path or a plain path")
        path = urllib.parse.unquote(parts.path)
    if "\x00" in path:
        raise SourceRefused(f"{shown(source)} contains a NUL byte: give a plain path")
    return path


def _local_path(source: str) -> str | None:
    """The path of a local source, or None (a URL, or a source `path_of` refuses)."""
    if is_local(source):
        with contextlib.suppress(SourceRefused):
            return path_of(source)
    return None


def _named_dir(entry: str) -> str:
    entry = entry.strip()
    if not os.path.isabs(entry):
        raise ValueError(f"{names.DATA_DIRS_ENV} entry {entry!r} is not an absolute path")
    return os.path.realpath(entry)


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


# URLs and hosts


def parse_url(source: str) -> Url:
    """Split an http(s) URL into what a request needs; refuse what cannot be requested safely."""
    if any(char.isspace() or not char.isprintable() for char in source):
        raise SourceRefused(f"{shown(source)} contains spaces or control characters: percent-encode them")
    try:
        parts = urllib.parse.urlsplit(source)
        port = parts.port
    except ValueError as exc:
        raise SourceRefused(f"{shown(source)} is not a valid URL ({exc}): check the host and port") from exc
    if parts.scheme not in ("http", "https"):
        raise SourceRefused(f"{shown(source)} is not an http(s) URL")
    if not parts.hostname:
        raise SourceRefused(f"{shown(source)} has no host name: use http(s)://host/path")
    try:
        host = _normal_host(parts.hostname)
    except ValueError as exc:
        raise SourceRefused(f"{shown(source)} has an invalid host name") from exc
    target = urllib.parse.quote(parts.path or "/", safe=_TARGET_SAFE)
    if parts.query:
        target += "?" + urllib.parse.quote(parts.query, safe=_TARGET_SAFE)
    return Url(parts.scheme, host, port or (443 if parts.scheme == "https" else 80), target)


def _normal_host(host: str) -> str:
    """Lower-case ASCII (IDNA) host name without a trailing dot; IP addresses in their short form.

    Raises:
        ValueError: the host is empty or not a valid name (`UnicodeError` is a `ValueError`).
    """
    host = host.lower().rstrip(".")
    if not host:
        raise ValueError("empty host")
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(host))
    return host.encode("idna").decode("ascii")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _entries(environ: Mapping[str, str], name: str) -> list[str]:
    """The non-empty comma-separated entries of the variable `name`, stripped."""
    return [entry.strip() for entry in environ.get(name, "").split(",") if entry.strip()]


def _host_entry(entry: str, setting: str) -> str:
    """Normalise a host entry of `setting`: `host`, `host:port`, `[v6]:port` or a bare IPv6 address."""
    if entry.count(":") > 1 and not entry.startswith("["):
        return _normal_host(entry)
    try:
        parts = urllib.parse.urlsplit(f"//{entry}")
        port = parts.port
        if not parts.hostname or parts.netloc != entry or "@" in entry:
            raise ValueError(entry)
        host = _normal_host(parts.hostname)
    except ValueError as exc:
        raise ValueError(f"{setting} entry {entry!r} is not a host or host:port") from exc
    return f"{_bracketed(host)}:{port}" if port is not None else host


def _prefix_entry(entry: str) -> str:
    """Normalise a URL prefix entry of `TAGIFAI_ALLOWED_URL_HOSTS`: an http(s) URL whose path ends in `/`."""
    try:
        url = parse_url(entry)
        if "?" in url.target or "#" in entry or "@" in entry or not url.target.endswith("/"):
            raise ValueError(entry)
    except ValueError as exc:  # SourceRefused is one
        raise ValueError(
            f"{names.ALLOWED_HOSTS_ENV} entry {entry!r} is not a host, host:port or http(s) URL prefix ending in /"
        ) from exc
    return _origin(url) + url.target


def _origin(url: Url) -> str:
    """`scheme://host[:port]`, the scheme's default port unsaid: how prefixes are compared."""
    default = ":443" if url.scheme == "https" else ":80"
    return f"{url.scheme}://{url.host_port.removesuffix(default)}"


def _prefix_origin(prefix: str) -> str:
    scheme, _, rest = prefix.partition("://")
    return f"{scheme}://{rest.partition('/')[0]}"


def _url_folders(urls: Sequence[str]) -> frozenset[str]:
    """The folders (`scheme://host[:port]/path/`) of the http(s) URLs among `urls`."""
    folders = set()
    for source in urls:
        if scheme(source) in ("http", "https"):
            with contextlib.suppress(ValueError):  # not a URL a request could follow
                url = parse_url(source)
                path = url.target.partition("?")[0]
                folders.add(_origin(url) + path[: path.rindex("/") + 1])
    return frozenset(folders)


def _non_global_kind(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Name the kind of a non-global address ("a private"), or None for a globally routable one.

    IPv4 addresses inside IPv6 ones (mapped, 6to4, NAT64) are judged as the IPv4 address they reach.
    """
    candidates = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped:
            candidates = [address.ipv4_mapped]
        elif address.sixtofour:
            candidates.append(address.sixtofour)
        elif address in _NAT64:
            candidates.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    for candidate in candidates:
        if candidate in _SHARED:
            return "a shared"
        if not candidate.is_global:
            return next((kind for flag, kind in _KINDS if getattr(candidate, flag)), "a non-global")
    return None


def redact(text: str) -> str:
    """`text` with the credentials of every URL in it hidden (`https://user:pw@host/…` → `https://***@host/…`)."""
    if "://" not in text and "@" in text:  # a bare `user:pw@host…`, as a malformed URL may be
        return "***@" + text.rsplit("@", 1)[1]
    return _USERINFO.sub("***@", text)


def shown(source: str) -> str:
    """`source` fit for a one-line message: a URL's user info hidden, control characters escaped."""
    if scheme(source) and "://" in source:
        head, _, rest = source.partition("://")
        end = min([index for index in map(rest.find, "/?#") if index >= 0], default=len(rest))
        if "@" in rest[:end]:
            source = f"{head}://***@{rest[:end].rpartition('@')[2]}{rest[end:]}"
    return source if source.isprintable() else repr(source)[1:-1]
