"""Read a data source (an http(s) URL, a file:// URL or a path) under the deployment's source policy.

The policy and its rules are `tagifai.contract.sources`; this module is the transport. HTTP is
urllib3's (framing, chunked bodies, TLS and its host name check; a body shorter than its
`Content-Length` is an error, not a file). What is ours is the policy around it: each hop's host is
resolved once, its addresses vetted, and the connection made to a vetted address while the request
and TLS name the host; redirects are followed here, each checked again; and the download runs in a
thread the caller waits for only until the fetch's deadline, then shuts its socket down (a server
trickling a byte at a time resets every socket timeout).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import io
import os
import socket
import ssl
import stat
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

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
    shown,
)

MAX_REDIRECTS = 5
# HTTP answers worth a retry besides 5xx.
TRANSIENT_HTTP_CODES = frozenset({408, 429})
CHUNK = 64 * 1024


class Read(NamedTuple):
    """What a read of a source took in: its size and sha256 (the content went to the caller's file)."""

    size: int
    sha256: str


def fetch(source: str, settings: Settings) -> bytes:
    """Return the bytes behind `source`, under this process's policy and `[data]` caps (small sources only).

    Raises:
        BadInputError: the policy refuses the source, it is too large, missing or not a file.
        TagifaiError: it could not be read for now (network, HTTP 5xx, the deadline, a cut body): worth a retry.
    """
    buffer = io.BytesIO()
    copy(source, settings, buffer)
    return buffer.getvalue()


def download(source: str, settings: Settings, target: Path) -> Read:
    """Stream the bytes behind `source` into the file `target`, never holding them whole; see `fetch`.

    On any error `target` is removed: nothing half-written is left.
    """
    try:
        with target.open("wb") as out:
            return copy(source, settings, out)
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def copy(source: str, settings: Settings, out: BinaryIO | None) -> Read:
    """Read `source` under this process's policy and `[data]` caps into `out` (None: only count and hash it).

    Raises:
        BadInputError, TagifaiError: as `fetch`.
    """
    data = settings.data
    try:
        policy = SourcePolicy.from_environ(os.environ, [data.projects_url, data.tags_url])
    except ValueError as exc:  # a malformed TAGIFAI_DATA_DIRS / TAGIFAI_ALLOWED_URL_HOSTS
        raise BadInputError(str(exc)) from exc
    try:
        return read_into(source, policy, out, max_bytes=data.max_bytes, deadline_seconds=data.fetch_deadline_seconds)
    except SourceRefused as exc:
        raise BadInputError(str(exc)) from exc
    except SourceUnavailable as exc:
        raise (TagifaiError if exc.transient else BadInputError)(str(exc)) from exc


def read(source: str, policy: SourcePolicy, *, max_bytes: int, deadline_seconds: float, timeout: float = 30.0) -> bytes:
    """Return the bytes behind `source`, read under `policy` (`read_into` memory)."""
    buffer = io.BytesIO()
    read_into(source, policy, buffer, max_bytes=max_bytes, deadline_seconds=deadline_seconds, timeout=timeout)
    return buffer.getvalue()


def read_into(
    source: str,
    policy: SourcePolicy,
    out: BinaryIO | None,
    *,
    max_bytes: int,
    deadline_seconds: float,
    timeout: float = 30.0,
) -> Read:
    """Copy the bytes behind `source`, read under `policy`, into `out` as they arrive.

    `policy.check(source)` first; then a local file is read at its resolved path, or the URL
    downloaded: every address the host resolves to is vetted and the connection pinned to one of
    them, and each redirect is checked like the source itself.

    Args:
        source: a path, a `file://` URL or an `http(s)://` URL.
        policy: the deployment's policy.
        out: where the bytes go (None: nowhere, they are only counted and hashed).
        max_bytes: the most bytes the source may have.
        deadline_seconds: the time the whole fetch (all hops, all reads) may take.
        timeout: the time one socket operation may take.

    Raises:
        SourceRefused: the policy does not allow the source (or a redirect), or it exceeds `max_bytes`.
        SourceUnavailable: the source cannot be read; `.transient` says whether a retry may help.
    """
    path = policy.check(source)  # a local source's resolved path, or the URL
    sink = _Sink(source, max_bytes, out)
    if is_local(source):
        _read_file(source, path, sink, deadline_seconds=deadline_seconds, strict=policy.enforced)
    else:
        _Download(source, policy, sink, timeout).within(deadline_seconds)
    return Read(sink.size, sink.digest.hexdigest())


class _Sink:
    """Where a source's bytes go as they are read: counted against the cap, hashed, written to `out`."""

    def __init__(self, source: str, max_bytes: int, out: BinaryIO | None) -> None:
        """Count, hash and pass on the bytes of `source`, refusing more than `max_bytes`."""
        self.source, self.max_bytes, self.out = source, max_bytes, out
        self.size, self.digest = 0, hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        """Take in the next bytes.

        Raises:
            SourceRefused: the source has now passed `max_bytes`.
        """
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise too_big(self.source, self.max_bytes)
        self.digest.update(chunk)
        if self.out is not None:
            self.out.write(chunk)


def too_big(source: str, max_bytes: int) -> SourceRefused:
    """The refusal of a source larger than the limit."""
    return SourceRefused(
        f"{shown(source)} exceeds {max_bytes} bytes, the limit for one data source: "
        "use a smaller source, or ask the deployer to raise the limit"
    )


def _late(seconds: float) -> str:
    return f"not done within {seconds:g} seconds (the deadline of this fetch)"


def _open_without_links(source: str, path: str, flags: int) -> int:
    """Open the resolved absolute `path` one part at a time from `/`, following no symbolic link in any part.

    The policy checked `path` with every link resolved, so a link met now was swapped in since and
    could lead out of the data folder (O_NOFOLLOW alone guards only the last part).

    Raises:
        SourceRefused: a part of `path` is a symbolic link now.
    """

    def open_part(part: str, part_flags: int, parent: int) -> int:
        try:
            return os.open(part, part_flags | os.O_NOFOLLOW, dir_fd=parent)
        except OSError as exc:  # a link: ELOOP as the last part, ENOTDIR (O_DIRECTORY) before it
            if exc.errno in (errno.ELOOP, errno.ENOTDIR) and stat.S_ISLNK(os.lstat(part, dir_fd=parent).st_mode):
                raise SourceRefused(
                    f"{shown(source)} changed after the policy check: {part!r} in its path is now a symbolic link, "
                    "which is not followed"
                ) from None
            raise

    *folders, name = path.split("/")[1:]
    folder_flags = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC
    parent = os.open("/", folder_flags)
    try:
        for folder in folders:
            child = open_part(folder, folder_flags, parent)
            os.close(parent)
            parent = child
        return open_part(name, flags, parent)
    finally:
        os.close(parent)


def _read_file(source: str, path: str, sink: _Sink, *, deadline_seconds: float, strict: bool) -> None:
    """Read a file into `sink` (its cap first); `strict` (enforced): no part of the path is a link, a regular file."""

    def opener(path: str, flags: int) -> int:  # NONBLOCK: a FIFO cannot hang open()
        return _open_without_links(source, path, flags | os.O_NONBLOCK) if strict else os.open(path, flags)

    name, end = shown(source), time.monotonic() + deadline_seconds
    try:
        with open(path, "rb", opener=opener) as file:  # a directory: EISDIR
            info = os.fstat(file.fileno())
            if strict and not stat.S_ISREG(info.st_mode):
                raise SourceUnavailable(f"cannot read {name}: not a regular file")
            if stat.S_ISREG(info.st_mode) and info.st_size > sink.max_bytes:
                raise too_big(source, sink.max_bytes)
            while chunk := file.read(CHUNK):
                if time.monotonic() > end:
                    raise SourceUnavailable(f"cannot read {name}: {_late(deadline_seconds)}", transient=True)
                sink.write(chunk)
    except FileNotFoundError as exc:
        raise SourceUnavailable(f"data file not found: {name}") from exc
    except SourceUnavailable:
        raise
    except OSError as exc:
        raise SourceUnavailable(f"cannot read {name}: {exc.strerror or exc}") from exc


@dataclass
class _Download:
    """One download: the hop it is at (for messages), and its connection's socket (for the deadline).

    The socket is kept here because http.client lets go of its own once a response says
    `Connection: close`, while the response still reads from it.
    """

    source: str
    policy: SourcePolicy
    sink: _Sink
    timeout: float
    url: str = ""
    sock: socket.socket | None = None
    expired: threading.Event = field(default_factory=threading.Event)

    def within(self, seconds: float) -> None:
        """Download into the sink in a thread; if `seconds` pass first, shut its connection down and give up."""
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                self.follow()
            except BaseException as exc:  # raised again in the caller's thread
                outcome["error"] = exc

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(seconds)
        if worker.is_alive():
            self.expired.set()
            if self.sock is not None:
                with contextlib.suppress(OSError):  # closed already
                    self.sock.shutdown(socket.SHUT_RDWR)  # the worker's read ends
            raise self.unavailable(_late(seconds), transient=True)
        if "error" in outcome:
            raise outcome["error"]

    def follow(self) -> None:
        """Follow at most MAX_REDIRECTS redirects from the source, vetting every hop, and copy the body to the sink."""
        self.url = self.source
        try:
            for hop in range(MAX_REDIRECTS + 1):
                try:
                    url = parse_url(self.url)
                    if hop:
                        self.policy.check_url(self.url, url)
                    infos = socket.getaddrinfo(url.host, url.port, type=socket.SOCK_STREAM)  # once: no rebinding
                    addresses = list(dict.fromkeys(sockaddr[0] for *_, sockaddr in infos))
                    self.policy.check_addresses(self.url, url, addresses)
                except SourceRefused as exc:
                    if not hop:
                        raise
                    raise SourceRefused(f"{shown(self.source)} redirects to a refused place: {exc}") from None
                redirect = self.get(url, addresses)
                if redirect is None:
                    return
                self.url = redirect
        except (SourceRefused, SourceUnavailable):
            raise
        except (OSError, urllib3.exceptions.HTTPError, http.client.HTTPException, CertificateError) as exc:
            raise self.network_error(exc) from exc
        raise SourceUnavailable(f"cannot download {shown(self.source)}: more than {MAX_REDIRECTS} redirects")

    def connect(self, url: Url, addresses: list[str]) -> HTTPConnection:
        """A connection to the first vetted address that answers; TLS names (and checks) the URL's host."""
        error: Exception = OSError(f"no address for {url.host}")
        for address in addresses:
            if url.scheme == "https":
                connection: HTTPConnection = HTTPSConnection(
                    address, url.port, timeout=self.timeout, server_hostname=url.host, assert_hostname=url.host,
                    ssl_context=ssl.create_default_context(),
                )  # fmt: skip
            else:
                connection = HTTPConnection(address, url.port, timeout=self.timeout)
            try:
                connection.connect()
            except (OSError, urllib3.exceptions.HTTPError) as exc:
                connection.close()
                error = exc
                continue
            self.sock = connection.sock
            if self.expired.is_set():  # the caller gave up while this connected
                connection.close()
                raise TimeoutError("the fetch's deadline passed")
            return connection
        raise error

    def get(self, url: Url, addresses: list[str]) -> str | None:
        """One GET: the absolute URL a redirect points to, or None when a 2xx answer's body went to the sink."""
        connection = self.connect(url, addresses)
        try:
            host = url.host_port.removesuffix(":443" if url.scheme == "https" else ":80")  # the default port unsaid
            connection.request(
                "GET", url.target, headers={"Host": host, "User-Agent": "tagifai", "Connection": "close"},
                preload_content=False, decode_content=False, enforce_content_length=True,
            )  # fmt: skip
            response = connection.getresponse()
            status, reason = response.status, shown(response.reason or "")
            location = response.get_redirect_location()
            if location is not False:
                if not location:
                    raise self.unavailable(f"HTTP {status} {reason} without a Location")
                try:
                    return urllib.parse.urljoin(self.url, location.strip())
                except ValueError:  # e.g. "http://[::1": urljoin cannot split it
                    bad = f"HTTP {status} {reason} to a Location that is no URL: {shown(location)}"
                    raise self.unavailable(bad) from None
            if not 200 <= status < 300:
                raise self.unavailable(f"HTTP {status} {reason}", status >= 500 or status in TRANSIENT_HTTP_CODES)
            if (response.length_remaining or 0) > self.sink.max_bytes:
                raise too_big(self.source, self.sink.max_bytes)
            for chunk in response.stream(CHUNK):
                if self.expired.is_set():  # the caller gave up (and may have removed the file)
                    raise TimeoutError("the fetch's deadline passed")
                self.sink.write(chunk)
            return None
        finally:
            connection.close()

    def unavailable(self, reason: str, transient: bool = False) -> SourceUnavailable:
        """`cannot download <source>: <reason>`, naming the hop when it is not the source."""
        where = "" if self.url == self.source else f" (at {shown(self.url)})"
        return SourceUnavailable(f"cannot download {shown(self.source)}: {reason}{where}", transient=transient)

    def network_error(self, exc: BaseException) -> SourceUnavailable:
        """One line for a failed download: the first cause that is not urllib3's wrapping."""
        cause = exc
        while isinstance(cause, urllib3.exceptions.HTTPError) and cause.__context__ is not None:
            cause = cause.__context__  # e.g. ConnectionRefusedError, or IncompleteRead: a body cut short
        reason = shown(str(cause) or type(cause).__name__)
        if isinstance(cause, CertificateError):  # urllib3 checks the certificate's name itself
            reason = f"certificate verify failed: {reason}"
        transient = not isinstance(cause, (ssl.SSLCertVerificationError, CertificateError))
        if isinstance(cause, socket.gaierror):
            transient = cause.errno == socket.EAI_AGAIN
        return self.unavailable(reason, transient)
