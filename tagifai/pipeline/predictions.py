"""Batch scoring: the champion's tag for every project, kept in PostgreSQL for people to query.

`score` and `counts` are pure. `read_projects` reads a projects CSV file `[predict] batch_rows` rows at a time,
`Scoring` scores those batches in order (in a small pool of forked processes: the model's TF-IDF is pure
Python, one core each), keeping the predictions file and the counts as it goes, and `write` streams the
scored batches into the table `predictions` in ONE transaction: each batch is COPYed into a temporary table,
and after the last one a single INSERT ... ON CONFLICT merges them, counting in SQL what it did. Memory holds
a few batches, whatever the number of projects; a failure anywhere (a bad row in a late batch, the database
going away, the process killed) leaves `predictions` as it was. Writes are idempotent per (project id, model
version): a row whose tag and probability are already there is left alone, so a retried task changes nothing
twice:

    psql "$DATABASE_URL" -c "SELECT tag, count(*) FROM predictions WHERE model_version = 3 GROUP BY tag"
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import itertools
import multiprocessing
import os
import re
import signal
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from tagifai.contract.errors import BadInputError, TagifaiError
from tagifai.contract.sources import redact

REQUIRED_COLUMNS = ("id", "title")
SCORED_COLUMNS = ("id", "tag", "probability")
# How many offending ids an error names.
SHOWN_IDS = 5
# The most rows the model scores in one call: its TF-IDF matrix and n-gram lists grow with them (the default
# model: ~200 MB for 10,000 rows, ~40 MB for 2,000), its speed per row does not.
MODEL_ROWS = 2_000
# The most processes that score batches side by side (one per core; each holds a batch being scored).
SCORING_WORKERS = 2
# glibc's `mallopt` options: how much free memory on top of the heap it keeps, from what size a block gets a
# mapping of its own. Blocks of at least RETURNED_BYTES are given back to the system when freed; the heap keeps
# at most KEPT_BYTES free on its top.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
RETURNED_BYTES, KEPT_BYTES = 4 << 20, 32 << 20
CONNECT_TIMEOUT_SECONDS = 10

METADATA = sa.MetaData()
PREDICTIONS = sa.Table(
    "predictions",
    METADATA,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("tag", sa.Text, nullable=False),
    sa.Column("probability", sa.Double, nullable=False),
    sa.Column("model_version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("pipeline_run_id", sa.Text, nullable=False),
    sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("predictions_model_version_idx", "model_version"),
)
# Where one write's scored rows wait for the merge: this session's own table, gone at commit or rollback.
# No key: repeated ids are looked for once, after the last batch (`repeated_ids`), so an error can name them.
STAGED = sa.Table(
    "predictions_staged",
    sa.MetaData(),
    sa.Column("id", sa.Text, nullable=False),
    sa.Column("tag", sa.Text, nullable=False),
    sa.Column("probability", sa.Double, nullable=False),
    prefixes=["TEMPORARY"],
    postgresql_on_commit="DROP",
)
# COPY is PostgreSQL's bulk load (SQLAlchemy Core has no statement for it): the CSV `staged_csv` writes.
COPY_STAGED = "COPY predictions_staged (id, tag, probability) FROM STDIN WITH (FORMAT csv, ENCODING 'UTF8')"

# The password in a URL's authority (`postgresql://user:pw@host/db` → `pw`), when urlsplit cannot parse it.
_PASSWORD = re.compile(r"://[^:/?#@\s]*:([^/?#\s]*)@")


# ---- scoring (pure) -----------------------------------------------------------------------------


def shown(ids: pd.Series) -> str:
    """Up to `SHOWN_IDS` ids, comma-separated, with how many more there are."""
    values = [str(v) for v in ids.unique()]
    more = f" and {len(values) - SHOWN_IDS} more" if len(values) > SHOWN_IDS else ""
    return ", ".join(values[:SHOWN_IDS]) + more


def project_ids(projects: pd.DataFrame) -> pd.Series:
    """The ids of `projects` as strings.

    Raises:
        BadInputError: an id is blank (missing or whitespace) or repeated.
    """
    raw = projects["id"]
    blank = raw.isna() | raw.astype(str).str.strip().eq("")
    if blank.any():
        rows = shown(pd.Series(projects.index[blank.to_numpy()]))
        raise BadInputError(f"projects have {int(blank.sum())} blank id(s), at rows {rows}: every project needs an id")
    ids = raw.astype(str)
    repeated = ids[ids.duplicated(keep=False)]
    if not repeated.empty:
        raise BadInputError(f"projects repeat ids {shown(repeated)}: each id may appear once")
    return ids


def score(model: Any, projects: pd.DataFrame, part_rows: int = MODEL_ROWS) -> pd.DataFrame:
    """Tag each project with `model`, `part_rows` projects per call of the model.

    Args:
        model: anything with `predict(frame)` taking `title`/`description` and returning `tag` and
            `probability` per row, like a loaded MLflow pyfunc of `tagifai.model.TagifaiModel`.
        projects: `id`, `title` and optionally `description` (other columns are ignored).
        part_rows: the most rows the model is given at once (what it allocates grows with them).

    Returns:
        `id` (str), `tag` and `probability`, one row per project, in input order.

    Raises:
        BadInputError: a required column is missing, or an id is blank or repeated.
        TagifaiError: the model returned a different number of rows, or no `tag`/`probability`.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in projects.columns]
    if missing:
        have = ", ".join(map(str, projects.columns)) or "none"
        raise BadInputError(f"projects lack column(s) {', '.join(missing)} (have: {have})")
    ids = project_ids(projects)
    if projects.empty:  # a classifier refuses zero rows
        return pd.DataFrame({c: [] for c in SCORED_COLUMNS}).astype({"id": str, "tag": str, "probability": float})
    source = projects.reset_index(drop=True)
    description = source["description"] if "description" in source.columns else ""
    frame = pd.DataFrame({"title": source["title"], "description": description}).fillna("")
    parts = []
    for start in range(0, len(frame), part_rows):
        part = frame.iloc[start : start + part_rows].reset_index(drop=True)
        predicted = pd.DataFrame(model.predict(part))
        lacking = [c for c in ("tag", "probability") if c not in predicted.columns]
        if lacking or len(predicted) != len(part):
            raise TagifaiError(
                f"the model returned {len(predicted)} rows with columns {', '.join(map(str, predicted.columns))} "
                f"for {len(part)} projects: expected one row each with tag and probability"
            )
        parts.append((predicted["tag"].astype(str).to_numpy(), predicted["probability"].astype(float).to_numpy()))
    tags, probabilities = (np.concatenate(column) for column in zip(*parts, strict=True))
    return pd.DataFrame({"id": ids.to_numpy(), "tag": tags, "probability": probabilities})


def counts(scored: pd.DataFrame) -> dict[str, int]:
    """Rows per tag, most frequent first (ties by tag)."""
    return ranked(scored["tag"].value_counts())


def ranked(tally: Mapping[Any, int]) -> dict[str, int]:
    """`tally` (rows per tag) as `counts` orders it: most frequent first, ties by tag."""
    return {str(tag): int(n) for tag, n in sorted(tally.items(), key=lambda item: (-item[1], str(item[0])))}


# ---- reading and scoring a file a batch at a time -----------------------------------------------


@contextlib.contextmanager
def read_projects(file: BinaryIO, name: str, batch_rows: int) -> Iterator[Iterator[pd.DataFrame]]:
    """Read the projects CSV in `file` (called `name` in errors) `batch_rows` rows at a time, as frames of text columns.

    Checked on entering, as `tagifai.core.data.parse_csv` checks a whole file: the file is read once through
    to check its encoding, then its header and first batch. The rest is parsed as the batches are taken: a
    row the parser cannot read fails then. A batch's index is its rows' place in the file (0: the first row
    after the header). `file` stays open; the parser lets go of it on leaving the block.

        with path.open("rb") as file, read_projects(file, "projects", 10_000) as batches:
            for batch in batches: ...

    Raises:
        BadInputError: the file is empty, not UTF-8, not CSV, lacks `id` or `title`, or has a header but no
            rows (on entering); a later row cannot be parsed (when its batch is taken).
    """
    from tagifai.core import data  # here: the database side of this module needs none of what it imports

    data.check_utf8(file, name)
    with unreadable(name):
        reader = pd.read_csv(file, dtype=str, keep_default_na=False, chunksize=batch_rows, encoding="utf-8-sig")
    with reader:
        with unreadable(name):
            first = next(reader)
        data.check_columns(first, name, REQUIRED_COLUMNS)
        yield itertools.chain([first], parsed(reader, name))


def parsed(reader: Iterable[pd.DataFrame], name: str) -> Iterator[pd.DataFrame]:
    """The batches of `reader`, its parser's errors raised as BadInputErrors (see `unreadable`)."""
    with unreadable(name):
        yield from reader


@contextlib.contextmanager
def unreadable(name: str) -> Iterator[None]:
    """Raise the CSV parser's errors in the block again as one-line BadInputErrors about the file `name`."""
    try:
        yield
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise BadInputError(f"{name} is not a readable CSV file: {exc}".splitlines()[0]) from exc


class Scoring:
    """Scores batches of projects, in order, appending each to a predictions CSV file and counting as it goes.

    The file is the whole scoring as `tagifai.core.data.to_csv_bytes` would write it (one header, `id`, `tag`,
    `probability`), written a batch at a time. With `workers` > 1, that many processes score batches side by
    side (the model's TF-IDF is pure Python: one process scores on one core). They are forked on entering,
    once the model is loaded and before any database connection is opened: they share the model's memory
    with this process and hold no socket of it. At most `workers` + 1 batches are in flight: memory holds a
    few batches, whatever the number of projects.

        with Scoring(model, folder / "predictions.csv", workers=2) as scoring:
            for scored in scoring(batches): ...
    """

    def __init__(self, model: Any, path: Path, workers: int = 1) -> None:
        """Score with `model` (see `score`) in `workers` processes (1: in this one); write the predictions to `path`."""
        self.model, self.path, self.workers = model, path, workers
        self.rows, self.batches, self.tags = 0, 0, Counter[str]()
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Scoring:
        """Fork the scoring processes now (none with one worker)."""
        if self.workers > 1:
            fork = multiprocessing.get_context("fork")
            self.pool = ProcessPoolExecutor(
                self.workers, mp_context=fork, initializer=_adopt, initargs=(self.model, os.getpid())
            )
            self.pool.submit(int).result()  # a fork pool starts all its processes with the first task
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Stop the scoring processes; batches still waiting are dropped."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def __call__(self, projects: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        """Each batch of `projects` scored (see `score`), in order, once it is in the file and the counts.

        Raises:
            BadInputError, TagifaiError: as `score` (for the first batch that fails).
            TagifaiError: a scoring process died (killed, out of memory): it may pass.
        """
        with self.path.open("w", encoding="utf-8", newline="") as out:
            for scored in self._scored(projects):
                scored.to_csv(out, index=False, header=self.batches == 0, lineterminator="\n")
                self.rows, self.batches = self.rows + len(scored), self.batches + 1
                self.tags.update(scored["tag"].value_counts().to_dict())
                yield scored

    def _scored(self, projects: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        """`score` of each batch, in order: here, or by the pool with `workers` + 1 batches in flight."""
        if self.pool is None:
            yield from (score(self.model, batch) for batch in projects)
            return
        pending: deque[Future[pd.DataFrame]] = deque()
        try:
            for batch in itertools.chain(projects, [None]):
                if batch is not None:
                    pending.append(self.pool.submit(_score, batch))
                while pending and (batch is None or len(pending) > self.workers):
                    yield pending.popleft().result()
        except BrokenProcessPool as exc:
            raise TagifaiError(f"a scoring process died ({exc}): nothing was written; try again") from exc
        finally:
            for future in pending:
                future.cancel()

    def counts(self) -> dict[str, int]:
        """Rows per tag so far, as `counts` orders them."""
        return ranked(self.tags)


def return_freed_memory(threshold: int = RETURNED_BYTES, kept: int = KEPT_BYTES) -> bool:
    """Have glibc give blocks of at least `threshold` bytes back to the system as soon as they are freed.

    By default glibc raises the size from which a block gets a mapping of its own each time such a block is freed
    (up to 32 MB): after the first model call, each call's matrices come from the heap, and what is freed there
    stays with the process. Fixed here (forks inherit it), a batch's large matrices go back when it is scored,
    and the heap keeps at most `kept` bytes free on its top. Scoring 200,000 rows with two forks and the 100k
    model (2026-12-03, alone): glibc's own 0.84–0.89 GB peak PSS, 11,400–14,200 rows/s; 4 MB and 32 MB (these
    defaults) 0.80–0.82 GB, 11,100–11,900 rows/s; 1 MB and 1 MB 0.74–0.75 GB, 8,200–8,500 rows/s (the kernel
    maps and zeroes the pages of each small block again, and trims and regrows the heap).

    Returns:
        Whether glibc took the setting (not glibc, e.g. musl or macOS: False, nothing changed).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return mallopt(M_MMAP_THRESHOLD, threshold) == 1 and mallopt(M_TRIM_THRESHOLD, kept) == 1


# The model a scoring process scores with: inherited at fork, never pickled.
_MODEL: Any = None
# Linux's prctl option that has the kernel signal a process when the one that forked it dies.
PR_SET_PDEATHSIG = 1


def _adopt(model: Any, parent: int) -> None:
    """In a scoring process: keep the model it was forked with, and die with `parent` (the process that forked it).

    A parent killed outright (SIGKILL, the OOM killer) cannot stop its pool: without this, the scoring
    processes would wait for work forever, each holding its share of the model.
    """
    global _MODEL
    _MODEL = model
    with contextlib.suppress(OSError, AttributeError):  # not Linux: no such call (the pool is not stopped then)
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the call took effect
        os._exit(1)


def _score(projects: pd.DataFrame) -> pd.DataFrame:
    """In a scoring process: `score` with the model it was forked with."""
    return score(_MODEL, projects)


def scoring_workers(most: int = SCORING_WORKERS) -> int:
    """How many processes should score: `most`, or fewer when this process may use fewer CPUs (1: no pool).

    Fork is needed (a spawned process would load the model again): elsewhere, one.
    """
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return max(1, min(most, len(os.sched_getaffinity(0))))


# ---- PostgreSQL ---------------------------------------------------------------------------------


def password(url: str) -> str | None:
    """The password in `url`, if it has one (even in a URL too malformed to parse)."""
    try:
        found = urlsplit(url).password
    except ValueError:
        found = None
    if not found and (match := _PASSWORD.search(url)):
        found = match.group(1)
    return found or None


def scrub(message: str, url: str) -> str:
    """`message` with `url` and its password, as given and decoded, replaced by `***`."""
    message = message.replace(url, redact(url))
    if secret := password(url):
        for form in {secret, unquote(secret)}:
            message = message.replace(form, "***")
    return message


def dsn(database_url: str) -> str:
    """A libpq connection URL from a SQLAlchemy (`postgresql+psycopg2://`) or plain PostgreSQL URL.

    Raises:
        BadInputError: not a PostgreSQL URL.
    """
    scheme, sep, rest = database_url.partition("://")
    driver = scheme.split("+", 1)
    if not sep or driver[0] not in ("postgresql", "postgres") or driver[1:] not in ([], ["psycopg2"]):
        raise BadInputError(
            f"database URL {redact(database_url)} is not postgresql://user:password@host:port/database "
            "(or postgresql+psycopg2://…)"
        )
    return f"postgresql://{rest}"


def staged_csv(scored: pd.DataFrame) -> bytes:
    """The rows of `scored` as `COPY_STAGED` reads them (CSV, UTF-8, no header; a float as repr, exactly).

    Raises:
        BadInputError: a column is missing, or an id is blank.
    """
    missing = [c for c in SCORED_COLUMNS if c not in scored.columns]
    if missing:
        raise BadInputError(f"scored rows lack column(s) {', '.join(missing)}")
    ids = scored["id"].astype(str)
    blank = scored["id"].isna() | ids.str.strip().eq("")
    if blank.any():
        raise BadInputError(f"scored rows have {int(blank.sum())} blank id(s): every project needs an id")
    frame = pd.DataFrame({"id": ids, "tag": scored["tag"], "probability": scored["probability"]})
    return frame.to_csv(index=False, header=False, lineterminator="\n").encode("utf-8")


def repeated_ids(connection: sa.Connection) -> BadInputError | None:
    """Why the staged rows cannot be merged as one row per id (None: they can): the ids that repeat, if any."""
    repeats = sa.select(STAGED.c.id).group_by(STAGED.c.id).having(sa.func.count() > 1).subquery()
    found = connection.execute(
        sa.select(repeats.c.id, sa.func.count().over()).order_by(repeats.c.id).limit(SHOWN_IDS)
    ).all()
    if not found:
        return None
    more = f" and {found[0][1] - SHOWN_IDS} more" if found[0][1] > SHOWN_IDS else ""
    return BadInputError(f"projects repeat ids {', '.join(row[0] for row in found)}{more}: each id may appear once")


def merge(model_version: int, pipeline_run_id: str, scored_at: datetime) -> sa.Select:
    """The one statement that moves the staged rows into `predictions`, and counts what it did.

    A row new for its (id, version) is inserted; one already there is rewritten, with this run and time
    (the monitor's window of batch predictions is `scored_at`: a daily re-scoring of the same projects
    keeps them in it). The statement answers one row: (inserted, updated), counted in SQL.
    """
    values = sa.select(
        STAGED.c.id,
        STAGED.c.tag,
        STAGED.c.probability,
        sa.cast(sa.literal(model_version), sa.Integer),
        sa.cast(sa.literal(pipeline_run_id), sa.Text),
        sa.cast(sa.literal(scored_at), sa.DateTime(timezone=True)),
    )
    statement = insert(PREDICTIONS).from_select([c.name for c in PREDICTIONS.c], values)
    new = statement.excluded
    statement = statement.on_conflict_do_update(
        index_elements=PREDICTIONS.primary_key.columns,
        set_={c.name: new[c.name] for c in PREDICTIONS.c if not c.primary_key},
    )
    # xmax is 0 for a row inserted here, not for one updated.
    written = statement.returning((sa.literal_column("xmax") == 0).label("inserted")).cte("written")
    return sa.select(
        sa.func.count().filter(written.c.inserted).label("inserted"),
        sa.func.count().filter(sa.not_(written.c.inserted)).label("updated"),
    )


def copy(connection: sa.Connection, batches: Iterable[pd.DataFrame]) -> int:
    """COPY each batch into the staging table as it comes; how many rows there were.

    Raises:
        BadInputError: as `staged_csv`.
        psycopg2.Error: COPY failed (the connection is invalidated when it is gone: no rollback is tried on it).
    """
    import psycopg2

    rows, raw = 0, connection.connection.dbapi_connection
    try:
        with raw.cursor() as cursor:
            for scored in batches:
                cursor.copy_expert(COPY_STAGED, io.BytesIO(staged_csv(scored)))
                rows += len(scored)
    except psycopg2.Error:
        if raw.closed:  # SQLAlchemy did not see it go (COPY bypasses it): its rollback would hide this error
            connection.invalidate()
        raise
    return rows


def write(
    database_url: str,
    batches: Iterable[pd.DataFrame],
    model_version: int,
    pipeline_run_id: str,
    scored_at: datetime,
) -> dict[str, int]:
    """Write scored `batches` to the table `predictions` (created if missing) in ONE transaction.

    One transaction, not a commit per batch: a scoring is either all in the table or not at all, so a
    failure anywhere — a batch that raises (a bad row in the file, found only when its batch is read), the
    database going away, the process killed — leaves `predictions` as it was, and a retry starts clean.
    Each batch is COPYed into a temporary table as it comes (memory holds one batch); after the last, the
    ids are checked (none repeats, across batches too), then one INSERT ... ON CONFLICT merges them, under
    an advisory lock that writers take in turn. Readers see the old rows until the commit. A row already
    there for the same (id, model_version) is updated (`merge`): the same scoring written twice inserts nothing.

    Args:
        database_url: `postgresql://…` or `postgresql+psycopg2://…`.
        batches: frames of `id`, `tag` and `probability` (`score`'s output); taken one by one inside the
            transaction: an exception they raise rolls it back and passes through as it is.
        model_version: the version that scored them.
        pipeline_run_id: the pipeline run that wrote them.
        scored_at: when (with a time zone).

    Returns:
        `inserted` (rows new for this version) and `updated` (rows that were there for it).

    Raises:
        BadInputError: the URL is not PostgreSQL or `scored_at` has no time zone (before connecting); a batch
            lacks a column or has a blank id; an id repeats (naming up to `SHOWN_IDS`): nothing was written.
        TagifaiError: connecting or writing failed (nothing was written); the message has no password.
    """
    import psycopg2

    if scored_at.tzinfo is None or scored_at.utcoffset() is None:
        raise BadInputError(f"scored_at {scored_at.isoformat()} has no time zone: pass an aware datetime")
    libpq_url = dsn(database_url)
    # libpq, not SQLAlchemy, parses the URL: the same URLs work as with psql.
    engine = sa.create_engine(
        "postgresql+psycopg2://",
        creator=lambda: psycopg2.connect(libpq_url, connect_timeout=CONNECT_TIMEOUT_SECONDS),
        poolclass=sa.pool.NullPool,
    )
    connection, failure = None, None
    try:
        with engine.connect() as connection, connection.begin():
            STAGED.create(connection)
            copy(connection, batches)
            if refused := repeated_ids(connection):
                raise refused
            # Writers take turns (held until commit): two first scorings would race to create the table,
            # and two scorings of the same version would wait on each other's rows. Taken only now: the
            # scoring before it runs beside other writers.
            connection.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext("tagifai.predictions"))))
            METADATA.create_all(connection)
            inserted, updated = connection.execute(merge(int(model_version), str(pipeline_run_id), scored_at)).one()
    except (sa.exc.DBAPIError, psycopg2.Error) as exc:
        error = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc  # COPY's errors come from psycopg2 itself
        what = "connect to" if connection is None else "write predictions to"
        failure = f"could not {what} {redact(database_url)}: {type(error).__name__}: {' '.join(str(error).split())}"
    if failure:
        # Raised here, not chained: libpq may quote the URL, password and all, in its own message.
        raise TagifaiError(scrub(failure, database_url))
    return {"inserted": inserted, "updated": updated}


def upsert(
    database_url: str, scored: pd.DataFrame, model_version: int, pipeline_run_id: str, scored_at: datetime
) -> dict[str, int]:
    """Write one scoring held in memory to `predictions`: `write` with one batch, checked before connecting.

    Raises:
        BadInputError: as `write`, and a column missing or an id repeated is refused before connecting.
        TagifaiError: as `write`.
    """
    missing = [c for c in SCORED_COLUMNS if c not in scored.columns]
    if missing:
        raise BadInputError(f"scored rows lack column(s) {', '.join(missing)}")
    ids = scored["id"].astype(str)
    if ids.duplicated().any():
        raise BadInputError(f"scored rows repeat ids {shown(ids[ids.duplicated(keep=False)])}")
    return write(database_url, [scored], model_version, pipeline_run_id, scored_at)
