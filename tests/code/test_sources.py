import http.server
import threading

import pytest

from tagifai import sources
from tagifai.errors import TagifaiError


@pytest.fixture
def http_root(tmp_path):
    """Serve tmp_path on 127.0.0.1 for the duration of a test."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_fetch_reads_plain_paths_and_file_urls(tmp_path):
    path = tmp_path / "projects.csv"
    path.write_bytes(b"id\n1\n")
    assert sources.fetch(str(path)) == b"id\n1\n"
    assert sources.fetch(path.as_uri()) == b"id\n1\n"


def test_fetch_downloads_http(tmp_path, http_root):
    (tmp_path / "tags.csv").write_bytes(b"id,tag\n")
    assert sources.fetch(f"{http_root}/tags.csv") == b"id,tag\n"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("/nonexistent/projects.csv", "data file not found: /nonexistent/projects.csv"),  # missing path
        ("file:///nonexistent/tags.csv", "data file not found: file:///nonexistent/tags.csv"),  # missing file URL
    ],
)
def test_fetch_names_missing_files(source, message):
    with pytest.raises(TagifaiError, match=message):
        sources.fetch(source)


def test_fetch_names_http_errors(http_root):
    with pytest.raises(TagifaiError, match=r"cannot download http://127.0.0.1:\d+/missing.csv: HTTP 404"):
        sources.fetch(f"{http_root}/missing.csv")


def test_fetch_names_unreachable_servers():
    with pytest.raises(TagifaiError, match="cannot download http://127.0.0.1:9/x.csv"):
        sources.fetch("http://127.0.0.1:9/x.csv")
