"""Read a data source (an http(s) URL, a file:// URL or a path) under the deployment's source policy.

The policy itself is `tagifai.contract.sources` (standard library, shared with the DAG, which checks
the same rules before any step starts): local data only from `TAGIFAI_DATA_DIRS`, URLs only from
`TAGIFAI_ALLOWED_URL_HOSTS` and never from private addresses, redirects under the same rules. It is
enforced where those settings are present (the stack); on a person's own machine the CLI reads what
that person can. Every fetch stops at `[data] max_bytes` and `[data] fetch_deadline_seconds`.

HTTP is urllib3's (framing, chunked bodies, TLS and its host name check; a body shorter than its
`Content-Length` is an error, not a file). What is ours is the policy around it: each hop's host is
resolved once, its addresses vetted, and the connection made to a vetted address while the request
and TLS name the host; redirects are followed here, each checked again; and a watchdog closes the
socket when the whole fetch's deadline passes (a server trickling a byte at a time resets every
socket timeout).
"""

from __future__ import annotations

import errno
import http.client
import os
import socket
import ssl
import stat
import threading
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.util.ssl_match_hostname import CertificateError

from tagifai.contract.errors import BadInputError, TagifaiError
from tagifai.contract.settings import Settings
from tagifai.contract.sources import (
    SourcePolicy,
    SourceRefused,
    SourceUnavailable,
    Url,
    is_local,
    parse_url,
    path_of,
    shown,
)

MAX_REDIRECTS = 5
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
# HTTP answers worth a retry besides 5xx.
TRANSIENT_HTTP_CODES = frozenset({408, 429})
CHUNK = 64 * 1024


def policy(settings: Settings) -> SourcePolicy:
    """The source policy of this process's environment; the pinned upstream hosts are allowed by default."""
    defaults = [settings.data.projects_url, settings.data.tags_url]
    try:
        return SourcePolicy.from_environ(os.environ, defaults)
    except ValueError as exc:  # a malformed TAGIFAI_DATA_DIRS / TAGIFAI_ALLOWED_URL_HOSTS
        raise BadInputError(str(exc)) from exc


def fetch(source: str, settings: Settings) -> bytes:
    """Return the bytes behind `source`.

    Raises:
        BadInputError: the policy refuses the source, it is too large, missing or not a file.
        TagifaiError: it could not be read for now (network, HTTP 5xx, the deadline, a cut body): worth a retry.
    """
    data = settings.data
    try:
        return read(source, policy(settings), max_bytes=data.max_bytes, deadline_seconds=data.fetch_deadline_seconds)
    except SourceRefused as exc:
        raise BadInputError(str(exc)) from exc
    except SourceUnavailable as exc:
        raise (TagifaiError if exc.transient else BadInputError)(str(exc)) from exc


def read(source: str, policy: SourcePolicy, *, max_bytes: int, deadline_seconds: float, timeout: float = 30.0) -> bytes:
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

    Raises:
        SourceRefused: the policy does not allow the source (or a redirect), or it exceeds `max_bytes`.
        SourceUnavailable: the source cannot be read; `.transient` says whether a retry may help.
    """
    canonical = policy.check(source)
    deadline = Deadline(deadline_seconds)
    if is_local(source):
        path = canonical if policy.enforced else path_of(source)
        return _read_file(source, path, max_bytes=max_bytes, deadline=deadline, strict=policy.enforced)
    try:
        return _download(source, policy, max_bytes=max_bytes, deadline=deadline, timeout=timeout)
    finally:
        deadline.cancel()


def too_big(source: str, max_bytes: int) -> SourceRefused:
    """The refusal of a source larger than the limit."""
    return SourceRefused(
        f"{shown(source)} exceeds {max_bytes} bytes, the limit for one data source: "
        "use a smaller source, or ask the deployer to raise the limit"
    )


# ---- local files ----------------------------------------------------------------------------------


def _read_file(source: str, path: str, *, max_bytes: int, deadline: Deadline, strict: bool) -> bytes:
    """Read at most `max_bytes` of a file; `strict` (enforced): the path's last part is no symlink, a regular file."""
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
    if strict:
        # realpath resolved every link: one appearing now is a swap. NONBLOCK: a FIFO cannot hang open().
        flags |= getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    name = shown(source)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as exc:
        raise SourceUnavailable(f"data file not found: {name}") from exc
    except OSError as exc:
        raise SourceUnavailable(f"cannot read {name}: {exc.strerror}") from exc
    chunks, total = [], 0
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise SourceUnavailable(f"cannot read {name}: {os.strerror(errno.EISDIR)}")
        if strict and not stat.S_ISREG(info.st_mode):
            raise SourceUnavailable(f"cannot read {name}: not a regular file")
        if stat.S_ISREG(info.st_mode) and info.st_size > max_bytes:
            raise too_big(source, max_bytes)
        while chunk := os.read(fd, CHUNK):
            deadline.left()
            total += len(chunk)
            if total > max_bytes:
                raise too_big(source, max_bytes)
            chunks.append(chunk)
    except SourceUnavailable:
        raise
    except DeadlineExceeded as exc:
        raise SourceUnavailable(f"cannot read {name}: {deadline.reason()}", transient=True) from exc
    except OSError as exc:
        raise SourceUnavailable(f"cannot read {name}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    return b"".join(chunks)


# ---- downloads ------------------------------------------------------------------------------------


class DeadlineExceeded(TimeoutError):
    """The fetch's total deadline passed."""


class Deadline:
    """The fetch's total deadline, and a watchdog that shuts the open connection down when it passes.

    The watchdog holds a duplicate of the connection's socket: http.client lets go of its own once a
    response says `Connection: close`, while the response still reads from the connection.
    """

    def __init__(self, seconds: float) -> None:
        """Start the clock."""
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.expired = False
        self.sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def left(self) -> float:
        """Seconds left; raise `DeadlineExceeded` when none are."""
        left = self.end - time.monotonic()
        if left <= 0 or self.expired:
            raise DeadlineExceeded(self.reason())
        return left

    def reason(self) -> str:
        """What a fetch stopped by the deadline says."""
        return f"not done within {self.seconds:g} seconds (the deadline of this fetch)"

    def watch(self, sock: socket.socket | None) -> None:
        """Shut `sock`'s connection down when the deadline passes (None: stop watching)."""
        with self._lock:
            if self.sock is not None:
                self.sock.close()
            self.sock = socket.socket(fileno=os.dup(sock.fileno())) if sock is not None else None
            if sock is not None and self.expired:
                _shutdown(self.sock)
            if sock is not None and self._timer is None:
                self._timer = threading.Timer(max(self.end - time.monotonic(), 0), self._expire)
                self._timer.daemon = True
                self._timer.start()

    def cancel(self) -> None:
        """Stop the watchdog."""
        with self._lock:
            if self.sock is not None:
                self.sock.close()
            self.sock = None
            if self._timer is not None:
                self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if self.sock is not None:
                _shutdown(self.sock)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # the connection's, through the duplicate: the reader's read ends
    except OSError:
        pass


def _download(source: str, policy: SourcePolicy, *, max_bytes: int, deadline: Deadline, timeout: float) -> bytes:
    """Follow at most MAX_REDIRECTS redirects from `source`, vetting every hop, and return the body."""
    url = source
    try:
        for hop in range(MAX_REDIRECTS + 1):
            try:
                parsed = parse_url(url)
                if hop:
                    policy.check_url(url, parsed)
                addresses = _resolve(parsed, deadline)
                policy.check_addresses(url, parsed, [address for address, _ in addresses])
            except SourceRefused as exc:
                if not hop:
                    raise
                raise SourceRefused(f"{shown(source)} redirects to a refused place: {exc}") from None
            answer = _get(source, url, parsed, addresses, max_bytes=max_bytes, deadline=deadline, timeout=timeout)
            if isinstance(answer, bytes):
                return answer
            url = answer  # a redirect
    except (SourceRefused, SourceUnavailable):
        raise
    except (OSError, urllib3.exceptions.HTTPError, http.client.HTTPException, CertificateError) as exc:
        raise _network_error(source, url, exc, deadline) from exc
    raise SourceUnavailable(f"cannot download {shown(source)}: more than {MAX_REDIRECTS} redirects")


def _resolve(url: Url, deadline: Deadline) -> list[tuple[str, int]]:
    """The (address, port) pairs the host resolves to, looked up once, under the deadline."""
    answer: dict[str, Any] = {}

    def lookup() -> None:
        try:
            answer["infos"] = socket.getaddrinfo(url.host, url.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            answer["error"] = exc

    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(deadline.left())
    if worker.is_alive():
        raise DeadlineExceeded(deadline.reason())
    if "error" in answer:
        raise answer["error"]
    return list(dict.fromkeys((sockaddr[0], url.port) for *_, sockaddr in answer["infos"]))


def _connect(url: Url, addresses: Sequence[tuple[str, int]], deadline: Deadline, timeout: float) -> HTTPConnection:
    """A connection to the first vetted address that answers; TLS names (and checks) the URL's host."""
    error: BaseException = OSError(f"no address for {url.host}")
    for address, port in addresses:
        options: dict[str, Any] = {"timeout": min(timeout, deadline.left())}
        if url.scheme == "https":
            context = ssl.create_default_context()
            connection: HTTPConnection = HTTPSConnection(
                address, port, server_hostname=url.host, assert_hostname=url.host, ssl_context=context, **options
            )
        else:
            connection = HTTPConnection(address, port, **options)
        try:
            connection.connect()
        except (OSError, urllib3.exceptions.HTTPError) as exc:
            connection.close()
            error = exc
            continue
        deadline.watch(connection.sock)
        return connection
    raise error


def _get(
    source: str, url: str, parsed: Url, addresses: list[tuple[str, int]], *, max_bytes: int, deadline: Deadline,
    timeout: float,
) -> bytes | str:  # fmt: skip
    """One GET: the body of a 2xx answer, or the absolute URL a redirect points to."""
    connection = _connect(parsed, addresses, deadline, timeout)
    try:
        default_port = 443 if parsed.scheme == "https" else 80
        host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
        headers = {
            "Host": host if parsed.port == default_port else f"{host}:{parsed.port}",
            "User-Agent": "tagifai",
            "Accept-Encoding": "identity",
            "Connection": "close",
        }
        connection.request(
            "GET", parsed.target, headers=headers, preload_content=False, decode_content=False,
            enforce_content_length=True,
        )  # fmt: skip
        response = connection.getresponse()
        where = "" if url == source else f" (at {shown(url)})"
        status, reason = response.status, shown(response.reason or "")
        if status in REDIRECT_CODES:
            location = response.headers.get("Location")
            if not location:
                raise SourceUnavailable(f"cannot download {shown(source)}: HTTP {status} {reason} without a Location")
            return urllib.parse.urljoin(url, location.strip())
        if not 200 <= status < 300:
            transient = status >= 500 or status in TRANSIENT_HTTP_CODES
            raise SourceUnavailable(
                f"cannot download {shown(source)}: HTTP {status} {reason}{where}", transient=transient
            )
        return _read_body(source, response, max_bytes=max_bytes, deadline=deadline, timeout=timeout)
    finally:
        deadline.watch(None)
        connection.close()


def _read_body(source: str, response: Any, *, max_bytes: int, deadline: Deadline, timeout: float) -> bytes:
    """The body, one socket read at a time (the deadline is checked between reads), within `max_bytes`."""
    length = (response.headers.get("Content-Length") or "").strip()
    if length.isdigit() and int(length) > max_bytes:
        raise too_big(source, max_bytes)
    chunks, total = [], 0
    while True:
        deadline.left()
        chunk = response.read1(CHUNK)
        if not chunk:
            break
        total += len(chunk)
        if total > max_bytes:
            raise too_big(source, max_bytes)
        chunks.append(chunk)
    if deadline.expired:
        # The watchdog's shutdown looks like the end of a body sent without a length.
        raise DeadlineExceeded(deadline.reason())
    return b"".join(chunks)


def _network_error(source: str, url: str, exc: BaseException, deadline: Deadline) -> SourceUnavailable:
    """One line for a failed download: the deadline, or the first cause that is not urllib3's wrapping."""
    where = "" if url == source else f" (at {shown(url)})"
    if deadline.expired or time.monotonic() >= deadline.end:
        return SourceUnavailable(f"cannot download {shown(source)}: {deadline.reason()}{where}", transient=True)
    cause = exc
    while isinstance(cause, urllib3.exceptions.HTTPError) and isinstance(cause.__context__, OSError):
        cause = cause.__context__
    if isinstance(cause, urllib3.exceptions.ProtocolError) and cause.args and isinstance(cause.args[-1], BaseException):
        cause = cause.args[-1]  # e.g. IncompleteRead: a body cut short of its Content-Length
    reason = shown(str(cause) or type(cause).__name__)
    if isinstance(cause, CertificateError):  # urllib3 checks the certificate's name itself
        reason = f"certificate verify failed: {reason}"
    transient = not isinstance(cause, (ssl.SSLCertVerificationError, CertificateError))
    if isinstance(cause, socket.gaierror):
        transient = cause.errno == socket.EAI_AGAIN
    return SourceUnavailable(f"cannot download {shown(source)}: {reason}{where}", transient=transient)
