"""Batch scoring: the champion's tag for every project, kept in PostgreSQL for people to query.

`score` and `counts` are pure; `upsert` writes one scoring to the table `predictions` (SQLAlchemy Core)
in one transaction, idempotently per (project id, model version), so a retried task changes nothing twice:

    psql "$DATABASE_URL" -c "SELECT tag, count(*) FROM predictions WHERE model_version = 3 GROUP BY tag"
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from tagifai.contract.errors import BadInputError, TagifaiError
from tagifai.contract.sources import redact

REQUIRED_COLUMNS = ("id", "title")
SCORED_COLUMNS = ("id", "tag", "probability")
# How many offending ids an error names.
SHOWN_IDS = 5
# Rows per INSERT statement (all of them in one transaction).
PAGE_SIZE = 500
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


def score(model: Any, projects: pd.DataFrame) -> pd.DataFrame:
    """Tag each project with `model`.

    Args:
        model: anything with `predict(frame)` taking `title`/`description` and returning `tag` and
            `probability` per row, like a loaded MLflow pyfunc of `tagifai.model.TagifaiModel`.
        projects: `id`, `title` and optionally `description` (other columns are ignored).

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
    predicted = pd.DataFrame(model.predict(frame))
    lacking = [c for c in ("tag", "probability") if c not in predicted.columns]
    if lacking or len(predicted) != len(projects):
        raise TagifaiError(
            f"the model returned {len(predicted)} rows with columns {', '.join(map(str, predicted.columns))} "
            f"for {len(projects)} projects: expected one row each with tag and probability"
        )
    tags, probabilities = predicted["tag"].astype(str).to_numpy(), predicted["probability"].astype(float).to_numpy()
    return pd.DataFrame({"id": ids.to_numpy(), "tag": tags, "probability": probabilities})


def counts(scored: pd.DataFrame) -> dict[str, int]:
    """Rows per tag, most frequent first (ties by tag)."""
    tally = scored["tag"].value_counts()
    return {str(tag): int(n) for tag, n in sorted(tally.items(), key=lambda item: (-item[1], str(item[0])))}


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


def rows(scored: pd.DataFrame, model_version: int, pipeline_run_id: str, scored_at: datetime) -> list[tuple]:
    """The table rows of a scoring, as plain Python values."""
    columns = zip(scored["id"].tolist(), scored["tag"].tolist(), scored["probability"].tolist(), strict=True)
    return [(str(i), tag, probability, model_version, pipeline_run_id, scored_at) for i, tag, probability in columns]


def upsert(
    database_url: str, scored: pd.DataFrame, model_version: int, pipeline_run_id: str, scored_at: datetime
) -> dict[str, int]:
    """Write a scoring to the table `predictions` (created if missing) in one transaction.

    A row already there for the same (id, model_version) is updated, so writing the same scoring
    twice leaves one row per project and version. Either every row is written or none is.
    `database_url` is `postgresql://…` or `postgresql+psycopg2://…`; `scored_at` has a time zone.

    Returns:
        `inserted` (new rows) and `updated` (rows that were there for this version).

    Raises:
        BadInputError: the URL is not PostgreSQL, or the table cannot hold the scoring as one row per id
            (a column is missing, an id repeats, `scored_at` has no time zone): refused before connecting.
        TagifaiError: connecting or writing failed (nothing was written); the message has no password.
    """
    import psycopg2

    missing = [c for c in SCORED_COLUMNS if c not in scored.columns]
    if missing:
        raise BadInputError(f"scored rows lack column(s) {', '.join(missing)}")
    ids = scored["id"].astype(str)
    if ids.duplicated().any():
        raise BadInputError(f"scored rows repeat ids {shown(ids[ids.duplicated(keep=False)])}")
    if scored_at.tzinfo is None or scored_at.utcoffset() is None:
        raise BadInputError(f"scored_at {scored_at.isoformat()} has no time zone: pass an aware datetime")
    values = rows(scored, int(model_version), str(pipeline_run_id), scored_at)
    libpq_url = dsn(database_url)
    # libpq, not SQLAlchemy, parses the URL: the same URLs work as with psql.
    engine = sa.create_engine(
        "postgresql+psycopg2://",
        creator=lambda: psycopg2.connect(libpq_url, connect_timeout=CONNECT_TIMEOUT_SECONDS),
        poolclass=sa.pool.NullPool,
    )
    connection, inserted, failure = None, [], None
    try:
        with engine.connect() as connection, connection.begin():
            # Writers take turns (held until commit): two first scorings would race to create the
            # table, and two scorings of the same version would wait on each other's rows.
            connection.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext("tagifai.predictions"))))
            METADATA.create_all(connection)
            for start in range(0, len(values), PAGE_SIZE):
                statement = insert(PREDICTIONS).values(values[start : start + PAGE_SIZE])
                statement = statement.on_conflict_do_update(
                    index_elements=PREDICTIONS.primary_key.columns,
                    set_={c.name: statement.excluded[c.name] for c in PREDICTIONS.c if not c.primary_key},
                ).returning(sa.literal_column("xmax") == 0)  # true for a row inserted here, false for one updated
                inserted += connection.execute(statement).scalars().all()
    except sa.exc.DBAPIError as exc:
        what = "connect to" if connection is None else "write predictions to"
        failure = (
            f"could not {what} {redact(database_url)}: {type(exc.orig).__name__}: {' '.join(str(exc.orig).split())}"
        )
    if failure:
        # Raised here, not chained: libpq may quote the URL, password and all, in its own message.
        raise TagifaiError(scrub(failure, database_url))
    return {"inserted": sum(inserted), "updated": len(inserted) - sum(inserted)}
