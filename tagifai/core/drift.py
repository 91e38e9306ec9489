"""Drift: whether what the champion sees and answers now is still what it was made for.

Pure: frames in, a verdict (a plain dict) and Evidently's HTML report out; `tagifai.pipeline.monitor` reads
the frames from MLflow and PostgreSQL and logs what comes out.

The reference is the champion's own held-out data (the val and test splits of the data it was trained on)
with its own predictions on it: its predictions on rows it was fitted on are more confident than on any
new row (a real champion: mean top-class probability 0.98 on its train split, 0.88 on val and test), so
they would make every window look drifted. For the same reason, window rows the champion was trained on
are left out before judging (the caller finds them: served rows by their text, batch rows by project id).

Two sources are judged, each alone, when the window holds at least `[monitor] min_rows` of its rows:

- served requests (the inference log): the predicted tag, its probability, and what the text is like: its
  length in characters and in words, the share of its words no training project used, and the share of its
  character 4-grams no training project had (`text_features`; the vocabulary is the train split's, so the
  held-out reference is measured as fairly as new text);
- batch predictions (the `predictions` table): the predicted tag and its probability.

Each column is compared with the reference by Evidently's `ValueDrift` at significance `drift_alpha`:
Kolmogorov-Smirnov for numbers, a chi-square test of homogeneity (two samples; Evidently's own `chisquare`
treats the reference's shares as exact) for the tag. A source drifted when Evidently's `DriftedColumnsCount`
test fails (at least `drift_share` of its columns drifted) or its `InRangeValueCount` test fails (the share
of predictions below `low_confidence` rose by more than `max_low_confidence_rise` over the reference's).
The window drifted when a judged source did; with no source to judge, nothing is judged (`drifted` None).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tagifai.contract.errors import BadInputError
from tagifai.contract.settings import Monitor
from tagifai.core.data import compose_text

# The sources a window holds: their name in the verdict, how a message names them, the columns they bring.
SERVED, BATCH = "served", "batch"
LABELS = {SERVED: "served requests", BATCH: "batch predictions"}
PREDICTION_COLUMNS = ("tag", "probability")
TEXT_COLUMNS = ("title", "description")
# What `text_features` measures of a text, in the report.
TEXT_FEATURES = ("text_chars", "text_words", "unseen_words", "unseen_char_4grams")
NGRAM = 4
# The report's columns of each source (batch predictions' carry a prefix: both sources are in one report).
COLUMNS = {
    SERVED: {"categorical": ["tag"], "numerical": ["probability", *TEXT_FEATURES]},
    BATCH: {"categorical": ["batch_tag"], "numerical": ["batch_probability"]},
}
PROBABILITY = {SERVED: "probability", BATCH: "batch_probability"}
# Evidently's name of the two-sample chi-square test this module registers (`homogeneity_test`).
HOMOGENEITY = "tagifai_chi2_homogeneity"
NUMERICAL_TEST = "ks"

_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class Vocabulary:
    """The words and character 4-grams of the champion's training texts."""

    words: frozenset[str]
    ngrams: frozenset[str]


# ---- what a text is like ----------------------------------------------------------------------------------


def normalized(frame: pd.DataFrame) -> list[str]:
    """Each row's `title description`, lowercased, whitespace collapsed."""
    return [" ".join(text.lower().split()) for text in compose_text(frame)]


def ngrams(text: str) -> list[str]:
    """The character `NGRAM`-grams of `text`, in order, repeats kept."""
    return [text[i : i + NGRAM] for i in range(len(text) - NGRAM + 1)]


def vocabulary(training: pd.DataFrame) -> Vocabulary:
    """The words and character 4-grams of the training texts (`title`, `description`)."""
    words: set[str] = set()
    grams: set[str] = set()
    for text in normalized(training):
        words.update(_WORD.findall(text))
        grams.update(ngrams(text))
    return Vocabulary(frozenset(words), frozenset(grams))


def unseen_share(items: list[str], known: frozenset[str]) -> float:
    """The share of `items` not in `known` (no items: 0)."""
    return sum(item not in known for item in items) / len(items) if items else 0.0


def text_features(frame: pd.DataFrame, known: Vocabulary) -> pd.DataFrame:
    """Per row: length in characters and words, and the shares of its words and 4-grams `known` lacks.

    Args:
        frame: `title` and `description` (missing parts count as empty).
        known: the training texts' vocabulary.

    Returns:
        The `TEXT_FEATURES` columns, one row per row of `frame` (same index).
    """
    rows = []
    for text in normalized(frame):
        words = _WORD.findall(text)
        rows.append((len(text), len(words), unseen_share(words, known.words), unseen_share(ngrams(text), known.ngrams)))
    return pd.DataFrame(rows, columns=list(TEXT_FEATURES), index=frame.index, dtype=float)


def seen_in_training(frame: pd.DataFrame, training: pd.DataFrame) -> pd.Series:
    """Whether each row's text (title and description, case and spacing aside) is a training project's."""
    texts = set(normalized(training))
    return pd.Series([text in texts for text in normalized(frame)], index=frame.index, dtype=bool)


# ---- the report -------------------------------------------------------------------------------------------


def homogeneity_test() -> str:
    """Register (once) and name a two-sample chi-square test of homogeneity for Evidently's categorical drift.

    Evidently's `chisquare` is a goodness-of-fit test against the reference's shares taken as exact: with a
    reference of a few hundred rows and a window of thousands, sampling noise alone makes it reject.
    """
    from evidently.legacy.calculations.stattests.registry import StatTest, _registered_stat_tests, register_stattest
    from evidently.legacy.core import ColumnType
    from scipy.stats import chi2_contingency

    if HOMOGENEITY not in _registered_stat_tests:

        def test(reference: pd.Series, current: pd.Series, feature_type: Any, threshold: float) -> tuple[float, bool]:
            keys = sorted(set(reference.dropna()) | set(current.dropna()), key=str)
            table = np.array([[int((sample == key).sum()) for key in keys] for sample in (reference, current)])
            p_value = 1.0 if len(keys) < 2 else float(chi2_contingency(table)[1])
            return p_value, p_value < threshold

        stattest = StatTest(
            name=HOMOGENEITY,
            display_name="chi-square test of homogeneity p_value",
            allowed_feature_types=[ColumnType.Categorical],
        )
        register_stattest(stattest, default_impl=test)
    return HOMOGENEITY


def report_frames(
    reference: pd.DataFrame, sources: dict[str, pd.DataFrame], known: Vocabulary
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The reference and current frames of the report: the judged sources' columns, one row per source row.

    The reference gives every source's columns (a batch column is the same prediction as the served one); a
    current row only its own source's, the rest empty (Evidently leaves empty cells out of each column).
    """
    ref_parts, current_parts = [], []
    if SERVED in sources:
        served = sources[SERVED]
        ref_parts.append(pd.concat([reference[list(PREDICTION_COLUMNS)], text_features(reference, known)], axis=1))
        current_parts.append(
            pd.concat([served[list(PREDICTION_COLUMNS)], text_features(served, known)], axis=1).reset_index(drop=True)
        )
    if BATCH in sources:
        ref_parts.append(reference[list(PREDICTION_COLUMNS)].add_prefix("batch_"))
        current_parts.append(sources[BATCH][list(PREDICTION_COLUMNS)].add_prefix("batch_").reset_index(drop=True))
    reference_frame = pd.concat([part.reset_index(drop=True) for part in ref_parts], axis=1)
    current_frame = pd.concat(current_parts, axis=0, ignore_index=True)[list(reference_frame.columns)]
    for frame in (reference_frame, current_frame):
        for name in frame.columns:
            frame[name] = frame[name].astype(object if name in ("tag", "batch_tag") else float)
    return reference_frame, current_frame


def below(value: float) -> float:
    """The largest float below `value`: Evidently's ranges include their ends, "below" does not."""
    return float(np.nextafter(value, -math.inf))


def run_report(
    reference: pd.DataFrame, current: pd.DataFrame, judged: list[str], settings: Monitor
) -> tuple[dict[str, Any], str]:
    """Run Evidently on the frames; return each judged source's results (from its metrics and tests) and the HTML."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import DriftedColumnsCount, InRangeValueCount, ValueDrift
    from evidently.tests import Reference, lt, lte

    categorical = homogeneity_test()
    columns = {source: COLUMNS[source]["categorical"] + COLUMNS[source]["numerical"] for source in judged}
    method = {name: categorical for source in judged for name in COLUMNS[source]["categorical"]}
    method |= {name: NUMERICAL_TEST for source in judged for name in COLUMNS[source]["numerical"]}
    counts = {
        source: DriftedColumnsCount(
            columns=columns[source],
            drift_share=settings.drift_share,
            per_column_method=method,
            threshold=settings.drift_alpha,
            share_tests=[lt(settings.drift_share)],
        )
        for source in judged
    }
    low = {
        source: InRangeValueCount(
            column=PROBABILITY[source],
            left=0.0,
            right=below(settings.low_confidence),
            share_tests=[lte(Reference(absolute=settings.max_low_confidence_rise))],
        )
        for source in judged
    }
    drifts = {name: ValueDrift(column=name, method=method[name], threshold=settings.drift_alpha) for name in method}
    metrics = [m for source in judged for m in (counts[source], low[source])] + list(drifts.values())
    definition = DataDefinition(
        categorical_columns=[n for s in judged for n in COLUMNS[s]["categorical"]],
        numerical_columns=[n for s in judged for n in COLUMNS[s]["numerical"]],
    )
    with warnings.catch_warnings():  # its correlations of a constant column (nothing unseen anywhere) divide by 0
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = Report(metrics, include_tests=True).run(
            Dataset.from_pandas(current, data_definition=definition),
            Dataset.from_pandas(reference, data_definition=definition),
        )
    values = {item["id"]: item["value"] for item in snapshot.dict()["metrics"]}
    passed = {test.metric_config.metric_id: test.status.value == "SUCCESS" for test in snapshot.tests_results}
    results = {}
    for source in judged:
        share_id, low_id = counts[source].metric_id, low[source].metric_id
        results[source] = {
            "columns": {
                name: {"p_value": float(values[drifts[name].metric_id]), "drifted": not passed[drifts[name].metric_id]}
                for name in columns[source]
            },
            "drifted_columns": int(values[share_id]["count"]),
            "drifted_share": float(values[share_id]["share"]),
            "columns_test_passed": passed[share_id],
            "low_confidence_share": float(values[low_id]["share"]),
            "low_confidence_test_passed": passed[low_id],
        }
    return results, snapshot.get_html_str(as_iframe=False)


# ---- the verdict ------------------------------------------------------------------------------------------


def shares(tags: pd.Series) -> dict[str, float]:
    """Each tag's share, largest first (ties by tag), rounded to 4 decimals."""
    counted = tags.astype(str).value_counts(normalize=True)
    return {str(t): round(float(s), 4) for t, s in sorted(counted.items(), key=lambda item: (-item[1], str(item[0])))}


def columns_reason(label: str, result: dict[str, Any], settings: Monitor) -> str:
    """`served requests: 5 of 6 columns drifted (83% >= 50%): tag (p 1.2e-30), ...`."""
    drifted = [f"{name} (p {v['p_value']:.2g})" for name, v in result["columns"].items() if v["drifted"]]
    total, share = len(result["columns"]), result["drifted_share"]
    relation = ">=" if not result["columns_test_passed"] else "<"
    listed = f": {', '.join(drifted)}" if drifted else ""
    return (
        f"{label}: {result['drifted_columns']} of {total} columns drifted at alpha {settings.drift_alpha:g} "
        f"({share:.0%} {relation} {settings.drift_share:.0%}){listed}"
    )


def confidence_reason(label: str, result: dict[str, Any], settings: Monitor) -> str:
    """`served requests: low-confidence share 0.62 vs 0.03 in the reference (+0.59 > 0.20)`."""
    now, then = result["low_confidence_share"], result["reference_low_confidence_share"]
    relation = ">" if not result["low_confidence_test_passed"] else "<="
    return (
        f"{label}: share of predictions below {settings.low_confidence:g} is {now:.2f} vs {then:.2f} in the "
        f"reference ({now - then:+.2f} {relation} {settings.max_low_confidence_rise:+.2f})"
    )


def require_columns(frame: pd.DataFrame, name: str, needed: Iterable[str]) -> None:
    """Refuse a frame that lacks a column.

    Raises:
        BadInputError: a column is missing.
    """
    if missing := [c for c in needed if c not in frame.columns]:
        have = ", ".join(map(str, frame.columns)) or "none"
        raise BadInputError(f"{name}: missing column(s) {', '.join(missing)} (have: {have})")


def judge(
    reference: pd.DataFrame,
    training: pd.DataFrame,
    served: pd.DataFrame,
    batch: pd.DataFrame,
    settings: Monitor,
) -> tuple[dict[str, Any], str | None]:
    """Judge a window against the champion's reference: the verdict, and Evidently's HTML report.

    Args:
        reference: the champion's held-out rows (`title`, `description`) and its predictions on them (`tag`,
            `probability`).
        training: the rows the champion was trained on (`title`, `description`): its vocabulary.
        served: the window's served rows (`title`, `description`, `tag`, `probability`), none it was trained on.
        batch: the window's batch predictions (`tag`, `probability`), none of a project it was trained on.
        settings: `[monitor]`.

    Returns:
        The verdict and the report's HTML (None when nothing was judged). The verdict: `drifted` (True,
        False, or None when no source had `min_rows` rows), `status` ("drift", "no drift", "insufficient"),
        `reasons` (sentences), `rows` per source and of the reference, `tag_shares` per source and of the
        reference, the reference's low-confidence share, `sources` (per judged source: its figures, each
        column's p-value, and whether it drifted) and the `settings` it judged with.

    Raises:
        BadInputError: a frame lacks a column, or the reference has no rows.
    """
    require_columns(reference, "the reference", (*TEXT_COLUMNS, *PREDICTION_COLUMNS))
    require_columns(training, "the training rows", TEXT_COLUMNS)
    require_columns(served, "the served rows", (*TEXT_COLUMNS, *PREDICTION_COLUMNS))
    require_columns(batch, "the batch predictions", PREDICTION_COLUMNS)
    if reference.empty:
        raise BadInputError("the reference has no rows: the champion's val and test splits are empty")
    rows = {"reference": len(reference), SERVED: len(served), BATCH: len(batch)}
    reference_low = float((reference["probability"].astype(float) < settings.low_confidence).mean())
    verdict: dict[str, Any] = {
        "drifted": None,
        "status": "insufficient",
        "reasons": [],
        "rows": rows,
        "tag_shares": {"reference": shares(reference["tag"])}
        | {source: shares(frame["tag"]) for source, frame in ((SERVED, served), (BATCH, batch)) if len(frame)},
        "reference_low_confidence_share": round(reference_low, 4),
        "sources": {},
        "settings": settings.model_dump(
            include={"min_rows", "low_confidence", "drift_alpha", "drift_share", "max_low_confidence_rise"}
        ),
    }
    sources = {source: frame for source, frame in ((SERVED, served), (BATCH, batch)) if len(frame) >= settings.min_rows}
    short = [f"{LABELS[s]} ({rows[s]} < {settings.min_rows})" for s in (SERVED, BATCH) if s not in sources]
    if not sources:
        verdict["reasons"] = [f"too few rows: {' and '.join(short)}; judged nothing"]
        return verdict, None
    known = vocabulary(training)
    ref_frame, current = report_frames(reference.reset_index(drop=True), sources, known)
    results, html = run_report(ref_frame, current, list(sources), settings)
    reasons = []
    for source, result in results.items():
        result["rows"] = rows[source]
        result["reference_low_confidence_share"] = round(reference_low, 4)
        result["drifted"] = not (result["columns_test_passed"] and result["low_confidence_test_passed"])
        reasons += [
            columns_reason(LABELS[source], result, settings),
            confidence_reason(LABELS[source], result, settings),
        ]
    if short:
        reasons.append(f"too few rows, not judged: {' and '.join(short)}")
    drifted = any(result["drifted"] for result in results.values())
    verdict |= {
        "drifted": drifted,
        "status": "drift" if drifted else "no drift",
        "reasons": reasons,
        "sources": results,
    }
    return verdict, html
