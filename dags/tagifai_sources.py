"""The data-source policy: which data files and URLs a training run may read.

Untrusted people type data sources into the Airflow trigger form, so a source is *input*: this
module checks it against the deployment's policy and then reads it under that policy. It imports
only the standard library because two callers share it:

- the DAG (`dags/tagifai_training.py`, as the top-level module `tagifai_sources`) checks the
  trigger params before any container starts (`SourcePolicy.check`: no DNS, no I/O), always
  enforcing;
- the `tagifai` package reads the sources (`fetch`), enforcing only where the deployment says so.

Rules:

- **Local data** (a plain path or a `file://` URL) is read only from the folders named in
  `TAGIFAI_DATA_DIRS` (colon-separated absolute paths) and the folders of `TAGIFAI_PROJECTS_URL` /
  `TAGIFAI_TAGS_URL` when those are local. Paths and folders are resolved (`os.path.realpath`:
  symlinks, `..`) before the check; a relative path is refused; a directory is not a data file.
- **URLs** are `http` or `https` only. The host must be in `TAGIFAI_ALLOWED_URL_HOSTS`
  (comma-separated `host` or `host:port`; a bare `host` allows any port); when that variable is
  unset or empty the hosts of the caller's pinned upstream URLs are allowed instead. The hosts of
  `TAGIFAI_PROJECTS_URL` / `TAGIFAI_TAGS_URL` (when they are URLs) are allowed too, as the
  deployer chose them. A host that resolves to any address that is not globally routable
  (loopback, private, link-local such as 169.254.169.254, shared, reserved, multicast, also
  inside IPv4-mapped, 6to4 or NAT64 addresses) is refused unless `TAGIFAI_ALLOWED_URL_HOSTS`
  names it explicitly.
- The connection goes to the address that was vetted (no DNS rebinding) while the request and TLS
  use the host name. Redirects (at most 5) are followed by hand, each hop checked again.
- A read stops at `max_bytes`, and the whole fetch (every hop and read) at `deadline_seconds`.
- The DAG always enforces (`enforce=True`). Elsewhere the policy is enforced only when
  `TAGIFAI_DATA_DIRS` or `TAGIFAI_ALLOWED_URL_HOSTS` is present in the environment (even empty),
  so the CLI on a person's own machine reads what that person can. The caps apply always.

A refused source raises `SourceRefused` (one line: the source, the rule, the setting that would
change it; a retry cannot help); a source that cannot be read raises `SourceUnavailable`, whose
`transient` says whether a retry might.
"""

from __future__ import annotations

import errno
import http.client
import ipaddress
import os
import re
import socket
import ssl
import stat
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

DATA_DIRS_ENV = "TAGIFAI_DATA_DIRS"
ALLOWED_HOSTS_ENV = "TAGIFAI_ALLOWED_URL_HOSTS"
# Deployment settings naming a source: their folders (or hosts) are allowed too.
SOURCE_URL_ENVS = ("TAGIFAI_PROJECTS_URL", "TAGIFAI_TAGS_URL")
MAX_REDIRECTS = 5
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
# HTTP answers worth a retry besides 5xx.
TRANSIENT_HTTP_CODES = frozenset({408, 429})

_CHUNK = 64 * 1024
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
# Characters left as they are in a request target; anything else (non-ASCII) is percent-encoded.
_TARGET_SAFE = "".join(chr(code) for code in range(33, 127))
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


class _Url(NamedTuple):
    scheme: str
    host: str
    port: int
    target: str


@dataclass(frozen=True)
class SourcePolicy:
    """Where data may come from in this deployment.

    Attributes:
        enforced: whether the folder and host rules apply (the size and time caps always do).
        data_dirs: resolved absolute folders local data may be read from.
        allowed_hosts: lower-case `host` or `host:port` entries URLs may name.
        explicit_hosts: the entries named in `TAGIFAI_ALLOWED_URL_HOSTS`: only these may resolve
            to addresses that are not globally routable.
    """

    enforced: bool
    data_dirs: tuple[str, ...] = ()
    allowed_hosts: frozenset[str] = frozenset()
    explicit_hosts: frozenset[str] = frozenset()

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str], default_urls: Sequence[str], enforce: bool | None = None
    ) -> SourcePolicy:
        """Build the policy from deployment settings.

        Args:
            environ: the environment (`os.environ` or the worker's settings).
            default_urls: the pinned upstream URLs; their hosts are allowed when
                `TAGIFAI_ALLOWED_URL_HOSTS` is unset.
            enforce: True or False to decide; None to enforce exactly when `TAGIFAI_DATA_DIRS` or
                `TAGIFAI_ALLOWED_URL_HOSTS` is a key of `environ`.

        Returns:
            The policy.

        Raises:
            ValueError: a `TAGIFAI_DATA_DIRS` or `TAGIFAI_ALLOWED_URL_HOSTS` entry is malformed.
        """
        if enforce is None:
            enforce = DATA_DIRS_ENV in environ or ALLOWED_HOSTS_ENV in environ
        chosen = [environ[name] for name in SOURCE_URL_ENVS if environ.get(name)]
        dirs = [_named_dir(entry) for entry in environ.get(DATA_DIRS_ENV, "").split(":") if entry.strip()]
        dirs += [folder for folder in map(_folder_of, chosen) if folder]
        if environ.get(ALLOWED_HOSTS_ENV, "").strip():  # empty is unset: a compose file passes it so
            explicit = frozenset(_host_entry(entry) for entry in environ[ALLOWED_HOSTS_ENV].split(",") if entry.strip())
            allowed = explicit
        else:
            explicit, allowed = frozenset(), _url_hosts(default_urls)
        return cls(bool(enforce), tuple(dict.fromkeys(dirs)), allowed | _url_hosts(chosen), explicit)

    def check(self, source: str) -> str:
        """Check `source` against the policy without reading it.

        For URLs this checks scheme and host name only (no DNS): cheap enough for the Airflow
        scheduler's pre-flight. `fetch` checks the addresses when it connects.

        Args:
            source: a path, a `file://` URL or an `http(s)://` URL.

        Returns:
            The canonical source: the resolved absolute path of a local source, or the URL.

        Raises:
            SourceRefused: the policy does not allow the source.
        """
        if not source:
            raise SourceRefused("(empty source) is not a path or a URL: give a path, a file:// URL or an http(s) URL")
        scheme = _scheme(source)
        if scheme in ("", "file"):
            return self._check_path(source)
        if scheme not in ("http", "https"):
            raise SourceRefused(f"{_shown(source)} is not an http(s) URL, a path or a file:// URL")
        self._check_url(source, _parse_url(source))
        return source

    def data_dir_of(self, path: str) -> str | None:
        """Return the named folder that holds the (resolved) local `path`: what a container must mount.

        Args:
            path: a plain path or a `file://` URL.

        Returns:
            The innermost folder of `data_dirs` holding the resolved path, or None (a URL, or a
            path outside every folder).
        """
        if not is_local(path):
            return None
        try:
            resolved = os.path.realpath(_path_of(path))
        except SourceRefused:
            return None
        return max((folder for folder in self.data_dirs if _inside(resolved, folder)), key=len, default=None)

    def _check_path(self, source: str) -> str:
        path = _path_of(source)
        if not self.enforced:
            return os.path.realpath(path)
        if not os.path.isabs(path):
            raise SourceRefused(
                f"{_shown(source)} is a relative path: this deployment reads only absolute paths inside its data "
                f"folders ({self._dirs_shown()})"
            )
        resolved = os.path.realpath(path)
        if not any(_inside(resolved, folder) for folder in self.data_dirs):
            raise SourceRefused(
                f"{_shown(source)} is outside the data folders this deployment allows ({self._dirs_shown()}): "
                "ask the deployer to add its folder, or use a file in one of them"
            )
        return resolved

    def _check_url(self, source: str, url: _Url) -> None:
        if not self.enforced:
            return
        if not _listed(self.allowed_hosts, url.host, url.port):
            hosts = ", ".join(sorted(self.allowed_hosts)) or "none"
            raise SourceRefused(f"{_shown(source)} is not an allowed host ({ALLOWED_HOSTS_ENV}: {hosts})")
        if _is_ip(url.host):
            self._check_addresses(source, url, [url.host])

    def _check_addresses(self, source: str, url: _Url, addresses: Sequence[str]) -> None:
        """Refuse non-global addresses unless the host is listed explicitly."""
        if not self.enforced or _listed(self.explicit_hosts, url.host, url.port):
            return
        for address in addresses:
            kind = _non_global_kind(ipaddress.ip_address(address))
            if kind:
                verb = "is" if _is_ip(url.host) else "resolves to"
                raise SourceRefused(
                    f"{_shown(source)} {verb} {address}, {kind} address: "
                    f"only hosts listed in {ALLOWED_HOSTS_ENV} may be private"
                )

    def _dirs_shown(self) -> str:
        return f"{DATA_DIRS_ENV}={':'.join(self.data_dirs)}" if self.data_dirs else f"{DATA_DIRS_ENV} names no folder"


def is_local(source: str) -> bool:
    """Return whether `source` is a plain path or a `file://` URL (not a URL of another scheme)."""
    return _scheme(source) in ("", "file")


def fetch(
    source: str, policy: SourcePolicy, *, max_bytes: int, deadline_seconds: float, timeout: float = 30.0
) -> bytes:
    """Return the bytes behind `source`, read under `policy`.

    `policy.check(source)` first; then a local file is read (the resolved path when enforced), or
    the URL downloaded: every address the host resolves to is vetted and the connection pinned to
    one of them, and each redirect is checked like the source itself.

    Args:
        source: a path, a `file://` URL or an `http(s)://` URL.
        policy: the deployment's policy.
        max_bytes: the most bytes the source may have.
        deadline_seconds: the time the whole fetch (all hops, all reads) may take.
        timeout: the time one socket operation may take.

    Returns:
        The raw content.

    Raises:
        SourceRefused: the policy does not allow the source (or a redirect), or it exceeds `max_bytes`.
        SourceUnavailable: the source cannot be read; `.transient` says whether a retry may help.
    """
    canonical = policy.check(source)
    deadline = _Deadline(deadline_seconds)
    if is_local(source):
        path = canonical if policy.enforced else _path_of(source)
        return _read_file(source, path, max_bytes=max_bytes, deadline=deadline, strict=policy.enforced)
    try:
        return _download(source, policy, max_bytes=max_bytes, deadline=deadline, timeout=timeout)
    finally:
        deadline.cancel()


# Local files


def _scheme(source: str) -> str:
    match = _SCHEME.match(source)
    return match.group(1).lower() if match else ""


def _path_of(source: str) -> str:
    """The filesystem path a local source names (not resolved)."""
    path = source
    if _scheme(source) == "file":
        parts = urllib.parse.urlsplit(source)
        if parts.netloc not in ("", "localhost"):
            raise SourceRefused(f"{_shown(source)} is a file:// URL on another host: use file:///path or a plain path")
        path = urllib.parse.unquote(parts.path)
    if "\x00" in path:
        raise SourceRefused(f"{_shown(source)} contains a NUL byte: give a plain path")
    return path


def _named_dir(entry: str) -> str:
    entry = entry.strip()
    if not os.path.isabs(entry):
        raise ValueError(f"{DATA_DIRS_ENV} entry {entry!r} is not an absolute path")
    return os.path.realpath(entry)


def _folder_of(source: str) -> str | None:
    """The resolved folder of a local absolute source, else None."""
    if not is_local(source):
        return None
    try:
        path = _path_of(source)
    except SourceRefused:
        return None
    return os.path.dirname(os.path.realpath(path)) if os.path.isabs(path) else None


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def _read_file(source: str, path: str, *, max_bytes: int, deadline: _Deadline, strict: bool) -> bytes:
    """Read at most `max_bytes` of a file; `strict` (enforced): the path's last part is no symlink, a regular file."""
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
    if strict:
        # realpath resolved every link: one appearing now is a swap. NONBLOCK: a FIFO cannot hang open().
        flags |= getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    shown = _shown(source)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as exc:
        raise SourceUnavailable(f"data file not found: {shown}") from exc
    except OSError as exc:
        raise SourceUnavailable(f"cannot read {shown}: {exc.strerror}") from exc
    chunks, total = [], 0
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise SourceUnavailable(f"cannot read {shown}: {os.strerror(errno.EISDIR)}")
        if strict and not stat.S_ISREG(info.st_mode):
            raise SourceUnavailable(f"cannot read {shown}: not a regular file")
        if stat.S_ISREG(info.st_mode) and info.st_size > max_bytes:
            raise _too_big(source, max_bytes)
        while chunk := os.read(fd, _CHUNK):
            deadline.left()
            total += len(chunk)
            if total > max_bytes:
                raise _too_big(source, max_bytes)
            chunks.append(chunk)
    except SourceUnavailable:
        raise
    except _DeadlineExceeded as exc:
        raise SourceUnavailable(f"cannot read {shown}: {deadline.reason()}", transient=True) from exc
    except OSError as exc:
        raise SourceUnavailable(f"cannot read {shown}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    return b"".join(chunks)


def _too_big(source: str, max_bytes: int) -> SourceRefused:
    return SourceRefused(
        f"{_shown(source)} exceeds {max_bytes} bytes, the limit for one data source: "
        "use a smaller source, or ask the deployer to raise the limit"
    )


# URLs and hosts


def _parse_url(source: str) -> _Url:
    """Split an http(s) URL into what a request needs; refuse what cannot be requested safely."""
    if any(char.isspace() or not char.isprintable() for char in source):
        raise SourceRefused(f"{_shown(source)} contains spaces or control characters: percent-encode them")
    try:
        parts = urllib.parse.urlsplit(source)
        port = parts.port
    except ValueError as exc:
        raise SourceRefused(f"{_shown(source)} is not a valid URL ({exc}): check the host and port") from exc
    if parts.scheme not in ("http", "https"):
        raise SourceRefused(f"{_shown(source)} is not an http(s) URL")
    if not parts.hostname:
        raise SourceRefused(f"{_shown(source)} has no host name: use http(s)://host/path")
    try:
        host = _normal_host(parts.hostname)
    except ValueError as exc:
        raise SourceRefused(f"{_shown(source)} has an invalid host name") from exc
    target = urllib.parse.quote(parts.path or "/", safe=_TARGET_SAFE)
    if parts.query:
        target += "?" + urllib.parse.quote(parts.query, safe=_TARGET_SAFE)
    return _Url(parts.scheme, host, port or (443 if parts.scheme == "https" else 80), target)


def _normal_host(host: str) -> str:
    """Lower-case ASCII (IDNA) host name without a trailing dot; IP addresses in their short form."""
    host = host.lower().rstrip(".")
    if not host:
        raise ValueError("empty host")
    if _is_ip(host):
        return str(ipaddress.ip_address(host))
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValueError(f"invalid host name {host!r}") from exc


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _host_entry(entry: str) -> str:
    """Normalise a `TAGIFAI_ALLOWED_URL_HOSTS` entry: `host`, `host:port`, `[v6]:port` or a bare IPv6 address."""
    entry = entry.strip()
    if entry.count(":") > 1 and not entry.startswith("["):
        return _normal_host(entry)
    try:
        parts = urllib.parse.urlsplit(f"//{entry}")
        port = parts.port
        if not parts.hostname or parts.netloc != entry or "@" in entry:
            raise ValueError(entry)
        host = _normal_host(parts.hostname)
    except ValueError as exc:
        raise ValueError(f"{ALLOWED_HOSTS_ENV} entry {entry!r} is not a host or host:port") from exc
    return f"{_bracketed(host)}:{port}" if port is not None else host


def _url_hosts(urls: Sequence[str]) -> frozenset[str]:
    """The host entries (`host`, or `host:port` with an explicit port) of the http(s) URLs among `urls`."""
    hosts = set()
    for url in urls:
        if _scheme(url) not in ("http", "https"):
            continue
        try:
            parts = urllib.parse.urlsplit(url)
            host = _normal_host(parts.hostname or "")
            hosts.add(f"{_bracketed(host)}:{parts.port}" if parts.port is not None else host)
        except ValueError:
            continue
    return frozenset(hosts)


def _listed(hosts: frozenset[str], host: str, port: int) -> bool:
    return host in hosts or f"{_bracketed(host)}:{port}" in hosts


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
        if candidate.is_global:
            continue
        if candidate in _SHARED:
            return "a shared"
        return next((kind for flag, kind in _KINDS if getattr(candidate, flag)), "a non-global")
    return None


_USERINFO = re.compile(r"(?<=://)[^/?#\s]*@")


def redact(text: str) -> str:
    """`text` with the credentials of every URL in it hidden (`https://user:pw@host/…` → `https://***@host/…`)."""
    if "://" not in text and "@" in text:  # a bare `user:pw@host…`, as a malformed URL may be
        return "***@" + text.rsplit("@", 1)[1]
    return _USERINFO.sub("***@", text)


def _shown(source: str) -> str:
    """`source` fit for a one-line message: a URL's user info hidden, control characters escaped."""
    if _scheme(source) and "://" in source:
        head, _, rest = source.partition("://")
        end = min([index for index in map(rest.find, "/?#") if index >= 0], default=len(rest))
        if "@" in rest[:end]:
            source = f"{head}://***@{rest[:end].rpartition('@')[2]}{rest[end:]}"
    return source if source.isprintable() else repr(source)[1:-1]


# Downloads


class _DeadlineExceeded(TimeoutError):
    """The fetch's total deadline passed."""


class _Deadline:
    """The fetch's total deadline, and a watchdog that shuts the open socket down when it passes.

    A socket timeout bounds one operation; a server trickling one byte at a time never trips it, so
    the watchdog ends the blocked read instead.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.expired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    @property
    def sock(self) -> socket.socket | None:
        """The socket being watched."""
        return self._sock

    def left(self) -> float:
        """Seconds left; raise `_DeadlineExceeded` when none are."""
        left = self.end - time.monotonic()
        if left <= 0 or self.expired:
            raise _DeadlineExceeded(self.reason())
        return left

    def reason(self) -> str:
        return f"not done within {self.seconds:g} seconds (the deadline of this fetch)"

    def watch(self, sock: socket.socket | None) -> None:
        """Shut `sock` down when the deadline passes (None: stop watching)."""
        with self._lock:
            self._sock = sock
            if sock is not None and self.expired:
                _shutdown(sock)
            if sock is not None and self._timer is None:
                self._timer = threading.Timer(max(self.end - time.monotonic(), 0), self._expire)
                self._timer.daemon = True
                self._timer.start()

    def cancel(self) -> None:
        with self._lock:
            self._sock = None
            if self._timer is not None:
                self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._sock is not None:
                _shutdown(self._sock)


def _shutdown(sock: socket.socket) -> None:
    try:
        # The plain socket's shutdown: an SSLSocket's own would drop its SSL state under the reader.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to addresses vetted beforehand; the `Host` header names the URL's host."""

    def __init__(self, host: str, port: int, *, addresses: Sequence[tuple], timeout: float, deadline: _Deadline):
        super().__init__(host, port, timeout=timeout)
        self._addresses = addresses
        self._deadline = deadline

    def connect(self) -> None:
        """Connect to the first vetted address that answers (never resolve the host again)."""
        error: OSError = OSError(f"no address for {self.host}")
        for family, kind, proto, sockaddr in self._addresses:
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(min(self.timeout, self._deadline.left()))
                sock.connect(sockaddr)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            self._deadline.watch(sock)
            self.sock = sock
            return
        raise error


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    """The HTTPS twin: TLS on the vetted address, SNI and certificate checked against the host name."""

    default_port = http.client.HTTPS_PORT

    def connect(self) -> None:
        """Connect, then handshake under the watchdog."""
        super().connect()
        context = ssl.create_default_context()
        self.sock = context.wrap_socket(self.sock, server_hostname=self.host, do_handshake_on_connect=False)
        self._deadline.watch(self.sock)
        self.sock.do_handshake()


def _download(source: str, policy: SourcePolicy, *, max_bytes: int, deadline: _Deadline, timeout: float) -> bytes:
    """Follow at most MAX_REDIRECTS redirects from `source`, vetting every hop, and return the body."""
    url = source
    try:
        for hop in range(MAX_REDIRECTS + 1):
            try:
                parsed = _parse_url(url)
                if hop:
                    policy._check_url(url, parsed)
                addresses = _resolve(parsed, deadline)
                policy._check_addresses(url, parsed, [sockaddr[0] for *_, sockaddr in addresses])
            except SourceRefused as exc:
                if not hop:
                    raise
                raise SourceRefused(f"{_shown(source)} redirects to a refused place: {exc}") from None
            answer = _get(source, url, parsed, addresses, max_bytes=max_bytes, deadline=deadline, timeout=timeout)
            if isinstance(answer, bytes):
                return answer
            url = answer  # a redirect
    except (SourceRefused, SourceUnavailable):
        raise
    except (OSError, http.client.HTTPException) as exc:
        raise _network_error(source, url, exc, deadline) from exc
    raise SourceUnavailable(f"cannot download {_shown(source)}: more than {MAX_REDIRECTS} redirects")


def _resolve(url: _Url, deadline: _Deadline) -> list[tuple]:
    """`socket.getaddrinfo` under the deadline: (family, type, proto, sockaddr) of each address."""
    answer: dict[str, object] = {}

    def lookup() -> None:
        try:
            answer["infos"] = socket.getaddrinfo(url.host, url.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            answer["error"] = exc

    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(deadline.left())
    if worker.is_alive():
        raise _DeadlineExceeded(deadline.reason())
    if "error" in answer:
        raise answer["error"]  # type: ignore[misc]
    infos = answer["infos"]
    return list(dict.fromkeys((family, kind, proto, sockaddr) for family, kind, proto, _, sockaddr in infos))


def _get(
    source: str, url: str, parsed: _Url, addresses: list[tuple], *, max_bytes: int, deadline: _Deadline, timeout: float
) -> bytes | str:
    """One GET: the body of a 2xx answer, or the absolute URL a redirect points to."""
    connection_class = _PinnedHTTPSConnection if parsed.scheme == "https" else _PinnedHTTPConnection
    connection = connection_class(
        parsed.host, parsed.port, addresses=addresses, timeout=min(timeout, deadline.left()), deadline=deadline
    )
    try:
        headers = {"User-Agent": "tagifai", "Accept-Encoding": "identity", "Connection": "close"}
        connection.request("GET", parsed.target, headers=headers)
        response = connection.getresponse()
        try:
            where = "" if url == source else f" (at {_shown(url)})"
            status, reason = response.status, _shown(response.reason or "")
            if status in REDIRECT_CODES:
                location = response.getheader("Location")
                if not location:
                    raise SourceUnavailable(
                        f"cannot download {_shown(source)}: HTTP {status} {reason} without a Location"
                    )
                return urllib.parse.urljoin(url, location.strip())
            if not 200 <= status < 300:
                transient = status >= 500 or status in TRANSIENT_HTTP_CODES
                raise SourceUnavailable(
                    f"cannot download {_shown(source)}: HTTP {status} {reason}{where}", transient=transient
                )
            return _read_body(source, response, max_bytes=max_bytes, deadline=deadline, timeout=timeout)
        finally:
            response.close()
    finally:
        deadline.watch(None)
        connection.close()


def _read_body(
    source: str, response: http.client.HTTPResponse, *, max_bytes: int, deadline: _Deadline, timeout: float
) -> bytes:
    length = (response.getheader("Content-Length") or "").strip()
    if length.isdigit() and int(length) > max_bytes:
        raise _too_big(source, max_bytes)
    sock = deadline.sock
    chunks, total = [], 0
    while True:
        if sock is not None:
            sock.settimeout(min(timeout, deadline.left()))
        # read1: at most one socket read, so the deadline is checked between reads.
        chunk = response.read1(_CHUNK)
        if not chunk:
            break
        total += len(chunk)
        if total > max_bytes:
            raise _too_big(source, max_bytes)
        chunks.append(chunk)
    if deadline.expired:
        # The watchdog's shutdown looks like the end of a body sent without a length.
        raise _DeadlineExceeded(deadline.reason())
    return b"".join(chunks)


def _network_error(source: str, url: str, exc: BaseException, deadline: _Deadline) -> SourceUnavailable:
    where = "" if url == source else f" (at {_shown(url)})"
    if deadline.expired or time.monotonic() >= deadline.end:
        return SourceUnavailable(f"cannot download {_shown(source)}: {deadline.reason()}{where}", transient=True)
    reason = _shown(str(exc) or type(exc).__name__)
    transient = not isinstance(exc, ssl.SSLCertVerificationError)
    if isinstance(exc, socket.gaierror):
        transient = exc.errno == socket.EAI_AGAIN
    return SourceUnavailable(f"cannot download {_shown(source)}: {reason}{where}", transient=transient)
