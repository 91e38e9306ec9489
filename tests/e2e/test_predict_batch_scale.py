"""`tagifai.pipeline.steps.predict_batch` a batch at a time against a real PostgreSQL and a SQLite MLflow store.

The model is a stand-in (the registry's lookup and the model's loading are replaced): what is checked is the
step around it, with `[predict] batch_rows` small so a file of a thousand projects is many batches. Imports
of tagifai's dependencies are inside the tests: the Airflow venv collects this folder too.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness import query, running_postgres, synthetic

pytestmark = [pytest.mark.e2e]

ROWS = 1000
BATCH_ROWS = 64  # 16 batches
VERSION = 3


class KeywordModel:
    """A stand-in pyfunc: `vision` in the text → computer-vision (0.9), else other (0.4)."""

    def __init__(self, other: str = "other") -> None:
        self.other = other

    def predict(self, df):
        import numpy as np
        import pandas as pd

        vision = (df["title"] + " " + df["description"]).str.lower().str.contains("vision")
        return pd.DataFrame(
            {"tag": np.where(vision, "computer-vision", self.other), "probability": np.where(vision, 0.9, 0.4)}
        )


def projects(rows: int = ROWS) -> list[dict[str, str]]:
    """`rows` projects, ids p0…, every third about vision."""
    return [
        {"id": f"p{i}", "title": f"Project {i}" + (" vision" if i % 3 == 0 else ""), "description": f"about, {i}"}
        for i in range(rows)
    ]


def write_csv(path: Path, rows: list[dict[str, str]], tail: str = "") -> Path:
    """`rows` as a projects CSV at `path`, then `tail` as it is (a malformed line, say)."""
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, ["id", "title", "description"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        out.write(tail)
    return path


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    """A throwaway PostgreSQL with a database `tagifai`."""
    with running_postgres("tagifai") as pg:
        yield pg["tagifai"]


@pytest.fixture
def step(server_url, settings, mlflow_store, tmp_path, monkeypatch):
    """`predict_batch` with [predict] batch_rows = BATCH_ROWS, v`VERSION` as `model`, files under tmp_path allowed."""
    from tagifai import model as models
    from tagifai.pipeline import registry, steps

    query(server_url, "DROP TABLE IF EXISTS predictions")
    monkeypatch.setenv("TAGIFAI_DATA_DIRS", str(tmp_path))
    model = SimpleNamespace(current=KeywordModel())
    monkeypatch.setattr(registry, "version_by_alias", lambda client, name, alias: SimpleNamespace(version=VERSION))
    monkeypatch.setattr(models, "load", lambda uri, **kwargs: model.current)
    scaled = synthetic.with_setting(settings, "predict", batch_rows=BATCH_ROWS)

    def run(source: Path):
        return steps.predict_batch(scaled, str(source), "tagifai", "champion", "e2e", server_url)

    run.model = model
    return run


def table(url: str) -> list[tuple]:
    """Every row of `predictions` (but its time), by id."""
    return query(url, "SELECT id, tag, probability, model_version, pipeline_run_id FROM predictions ORDER BY id")


def runs(status: str) -> list:
    """The predict-batch runs of the experiment `e2e` that ended with `status`."""
    import mlflow

    found = mlflow.search_runs(experiment_names=["e2e"], output_format="list")
    return [r for r in found if r.info.status == status and r.data.tags.get("tagifai.step") == "predict-batch"]


def test_every_batch_is_written_once_and_the_whole_file_logged(step, server_url, tmp_path):
    import mlflow
    import pandas as pd

    from tagifai.core import data
    from tagifai.pipeline import predictions

    source = write_csv(tmp_path / "projects.csv", projects())
    first = step(source)
    expected = predictions.score(KeywordModel(), pd.DataFrame(projects()))
    assert {k: first[k] for k in ("rows", "batches", "inserted", "updated")} == {
        "rows": ROWS,
        "batches": -(-ROWS // BATCH_ROWS),
        "inserted": ROWS,
        "updated": 0,
    }
    assert first["counts"] == predictions.counts(expected) == {"other": 666, "computer-vision": 334}
    run = mlflow.get_run(first["run_id"])
    assert run.data.metrics["rows"] == ROWS and run.data.metrics["batches"] == 16
    assert run.data.metrics["tag_computer-vision"] == 334
    logged = mlflow.artifacts.download_artifacts(run_id=first["run_id"], artifact_path="predictions/predictions.csv")
    assert Path(logged).read_bytes() == data.to_csv_bytes(expected)
    assert len(table(server_url)) == ROWS
    # The same file again: nothing inserted; every row dated anew by the second run (the monitor's window).
    second = step(source)
    assert (second["inserted"], second["updated"]) == (0, ROWS)
    pipeline_runs = {row[4] for row in table(server_url)}
    assert pipeline_runs == {mlflow.get_run(second["run_id"]).data.tags["pipeline_run_id"]}
    json.dumps(second)  # the CLI prints it


def rescored_with_a_bad_tail(step, server_url, tmp_path, tail: str, rows: list[dict[str, str]] | None = None):
    """Score the good file, then (another model) the same projects with `tail` late in the file: the error."""
    from tagifai.contract.errors import BadInputError

    step(write_csv(tmp_path / "good.csv", projects()))
    before = table(server_url)
    step.model.current = KeywordModel(other="mlops")  # would change 666 rows
    with pytest.raises(BadInputError) as raised:
        step(write_csv(tmp_path / "bad.csv", rows or projects(), tail))
    assert table(server_url) == before  # not one of the batches before the bad row was kept
    assert len(runs("FAILED")) == 1
    return str(raised.value)


def test_a_row_the_parser_cannot_read_in_the_last_batch_leaves_the_table_as_it_was(step, server_url, tmp_path):
    message = rescored_with_a_bad_tail(step, server_url, tmp_path, 'p1000,"a, b",c,d,e\n')
    assert message.startswith(f"projects ({tmp_path / 'bad.csv'}) is not a readable CSV file: Error tokenizing data")


def test_ids_repeated_across_batches_are_refused_by_name(step, server_url, tmp_path):
    # p3 and p700 again in the last batch: no batch alone repeats an id
    message = rescored_with_a_bad_tail(step, server_url, tmp_path, "p700,again,x\np3,again,y\n")
    assert message == "projects repeat ids p3, p700: each id may appear once"


def test_a_blank_id_in_a_late_batch_is_refused_by_its_row(step, server_url, tmp_path):
    rows = projects()
    rows[990]["id"] = "  "
    message = rescored_with_a_bad_tail(step, server_url, tmp_path, "", rows)
    assert message == "projects have 1 blank id(s), at rows 990: every project needs an id"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"id,title\n1,caf\xe9\n", "is not valid UTF-8 (byte 14: b'\\xe9')"),
        (b"id,name\n1,a\n", "is missing column(s) title (has: id, name)"),
        (b"id,title\n", "has a header but no rows"),
    ],
)
def test_a_bad_file_is_refused_before_a_run_starts(step, server_url, tmp_path, content, message):
    from tagifai.contract.errors import BadInputError

    source = tmp_path / "projects.csv"
    source.write_bytes(content)
    with pytest.raises(BadInputError) as raised:
        step(source)
    assert str(raised.value) == f"projects ({source}) {message}"
    assert runs("FAILED") == [] and runs("FINISHED") == []
    assert query(server_url, "SELECT to_regclass('predictions') IS NULL") == [(True,)]
