import hashlib
import http.server
import threading

import pytest

from harness import synthetic
from tagifai.contract.errors import EXIT_BAD_INPUT, EXIT_ERROR, TagifaiError
from tagifai.contract.sources import redact
from tagifai.pipeline import sources

SOURCE_ENVS = ("TAGIFAI_PROJECTS_URL", "TAGIFAI_TAGS_URL")


@pytest.fixture(autouse=True)
def no_policy(monkeypatch):
    """A person's own machine: no deployment policy in the environment."""
    for name in ("TAGIFAI_DATA_DIRS", "TAGIFAI_ALLOWED_URL_HOSTS", "TAGIFAI_PRIVATE_URL_HOSTS", *SOURCE_ENVS):
        monkeypatch.delenv(name, raising=False)


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


def test_fetch_reads_plain_paths_and_file_urls(tmp_path, settings):
    path = tmp_path / "projects.csv"
    path.write_bytes(b"id\n1\n")
    assert sources.fetch(str(path), settings) == b"id\n1\n"
    assert sources.fetch(path.as_uri(), settings) == b"id\n1\n"


def test_fetch_downloads_http(tmp_path, http_root, settings):
    (tmp_path / "tags.csv").write_bytes(b"id,tag\n")
    assert sources.fetch(f"{http_root}/tags.csv", settings) == b"id,tag\n"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("/nonexistent/projects.csv", "data file not found: /nonexistent/projects.csv"),  # missing path
        ("file:///nonexistent/tags.csv", "data file not found: file:///nonexistent/tags.csv"),  # missing file URL
    ],
)
def test_fetch_names_missing_files(source, message, settings):
    with pytest.raises(TagifaiError, match=message) as raised:
        sources.fetch(source, settings)
    assert raised.value.exit_code == EXIT_BAD_INPUT  # a retry cannot bring the file back


def test_fetch_names_http_errors(http_root, settings):
    with pytest.raises(TagifaiError, match=r"cannot download http://127.0.0.1:\d+/missing.csv: HTTP 404"):
        sources.fetch(f"{http_root}/missing.csv", settings)


def test_fetch_names_unreachable_servers(settings):
    with pytest.raises(TagifaiError, match="cannot download http://127.0.0.1:9/x.csv") as raised:
        sources.fetch("http://127.0.0.1:9/x.csv", settings)
    assert raised.value.exit_code == EXIT_ERROR  # the network may come back: worth a retry


@pytest.mark.parametrize(
    ("source", "rule"),
    [
        ("/etc/passwd", "is outside the data folders this deployment allows"),  # a host file
        ("{data}/../../etc/passwd", "is outside the data folders"),  # `..` out of the data folder
        ("http://mlflow:5000/api/2.0/mlflow/experiments/search", "is not an allowed host"),  # an internal service
        ("http://169.254.169.254/latest/meta-data/", "is not an allowed host"),  # cloud metadata
    ],
)
def test_where_the_deployment_names_data_folders_other_sources_are_refused(
    tmp_path, settings, monkeypatch, source, rule
):
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("TAGIFAI_DATA_DIRS", str(data))
    with pytest.raises(TagifaiError, match=rule) as raised:
        sources.fetch(source.format(data=data), settings)
    assert raised.value.exit_code == EXIT_BAD_INPUT


def test_a_source_larger_than_max_bytes_is_refused(tmp_path, settings):
    big = tmp_path / "projects.csv"
    big.write_bytes(b"x" * 101)
    with pytest.raises(TagifaiError, match="exceeds 100 bytes") as raised:
        sources.fetch(str(big), synthetic.with_setting(settings, "data", max_bytes=100))
    assert raised.value.exit_code == EXIT_BAD_INPUT


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:s3cret@example.org/p.csv", "https://***@example.org/p.csv"),  # credentials
        ("https://example.org/p.csv", "https://example.org/p.csv"),  # nothing to hide
        ("/data/p.csv", "/data/p.csv"),  # a path
    ],
)
def test_redact_hides_credentials_in_urls(url, shown):
    assert redact(url) == shown


def test_download_streams_a_source_to_a_file_and_says_its_size_and_sha256(tmp_path, http_root, settings):
    content = b"id,title\n" + b"".join(b"%d,project %d\n" % (i, i) for i in range(20_000))  # several reads
    (tmp_path / "projects.csv").write_bytes(content)
    for source in (str(tmp_path / "projects.csv"), f"{http_root}/projects.csv"):
        target = tmp_path / "copy.csv"
        read = sources.download(source, settings, target)
        assert target.read_bytes() == content
        assert read == sources.Read(len(content), hashlib.sha256(content).hexdigest())
    assert sources.copy(str(tmp_path / "projects.csv"), settings, None) == read  # only hashed, kept nowhere


def test_a_download_past_max_bytes_leaves_no_file(tmp_path, http_root, settings):
    (tmp_path / "projects.csv").write_bytes(b"x" * 300_000)  # a file is refused after 200 kB were read
    capped = synthetic.with_setting(settings, "data", max_bytes=200_000)
    for source in (str(tmp_path / "projects.csv"), f"{http_root}/projects.csv"):
        target = tmp_path / "copy.csv"
        with pytest.raises(TagifaiError, match="exceeds 200000 bytes") as raised:
            sources.download(source, capped, target)
        assert raised.value.exit_code == EXIT_BAD_INPUT
        assert not target.exists()
