"""The data-source policy (tagifai/contract/sources.py) as the steps read under it
(tagifai/pipeline/sources.py, urllib3), on real files, symlinks and local HTTP(S) servers.

Only the resolver (`socket.getaddrinfo`) and, to keep packets on this machine, `socket.socket.connect`
to non-loopback addresses are replaced; the code under test runs as it is.
"""

import errno
import http.server
import ipaddress
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from tagifai.contract.sources import SourcePolicy, SourceRefused, SourceUnavailable
from tagifai.pipeline import sources

UPSTREAM = [
    "https://raw.githubusercontent.com/GokuMohandas/Made-With-ML/main/datasets/projects.csv",
    "https://raw.githubusercontent.com/GokuMohandas/Made-With-ML/main/datasets/tags.csv",
]
DATA = b"id,title\n1,a\n"
PRIVATE_RULE = "only hosts listed in TAGIFAI_PRIVATE_URL_HOSTS may be private"
FOLDER = "https://raw.githubusercontent.com/GokuMohandas/Made-With-ML/main/datasets/"  # UPSTREAM's


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and "\r" not in message
    return message


def fetch(source: str, policy: SourcePolicy, **caps) -> bytes:
    caps = {"max_bytes": 10_000, "deadline_seconds": 5.0, "timeout": 2.0} | caps
    return sources.read(source, policy, **caps)


# Fixtures: folders, a resolver, a connect recorder, servers


@pytest.fixture
def tree(tmp_path):
    """data/ (projects.csv, sub/, links in and out), outside/secret.csv, data2/ sharing data's prefix."""
    root = tmp_path.resolve()
    (root / "data" / "sub").mkdir(parents=True)
    (root / "outside").mkdir()
    (root / "data2").mkdir()
    (root / "data" / "projects.csv").write_bytes(DATA)
    (root / "data" / "sub" / "tags.csv").write_bytes(b"id,tag\n")
    (root / "outside" / "secret.csv").write_bytes(b"secret\n")
    (root / "data2" / "projects.csv").write_bytes(DATA)
    (root / "data" / "escape.csv").symlink_to(root / "outside" / "secret.csv")
    (root / "data" / "alias.csv").symlink_to(root / "data" / "sub" / "tags.csv")
    return root


@pytest.fixture
def enforced(tree):
    return SourcePolicy.from_environ({"TAGIFAI_DATA_DIRS": str(tree / "data")}, UPSTREAM)


@pytest.fixture
def dns(monkeypatch):
    """Host name → addresses (or a function returning them); other names resolve as usual."""
    answers = {}
    calls = []
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            return real(host, port, *args, **kwargs)
        calls.append(host)
        addresses = answers[host]() if callable(answers[host]) else answers[host]
        infos = []
        for address in addresses:
            if ipaddress.ip_address(address).version == 6:
                infos.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0)))
            else:
                infos.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)))
        return infos

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    answers["calls"] = calls
    return answers


@pytest.fixture
def connects(monkeypatch):
    """Record every address connected to; refuse non-loopback ones so no packet leaves the machine."""
    seen = []
    real = socket.socket.connect

    def connect(sock, address):
        seen.append(address[0])
        if not ipaddress.ip_address(address[0]).is_loopback:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "no network in tests")
        return real(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return seen


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        path = self.path.split("?")[0]
        self.server.requests.append((path, self.headers.get("Host")))
        self.server.routes.get(path, status(404))(self)

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, scheme="http"):
        super().__init__(("127.0.0.1", 0), Handler)
        self.scheme = scheme
        self.routes = {}
        self.requests = []

    @property
    def port(self):
        return self.server_address[1]

    def url(self, path, host="127.0.0.1"):
        return f"{self.scheme}://{host}:{self.port}{path}"


def serving(server):
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    return server


@pytest.fixture
def server():
    server = serving(Server())
    yield server
    server.shutdown()
    server.server_close()


def body(data, *, length=True, chunked=False):
    def send(handler):
        handler.send_response(200)
        if length:
            handler.send_header("Content-Length", str(len(data)))
        if chunked:
            handler.send_header("Transfer-Encoding", "chunked")
        handler.send_header("Connection", "close")
        handler.end_headers()
        if not chunked:
            handler.wfile.write(data)
            return
        for start in range(0, len(data), 1000):
            piece = data[start : start + 1000]
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        handler.wfile.write(b"0\r\n\r\n")

    return send


def redirect(location, code=302):
    def send(handler):
        handler.send_response(code)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.send_header("Connection", "close")
        handler.end_headers()

    return send


def status(code):
    def send(handler):
        handler.send_error(code)

    return send


def trickle(*, headers_too):
    """Send one byte every 50 ms (for at most 3 s): each read is quick, the whole never ends in time."""

    def send(handler):
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n"
        payload = (head if headers_too else b"") + b"x" * 1000
        if not headers_too:
            handler.wfile.write(head)
        end = time.monotonic() + 3
        try:
            for index in range(len(payload)):
                if time.monotonic() > end:
                    return
                handler.wfile.write(payload[index : index + 1])
                time.sleep(0.05)
        except OSError:
            return

    return send


def allowing(hosts, **environ):
    return SourcePolicy.from_environ({"TAGIFAI_ALLOWED_URL_HOSTS": hosts, **environ}, UPSTREAM)


def private(hosts, **environ):
    """A policy whose deployer says `hosts` are on a private network (the test servers are on 127.0.0.1)."""
    return SourcePolicy.from_environ({"TAGIFAI_PRIVATE_URL_HOSTS": hosts, **environ}, UPSTREAM)


# Settings → policy


@pytest.mark.parametrize(
    ("environ", "enforce", "expected"),
    [
        ({}, None, False),  # a person's machine: no settings, nothing enforced
        ({"TAGIFAI_DATA_DIRS": ""}, None, True),  # a setting present, even empty, enforces
        ({"TAGIFAI_ALLOWED_URL_HOSTS": ""}, None, True),  # any policy setting
        ({"TAGIFAI_PRIVATE_URL_HOSTS": ""}, None, True),  # any policy setting
        ({"TAGIFAI_PROJECTS_URL": "/srv/p.csv"}, None, False),  # a source setting alone does not
        ({}, True, True),  # the DAG always enforces
        ({"TAGIFAI_DATA_DIRS": "/srv/data"}, False, False),  # the caller may decide
    ],
)
def test_from_environ_enforces_where_settings_are_present(environ, enforce, expected):
    assert SourcePolicy.from_environ(environ, UPSTREAM, enforce=enforce).enforced is expected


def test_from_environ_defaults_to_the_upstream_folder_and_lists_hosts_prefixes_and_private_hosts():
    default = SourcePolicy.from_environ({}, UPSTREAM, enforce=True)
    assert default.allowed_hosts == default.private_hosts == frozenset()  # not the whole host
    assert default.allowed_prefixes == {FOLDER}
    # Empty is unset (a compose file passes every setting, set or not).
    blank = SourcePolicy.from_environ({"TAGIFAI_ALLOWED_URL_HOSTS": " "}, UPSTREAM)
    assert (blank.allowed_hosts, blank.allowed_prefixes) == (frozenset(), {FOLDER})
    listed = allowing(" Files.Example.COM. , 127.0.0.1:8080,[::1]:9000,::1 , HTTPS://Data.Example:443/a/b/,")
    assert listed.allowed_hosts == {"files.example.com", "127.0.0.1:8080", "[::1]:9000", "::1"}
    assert listed.allowed_prefixes == {"https://data.example/a/b/"}  # in place of the upstream folder
    assert listed.private_hosts == frozenset()  # allowed is not private
    chosen = allowing("files.example.com", TAGIFAI_TAGS_URL="http://minio:9000/data/tags.csv")
    assert chosen.allowed_prefixes == {"http://minio:9000/data/"}  # the deployer's own source's folder
    assert chosen.private_hosts == frozenset()  # ... but not private
    assert private(" MinIO:9000 ,10.0.0.5").private_hosts == {"minio:9000", "10.0.0.5"}


def test_from_environ_counts_the_folders_of_the_source_settings(tree):
    policy = SourcePolicy.from_environ(
        {
            "TAGIFAI_DATA_DIRS": f"{tree}/data:{tree}/data/sub/..:",
            "TAGIFAI_PROJECTS_URL": f"{tree}/outside/secret.csv",
            "TAGIFAI_TAGS_URL": f"file://{tree}/data2/projects.csv",
        },
        UPSTREAM,
    )
    assert policy.data_dirs == (f"{tree}/data", f"{tree}/outside", f"{tree}/data2")
    assert policy.check(f"{tree}/outside/secret.csv") == f"{tree}/outside/secret.csv"
    assert fetch(f"file://{tree}/data2/projects.csv", policy) == DATA


@pytest.mark.parametrize(
    "environ",
    [
        {"TAGIFAI_DATA_DIRS": "relative/data"},  # a data folder must be absolute
        {"TAGIFAI_ALLOWED_URL_HOSTS": "host:port"},  # not a port
        {"TAGIFAI_ALLOWED_URL_HOSTS": "user@host"},  # not a host
        {"TAGIFAI_ALLOWED_URL_HOSTS": "host/path"},  # not a host
        {"TAGIFAI_ALLOWED_URL_HOSTS": "https://files.example/data"},  # a prefix must end in /
        {"TAGIFAI_ALLOWED_URL_HOSTS": "https://files.example/data/?x=1"},  # ... and have no query
        {"TAGIFAI_ALLOWED_URL_HOSTS": "ftp://files.example/data/"},  # ... and be http(s)
        {"TAGIFAI_ALLOWED_URL_HOSTS": "https://user@files.example/data/"},  # ... with no user info
        {"TAGIFAI_PRIVATE_URL_HOSTS": "https://files.example/"},  # private: hosts only
    ],
)
def test_from_environ_rejects_malformed_settings(environ):
    with pytest.raises(ValueError, match="TAGIFAI_"):
        SourcePolicy.from_environ(environ, UPSTREAM)


# Local sources


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("/etc/passwd", "/etc/passwd is outside the data folders this deployment allows (TAGIFAI_DATA_DIRS={data})"),
        ("{data}/../../etc/passwd", "is outside the data folders"),  # `..` escape
        ("{data}/../../../../../../../etc/passwd", "is outside the data folders"),  # `..` past the root
        ("{data}/escape.csv", "is outside the data folders"),  # a symlink inside pointing outside
        ("file:///etc/passwd", "file:///etc/passwd is outside the data folders"),  # a file:// URL
        ("file://{data}/%2e%2e/outside/secret.csv", "is outside the data folders"),  # an encoded `..`
        ("{root}/data2/projects.csv", "is outside the data folders"),  # a sibling sharing the prefix
        ("{root}/outside", "is outside the data folders"),  # the parent of a data file
        ("data/projects.csv", "data/projects.csv is a relative path"),  # relative, when enforced
        ("./projects.csv", "is a relative path"),  # relative, dotted
        ("file://evil.example{data}/projects.csv", "is a file:// URL on another host"),  # a remote file host
        ("file://[{data}/projects.csv", "is not a valid file:// URL (Invalid IPv6 URL)"),  # unsplittable
        ("{data}/projects.csv\x00.txt", "contains a NUL byte"),  # NUL, escaped in the message
        ("/etc/passwd\nTAGIFAI_DATA_DIRS=/", r"/etc/passwd\nTAGIFAI_DATA_DIRS=/ is outside"),  # one line always
        ("", "empty source"),  # nothing
    ],
)
def test_policy_refuses_local_sources_outside_the_data_folders(tree, enforced, source, message):
    source = source.format(data=tree / "data", root=tree)
    message = message.replace("{data}", str(tree / "data"))
    with pytest.raises(SourceRefused) as exc:
        enforced.check(source)
    assert message in one_line(exc)
    with pytest.raises(SourceRefused):
        fetch(source, enforced)


def test_refusal_names_the_rule_and_the_fix(enforced, tree):
    with pytest.raises(SourceRefused) as exc:
        enforced.check("/etc/passwd")
    assert str(exc.value) == (
        f"/etc/passwd is outside the data folders this deployment allows (TAGIFAI_DATA_DIRS={tree}/data): "
        "ask the deployer to add its folder, or use a file in one of them"
    )


@pytest.mark.parametrize(
    ("source", "resolved", "content"),
    [
        ("{data}/projects.csv", "{data}/projects.csv", DATA),  # a plain path
        ("file://{data}/projects.csv", "{data}/projects.csv", DATA),  # a file:// URL
        ("file://localhost{data}/projects.csv", "{data}/projects.csv", DATA),  # this host, named
        ("file://{data}/sub/%74ags.csv", "{data}/sub/tags.csv", b"id,tag\n"),  # percent-encoded
        ("{data}/sub/../projects.csv", "{data}/projects.csv", DATA),  # `..` that stays inside
        ("{data}/alias.csv", "{data}/sub/tags.csv", b"id,tag\n"),  # a symlink inside pointing inside
    ],
)
def test_policy_reads_local_sources_inside_the_data_folders(tree, enforced, source, resolved, content):
    data = tree / "data"
    assert enforced.check(source.format(data=data)) == resolved.format(data=data)
    assert fetch(source.format(data=data), enforced) == content


@pytest.mark.parametrize(
    ("source", "message", "transient"),
    [
        ("{data}", "cannot read {data}: Is a directory", False),  # the data folder itself
        ("{data}/sub", "cannot read {data}/sub: Is a directory", False),  # a folder inside
        ("{data}/missing.csv", "data file not found: {data}/missing.csv", False),  # missing
        ("file://{data}/missing.csv", "data file not found: file://{data}/missing.csv", False),  # missing URL
    ],
)
def test_fetch_names_unreadable_local_sources(tree, enforced, source, message, transient):
    data = tree / "data"
    with pytest.raises(SourceUnavailable) as exc:
        fetch(source.format(data=data), enforced)
    assert one_line(exc) == message.format(data=data)
    assert exc.value.transient is transient


@pytest.mark.parametrize(
    ("source", "swapped", "target", "part"),
    [
        ("sub/tags.csv", "sub", "outside", "sub"),  # a folder in the path becomes a link out
        ("projects.csv", "projects.csv", "outside/secret.csv", "projects.csv"),  # the file itself
    ],
)
def test_fetch_refuses_a_path_swapped_for_a_link_after_the_check(
    tree, enforced, monkeypatch, source, swapped, target, part
):
    (tree / "outside" / "tags.csv").write_bytes(b"secret\n")
    check = SourcePolicy.check

    def check_then_swap(policy, source):
        resolved = check(policy, source)  # the path as it is: inside, no link
        victim = tree / "data" / swapped
        if victim.is_dir():
            for child in victim.iterdir():
                child.unlink()
            victim.rmdir()
        else:
            victim.unlink()
        victim.symlink_to(tree / target)
        return resolved

    monkeypatch.setattr(SourcePolicy, "check", check_then_swap)
    source = f"{tree}/data/{source}"
    with pytest.raises(SourceRefused) as exc:
        fetch(source, enforced)
    assert one_line(exc) == (
        f"{source} changed after the policy check: {part!r} in its path is now a symbolic link, which is not followed"
    )


def test_data_dir_of_names_the_folder_to_mount(tree):
    policy = SourcePolicy.from_environ({"TAGIFAI_DATA_DIRS": f"{tree}/data:{tree}/data/sub"}, UPSTREAM)
    assert policy.data_dir_of(f"{tree}/data/projects.csv") == f"{tree}/data"
    assert policy.data_dir_of(f"file://{tree}/data/sub/tags.csv") == f"{tree}/data/sub"  # the innermost
    assert policy.data_dir_of(f"{tree}/data/alias.csv") == f"{tree}/data/sub"  # where the link leads
    assert policy.data_dir_of(f"{tree}/data/escape.csv") is None  # outside, through a link
    assert policy.data_dir_of(UPSTREAM[0]) is None  # a URL mounts nothing


def test_unenforced_policy_reads_anything_within_the_caps(tree, server, monkeypatch):
    policy = SourcePolicy.from_environ({}, UPSTREAM)
    monkeypatch.chdir(tree / "outside")
    assert fetch("secret.csv", policy) == b"secret\n"  # relative
    assert fetch(f"{tree}/data/escape.csv", policy) == b"secret\n"  # through a link
    assert fetch(f"file://{tree}/outside/secret.csv", policy) == b"secret\n"
    server.routes["/data.csv"] = body(DATA)
    assert fetch(server.url("/data.csv"), policy) == DATA  # a private host, not listed
    with pytest.raises(SourceRefused, match="exceeds 4 bytes"):
        fetch("secret.csv", policy, max_bytes=4)
    with pytest.raises(SourceRefused, match="exceeds 4 bytes"):
        fetch(server.url("/data.csv"), policy, max_bytes=4)
    with pytest.raises(SourceRefused, match="is not an http"):
        policy.check("ftp://example.com/data.csv")


@pytest.mark.parametrize(
    ("max_bytes", "refused"),
    [
        (len(DATA), False),  # exactly the cap
        (len(DATA) - 1, True),  # one byte over
    ],
)
def test_fetch_caps_local_files(tree, enforced, max_bytes, refused):
    source = f"{tree}/data/projects.csv"
    if not refused:
        assert fetch(source, enforced, max_bytes=max_bytes) == DATA
        return
    with pytest.raises(SourceRefused) as exc:
        fetch(source, enforced, max_bytes=max_bytes)
    assert one_line(exc).startswith(f"{source} exceeds {max_bytes} bytes")


# URLs: scheme and host


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("ftp://x", "ftp://x is not an http(s) URL, a path or a file:// URL"),  # another scheme
        ("data:text/csv,id", "is not an http(s) URL"),  # data: URL
        ("gopher://127.0.0.1:6379/_INFO", "is not an http(s) URL"),  # gopher
        (
            "http://mlflow:5000/api",
            f"http://mlflow:5000/api is not an allowed host (TAGIFAI_ALLOWED_URL_HOSTS: {FOLDER})",
        ),  # an internal service
        (
            "https://raw.githubusercontent.com/someone/else/main/x.csv",
            "https://raw.githubusercontent.com/someone/else/main/x.csv is not under an allowed URL prefix "
            f"(TAGIFAI_ALLOWED_URL_HOSTS: {FOLDER})",
        ),  # anyone's file on the upstream host
        (FOLDER + "../../../../../someone/else/main/x.csv", "is not under an allowed URL prefix"),  # `..` out
        (FOLDER + "%2E%2e/%2e%2E/x.csv", "is not under an allowed URL prefix"),  # `..` encoded
        (FOLDER + "..%2f..%2fx.csv", "is not under an allowed URL prefix"),  # `..` with an encoded slash
        (FOLDER + "..%5c..%5cx.csv", "is not under an allowed URL prefix"),  # `..` with an encoded backslash
        (FOLDER.removesuffix("/") + ".csv", "is not under an allowed URL prefix"),  # the folder's name as a prefix
        (FOLDER.replace("https:", "http:") + "projects.csv", "is not an allowed host"),  # another scheme
        ("http://169.254.169.254/latest/meta-data/", "is not an allowed host"),  # cloud metadata
        ("http://172.17.0.1:2375/containers/json", "is not an allowed host"),  # the Docker gateway
        ("https://raw.githubusercontent.com.evil.example/x", "is not an allowed host"),  # a suffix
        ("http://raw.githubusercontent.com@mlflow:5000/", "http://***@mlflow:5000/ is not an allowed"),  # user info
        ("http://[::1", "is not a valid URL"),  # broken IPv6 literal
        ("http://mlflow:99999/", "is not a valid URL"),  # port out of range
        ("http:///x.csv", "has no host name"),  # no host
        ("https://raw.githubusercontent.com/a b.csv", "contains spaces or control characters"),  # a space
    ],
)
def test_policy_refuses_urls_outside_the_allowed_hosts(source, message):
    policy = SourcePolicy.from_environ({}, UPSTREAM, enforce=True)
    with pytest.raises(SourceRefused) as exc:
        policy.check(source)
    assert message in one_line(exc)


@pytest.mark.parametrize(
    ("hosts", "source", "allowed"),
    [
        (None, UPSTREAM[0], True),  # the pinned upstream, by default
        (None, FOLDER.replace("raw.", "RAW.").replace(".com/", ".com.:443/") + "tags.csv", True),  # the same folder
        (None, "https://raw.githubusercontent.com/x.csv", False),  # ... not the whole host
        ("", UPSTREAM[0], True),  # empty is unset: the upstream folder, as by default
        ("files.example", UPSTREAM[0], False),  # a listed host replaces the default
        ("files.example", "https://files.example:8443/x.csv", True),  # a bare host: any port
        ("files.example:443", "https://files.example/x.csv", True),  # host:port, the default port
        ("files.example:443", "http://files.example/x.csv", False),  # ... and not another
        ("[2606:4700::1111]:8080", "http://[2606:4700::1111]:8080/x.csv", True),  # an IPv6 entry with a port
        ("https://files.example/data/", "https://files.example/data/sub/x.csv?v=1", True),  # under a prefix
        ("https://files.example/data/", "https://files.example:443/data/x.csv", True),  # the default port said
        ("https://files.example/data/", "https://files.example/database.csv", False),  # not the folder
        ("https://files.example/data/", "http://files.example/data/x.csv", False),  # not its scheme
        ("https://files.example/data/", "https://files.example:8443/data/x.csv", False),  # not its port
        ("https://files.example:8443/data/", "https://files.example:8443/data/x.csv", True),  # its port
    ],
)
def test_policy_matches_hosts_and_ports(hosts, source, allowed):
    environ = {} if hosts is None else {"TAGIFAI_ALLOWED_URL_HOSTS": hosts}
    policy = SourcePolicy.from_environ(environ, UPSTREAM, enforce=True)
    if allowed:
        assert policy.check(source) == source
        return
    with pytest.raises(SourceRefused, match="is not (an allowed host|under an allowed URL prefix)"):
        policy.check(source)


@pytest.mark.parametrize(
    "policy",
    [
        SourcePolicy.from_environ({}, ["http://10.0.0.5/data.csv"], enforce=True),  # the pinned URL's host
        SourcePolicy.from_environ({"TAGIFAI_ALLOWED_URL_HOSTS": "10.0.0.5"}, UPSTREAM),  # an allowed host
        SourcePolicy.from_environ({"TAGIFAI_ALLOWED_URL_HOSTS": "http://10.0.0.5/"}, UPSTREAM),  # an allowed prefix
    ],
)
def test_policy_refuses_a_literal_private_ip_unless_listed_as_private(policy):
    with pytest.raises(SourceRefused) as exc:
        policy.check("http://10.0.0.5/data.csv")
    assert one_line(exc) == f"http://10.0.0.5/data.csv is 10.0.0.5, a private address: {PRIVATE_RULE}"
    assert private("10.0.0.5").check("http://10.0.0.5/data.csv") == "http://10.0.0.5/data.csv"


# URLs: addresses


@pytest.mark.parametrize(
    ("addresses", "shown", "kind"),
    [
        (["10.0.0.5"], "10.0.0.5", "a private"),  # RFC 1918
        (["172.18.0.3"], "172.18.0.3", "a private"),  # a Docker network
        (["127.0.0.1"], "127.0.0.1", "a loopback"),  # this machine
        (["169.254.169.254"], "169.254.169.254", "a link-local"),  # cloud metadata
        (["100.64.0.1"], "100.64.0.1", "a shared"),  # carrier-grade NAT
        (["0.0.0.0"], "0.0.0.0", "an unspecified"),  # reaches this machine
        (["::ffff:127.0.0.1"], "::ffff:127.0.0.1", "a loopback"),  # IPv4-mapped IPv6
        (["::1"], "::1", "a loopback"),  # IPv6 loopback
        (["fd00::1"], "fd00::1", "a private"),  # IPv6 unique local
        (["64:ff9b::a00:5"], "64:ff9b::a00:5", "a private"),  # NAT64 of 10.0.0.5
        (["2002:7f00:1::"], "2002:7f00:1::", "a loopback"),  # 6to4 of 127.0.0.1
        (["8.8.8.8", "10.0.0.5"], "10.0.0.5", "a private"),  # one private answer among public ones
    ],
)
def test_fetch_refuses_an_allowed_host_resolving_to_non_global_addresses(dns, connects, addresses, shown, kind):
    dns["raw.githubusercontent.com"] = addresses
    policy = SourcePolicy.from_environ({}, UPSTREAM, enforce=True)
    assert policy.check(UPSTREAM[0]) == UPSTREAM[0]  # the pre-flight does no DNS
    with pytest.raises(SourceRefused) as exc:
        fetch(UPSTREAM[0], policy)
    assert one_line(exc) == f"{UPSTREAM[0]} resolves to {shown}, {kind} address: {PRIVATE_RULE}"
    assert connects == []


@pytest.mark.parametrize("entry", ["files.test", "files.test:{port}", "http://files.test:{port}/"])
def test_fetch_refuses_an_allowed_host_that_resolves_to_a_private_address(server, dns, connects, entry):
    # Allowing a host does not vouch for its addresses: only TAGIFAI_PRIVATE_URL_HOSTS does.
    server.routes["/data.csv"] = body(DATA)
    dns["files.test"] = ["127.0.0.1"]
    source = server.url("/data.csv", host="files.test")
    with pytest.raises(SourceRefused) as exc:
        fetch(source, allowing(entry.format(port=server.port)))
    assert one_line(exc) == f"{source} resolves to 127.0.0.1, a loopback address: {PRIVATE_RULE}"
    assert connects == [] and server.requests == []
    assert fetch(source, private("files.test")) == DATA


def test_a_refused_url_names_the_allowed_hosts_prefixes_and_private_hosts():
    policy = allowing("files.example,https://data.example/a/", TAGIFAI_PRIVATE_URL_HOSTS="minio:9000")
    with pytest.raises(SourceRefused) as exc:
        policy.check("https://data.example/b/x.csv")
    assert one_line(exc) == (
        "https://data.example/b/x.csv is not under an allowed URL prefix (TAGIFAI_ALLOWED_URL_HOSTS: "
        "files.example, https://data.example/a/; TAGIFAI_PRIVATE_URL_HOSTS: minio:9000)"
    )
    assert policy.check("http://minio:9000/x.csv") == "http://minio:9000/x.csv"  # a private host is allowed


def test_fetch_downloads_from_an_explicitly_listed_private_host(server, connects):
    server.routes["/data.csv"] = body(DATA)
    assert fetch(server.url("/data.csv"), private("127.0.0.1")) == DATA
    assert fetch(server.url("/data.csv"), private(f"127.0.0.1:{server.port}")) == DATA
    with pytest.raises(SourceRefused, match="is not an allowed host"):
        fetch(server.url("/data.csv"), private("127.0.0.1:1"))
    assert connects == ["127.0.0.1", "127.0.0.1"]


def test_fetch_connects_to_the_vetted_address_with_the_host_name_in_the_request(server, dns, connects):
    server.routes["/data.csv"] = body(DATA)
    dns["files.test"] = ["127.0.0.1"]
    assert fetch(server.url("/data.csv", host="files.test"), private("files.test")) == DATA
    assert connects == ["127.0.0.1"]
    assert server.requests == [("/data.csv", f"files.test:{server.port}")]


def test_fetch_pins_the_vetted_address_against_dns_rebinding(server, dns, connects):
    server.routes["/data.csv"] = body(DATA)
    # A public answer for the check, then the private server for whoever resolves again.
    answers = iter([["93.184.216.34"]])
    dns["rebind.test"] = lambda: next(answers, ["127.0.0.1"])
    policy = SourcePolicy.from_environ({}, [f"http://rebind.test:{server.port}/"], enforce=True)
    with pytest.raises(SourceUnavailable) as exc:
        fetch(server.url("/data.csv", host="rebind.test"), policy)
    assert one_line(exc).startswith(f"cannot download {server.url('/data.csv', host='rebind.test')}: ")
    assert exc.value.transient is True
    assert dns["calls"] == ["rebind.test"]  # resolved once
    assert connects == ["93.184.216.34"]  # connected only to the vetted address
    assert server.requests == []  # the private server was never asked


# Redirects


@pytest.mark.parametrize(
    ("location", "code"),
    [
        ("/data.csv", 302),  # a relative Location
        ("data.csv", 301),  # relative to the folder
        ("{base}/data.csv", 303),  # absolute, same server
        ("{base}/data.csv?x=1", 307),  # with a query
        ("{base}/data.csv", 308),  # permanent
    ],
)
def test_fetch_follows_redirects_to_allowed_places(server, location, code):
    server.routes["/data.csv"] = body(DATA)
    server.routes["/old.csv"] = redirect(location.format(base=server.url("")), code)
    assert fetch(server.url("/old.csv"), private("127.0.0.1")) == DATA
    assert [path for path, _ in server.requests] == ["/old.csv", "/data.csv"]


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("http://evil.example/x.csv", "http://evil.example/x.csv is not an allowed host"),  # another host
        ("http://169.254.169.254/latest/", "http://169.254.169.254/latest/ is not an allowed host"),  # metadata
        ("http://127.0.0.1:1/x.csv", "is not an allowed host"),  # the same host, another port
        ("file:///etc/passwd", "file:///etc/passwd is not an http(s) URL"),  # a local file
        ("ftp://127.0.0.1/x.csv", "is not an http(s) URL"),  # another scheme
        ("http://upstream.test/p.csv", f"resolves to 10.0.0.5, a private address: {PRIVATE_RULE}"),  # a private hop
    ],
)
def test_fetch_refuses_redirects_to_refused_places(server, dns, connects, tree, location, message):
    dns["upstream.test"] = ["10.0.0.5"]
    policy = private(
        f"127.0.0.1:{server.port}",
        TAGIFAI_DATA_DIRS=str(tree / "data"),
        TAGIFAI_PROJECTS_URL="http://upstream.test/p.csv",  # allowed, not explicit
    )
    server.routes["/old.csv"] = redirect(location.format(data=tree / "data"))
    source = server.url("/old.csv")
    with pytest.raises(SourceRefused) as exc:
        fetch(source, policy)
    assert one_line(exc).startswith(f"{source} redirects to a refused place: ")
    assert message in str(exc.value)
    assert connects == ["127.0.0.1"]


@pytest.mark.parametrize(
    ("hops", "followed"),
    [
        (5, True),  # the most allowed
        (6, False),  # one too many
    ],
)
def test_fetch_follows_at_most_five_redirects(server, hops, followed):
    server.routes["/r0"] = body(DATA)
    for hop in range(1, hops + 1):
        server.routes[f"/r{hop}"] = redirect(f"/r{hop - 1}")
    source = server.url(f"/r{hops}")
    if followed:
        assert fetch(source, private("127.0.0.1")) == DATA
        return
    with pytest.raises(SourceUnavailable) as exc:
        fetch(source, private("127.0.0.1"))
    assert one_line(exc) == f"cannot download {source}: more than 5 redirects"
    assert exc.value.transient is False


def test_fetch_names_a_redirect_without_location(server):
    server.routes["/old.csv"] = redirect("")
    with pytest.raises(SourceUnavailable, match="HTTP 302 Found without a Location"):
        fetch(server.url("/old.csv"), private("127.0.0.1"))


def test_fetch_names_a_redirect_to_a_location_that_is_no_url(server):
    server.routes["/old.csv"] = redirect("http://[::1")
    source = server.url("/old.csv")
    with pytest.raises(SourceUnavailable) as exc:
        fetch(source, private("127.0.0.1"))
    assert one_line(exc) == f"cannot download {source}: HTTP 302 Found to a Location that is no URL: http://[::1"
    assert exc.value.transient is False


# Caps, deadline, HTTP errors


@pytest.mark.parametrize(
    "route",
    [
        body(b"x" * 5000),  # Content-Length says too much: refused before reading
        body(b"x" * 5000, length=False),  # no length: read until the connection closes
        body(b"x" * 5000, length=False, chunked=True),  # chunked
    ],
)
def test_fetch_caps_downloads(server, route):
    server.routes["/big.csv"] = route
    policy = private("127.0.0.1")
    assert fetch(server.url("/big.csv"), policy, max_bytes=5000) == b"x" * 5000
    with pytest.raises(SourceRefused) as exc:
        fetch(server.url("/big.csv"), policy, max_bytes=4999)
    assert one_line(exc) == (
        f"{server.url('/big.csv')} exceeds 4999 bytes, the limit for one data source: "
        "use a smaller source, or ask the deployer to raise the limit"
    )


@pytest.mark.parametrize(
    "headers_too",
    [
        False,  # the body trickles in
        True,  # the status line and headers trickle in
    ],
)
def test_fetch_stops_at_the_deadline(server, headers_too):
    server.routes["/slow.csv"] = trickle(headers_too=headers_too)
    started = time.monotonic()
    with pytest.raises(SourceUnavailable) as exc:
        fetch(server.url("/slow.csv"), private("127.0.0.1"), deadline_seconds=0.5, timeout=5)
    assert time.monotonic() - started < 1.5
    assert one_line(exc) == (
        f"cannot download {server.url('/slow.csv')}: not done within 0.5 seconds (the deadline of this fetch)"
    )
    assert exc.value.transient is True


@pytest.mark.parametrize(
    ("code", "reason", "transient"),
    [
        (404, "Not Found", False),  # gone: a retry cannot help
        (403, "Forbidden", False),  # refused by the server
        (429, "Too Many Requests", True),  # throttled
        (500, "Internal Server Error", True),  # the server failed
        (503, "Service Unavailable", True),  # the server is down for now
    ],
)
def test_fetch_names_http_errors(server, code, reason, transient):
    server.routes["/x.csv"] = status(code)
    with pytest.raises(SourceUnavailable) as exc:
        fetch(server.url("/x.csv"), private("127.0.0.1"))
    assert one_line(exc) == f"cannot download {server.url('/x.csv')}: HTTP {code} {reason}"
    assert exc.value.transient is transient


def test_fetch_names_http_errors_after_a_redirect(server):
    server.routes["/old.csv"] = redirect("/gone.csv")
    with pytest.raises(SourceUnavailable) as exc:
        fetch(server.url("/old.csv"), private("127.0.0.1"))
    assert (
        one_line(exc) == f"cannot download {server.url('/old.csv')}: HTTP 404 Not Found (at {server.url('/gone.csv')})"
    )


def short(data: bytes, declared: int):
    """Declare `declared` bytes, send `data` (fewer), close: a connection cut mid-body."""

    def send(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(declared))
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(data)
        handler.close_connection = True

    return send


def test_a_body_shorter_than_its_length_is_not_a_file_and_worth_a_retry(server):
    # 12 of 100 bytes, then the server closes: accepted, elt would parse a truncated CSV.
    server.routes["/cut.csv"] = short(b"id,title\n1,a", 100)
    with pytest.raises(SourceUnavailable) as exc:
        fetch(server.url("/cut.csv"), private("127.0.0.1"))
    assert one_line(exc).startswith(f"cannot download {server.url('/cut.csv')}: ")
    assert "IncompleteRead" in one_line(exc) and "12 bytes read" in one_line(exc)
    assert exc.value.transient is True


def test_a_chunked_body_is_read_whole(server):
    data = b"id,title\n" + b"".join(b"%d,project %d\n" % (i, i) for i in range(500))
    server.routes["/chunked.csv"] = body(data, length=False, chunked=True)
    assert fetch(server.url("/chunked.csv"), private("127.0.0.1")) == data


def test_fetch_names_unreachable_servers():
    with pytest.raises(SourceUnavailable) as exc:
        fetch("http://127.0.0.1:9/x.csv", SourcePolicy.from_environ({}, UPSTREAM))
    assert one_line(exc) == "cannot download http://127.0.0.1:9/x.csv: [Errno 111] Connection refused"
    assert exc.value.transient is True


def test_errors_are_the_kinds_callers_catch():
    assert issubclass(SourceRefused, ValueError)
    assert issubclass(SourceUnavailable, OSError)
    assert SourceUnavailable("cannot read x: y").transient is False


# HTTPS: TLS to the vetted address, checked against the host name


def self_signed(name: str, cert: Path, key: Path) -> None:
    """Write a self-signed certificate for DNS name `name` and its key (PEM), valid for a day."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


@pytest.fixture
def https_server(tmp_path, monkeypatch):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    self_signed("files.test", cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the only CA ssl.create_default_context trusts
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = Server("https")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    serving(server)
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("files.test", None),  # the certificate's name: downloaded from the vetted address
        ("other.test", "certificate verify failed: hostname 'other.test' doesn't match 'files.test'"),  # by name
    ],
)
def test_fetch_checks_tls_against_the_host_name(https_server, dns, connects, host, message):
    https_server.routes["/data.csv"] = body(DATA)
    dns[host] = ["127.0.0.1"]
    source = https_server.url("/data.csv", host=host)
    if message is None:
        assert fetch(source, private(host)) == DATA
        assert https_server.requests == [("/data.csv", f"{host}:{https_server.port}")]
    else:
        with pytest.raises(SourceUnavailable, match=message) as exc:
            fetch(source, private(host))
        assert exc.value.transient is False
    assert connects == ["127.0.0.1"]
