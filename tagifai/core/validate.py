"""The data contract and drift checks on labeled projects. Pure: frames in, a report dict out."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.dummy import DummyClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import f1_score, make_scorer
from sklearn.model_selection import StratifiedKFold, cross_val_score, permutation_test_score

from tagifai.contract.settings import Data, Settings, Validate
from tagifai.core.data import PROJECT_COLUMNS, compose_text, model_labels

REQUIRED_COLUMNS = (*PROJECT_COLUMNS, "tag")
INTEGER = re.compile(r"^\s*-?\d+\s*$")


def check(name: str, passed: bool, detail: str) -> dict[str, Any]:
    """Return one check's result."""
    return {"name": name, "passed": bool(passed), "detail": detail}


def preview(values: list[Any], limit: int = 5) -> str:
    """Show up to `limit` values, with an ellipsis when there are more."""
    shown = ", ".join(repr(v) if isinstance(v, str) else str(v) for v in values[:limit])
    return shown + (", …" if len(values) > limit else "")


def check_columns(df: pd.DataFrame) -> dict[str, Any]:
    """Every required column is present."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    return check("required_columns", not missing, f"missing: {', '.join(missing)}" if missing else "all present")


def check_dtypes(df: pd.DataFrame) -> dict[str, Any]:
    """`id` holds integers; text columns hold strings."""
    ids = df["id"].astype(str)
    bad_ids = ids[~ids.str.match(INTEGER) & (ids.str.strip() != "")].tolist()
    non_text = [
        c for c in ("title", "description", "tag") if not df[c].map(lambda v: isinstance(v, str) or pd.isna(v)).all()
    ]
    problems = [f"{len(bad_ids)} non-integer id(s): {preview(bad_ids)}"] if bad_ids else []
    problems += [f"non-text values in {', '.join(non_text)}"] if non_text else []
    return check("dtypes", not problems, "; ".join(problems) or "id integer, text columns strings")


def check_ids(df: pd.DataFrame) -> dict[str, Any]:
    """Ids are present and unique."""
    ids = df["id"].astype(str).str.strip()
    blank = int((ids == "").sum() + df["id"].isna().sum())
    duplicated = sorted(ids[ids.duplicated() & (ids != "")].unique().tolist())
    problems = [f"{blank} missing id(s)"] if blank else []
    problems += [f"{len(duplicated)} duplicated id(s): {preview(duplicated)}"] if duplicated else []
    return check("unique_ids", not problems, "; ".join(problems) or f"{len(ids)} unique ids")


def check_text(df: pd.DataFrame) -> dict[str, Any]:
    """Every project has a non-blank title + description."""
    blank = df.loc[compose_text(df) == "", "id"].tolist()
    return check(
        "non_blank_text",
        not blank,
        f"{len(blank)} project(s) with blank text, ids: {preview(blank)}" if blank else "no blank text",
    )


def check_tags(df: pd.DataFrame, known_tags: list[str]) -> dict[str, Any]:
    """Every tag is one the contract knows."""
    unknown = sorted(set(df["tag"].fillna("").astype(str)) - set(known_tags))
    return check("known_tags", not unknown, f"unknown tag(s): {preview(unknown)}" if unknown else "all tags known")


def check_size(df: pd.DataFrame, data_settings: Data, validate_settings: Validate) -> list[dict[str, Any]]:
    """Enough rows overall, and enough classes with enough rows each, for a stratified split."""
    min_rows, min_classes = validate_settings.min_rows, validate_settings.min_classes
    counts = model_labels(df["tag"], data_settings).value_counts()
    thin = bool((counts < validate_settings.min_rows_per_class).any())
    class_detail = f"{len(counts)} class(es): " + ", ".join(f"{tag}={n}" for tag, n in counts.items())
    if len(counts) < min_classes:
        class_detail = f"only {class_detail}; need at least {min_classes}"
    elif thin:
        class_detail = f"{class_detail}; need at least {validate_settings.min_rows_per_class} rows in every class"
    return [
        check("enough_rows", len(df) >= min_rows, f"{len(df)} rows (minimum {min_rows})"),
        check("enough_classes", len(counts) >= min_classes and not thin, class_detail),
    ]


def check_signal(df: pd.DataFrame, data_settings: Data, validate_settings: Validate) -> dict[str, Any]:
    """The labels can be learned from the text: a quick linear model beats chance by `signal_min_lift`.

    Macro f1 of TF-IDF words + a linear SGD classifier, by stratified k-fold cross-validation, must
    exceed both the majority-class baseline and the best of the same model on `signal_permutations`
    random permutations of the labels (seeded by `[data] seed`) by `signal_min_lift`: labels
    shuffled against their projects score like the permutations and fail.
    """
    labels = model_labels(df["tag"], data_settings).to_numpy()
    folds = min(validate_settings.signal_folds, int(pd.Series(labels).value_counts().min()))
    cv = StratifiedKFold(folds, shuffle=True, random_state=data_settings.seed)
    scorer = make_scorer(f1_score, average="macro", pos_label=None, zero_division=0)
    # Unsupervised, so fitting it on every row leaks no label into the folds.
    features = TfidfVectorizer(max_features=5000, sublinear_tf=True).fit_transform(compose_text(df))
    model = SGDClassifier(random_state=data_settings.seed)
    score, permuted, _ = permutation_test_score(
        model, features, labels, cv=cv, n_permutations=validate_settings.signal_permutations,
        scoring=scorer, random_state=data_settings.seed,
    )  # fmt: skip
    baseline = float(np.mean(cross_val_score(DummyClassifier(), features, labels, cv=cv, scoring=scorer)))
    chance, lift = max(baseline, float(np.max(permuted))), validate_settings.signal_min_lift
    detail = (
        f"macro f1 {score:.3f} by {folds}-fold cross-validation vs {baseline:.3f} for the majority class and "
        f"{np.max(permuted):.3f} on permuted labels (best of {len(permuted)})"
    )
    passed = score >= chance + lift
    if not passed:
        detail += f"; less than {lift:g} above both: the labels do not follow the text (shuffled, or wrong ids?)"
    return check("label_signal", passed, detail)


def profile(df: pd.DataFrame, data_settings: Data) -> dict[str, Any]:
    """Summarise the data for drift checks: label counts and text lengths (words)."""
    labels = model_labels(df["tag"], data_settings)
    return {
        "rows": len(df),
        "label_counts": {str(k): int(v) for k, v in labels.value_counts().sort_index().items()},
        "text_lengths": compose_text(df).str.split().str.len().astype(int).tolist(),
    }


def drift_checks(current: dict[str, Any], reference: dict[str, Any], alpha: float) -> list[dict[str, Any]]:
    """Compare two profiles: chi-square on the label distribution, KS on text length.

    Both p-values are held to `alpha / 2` (Bonferroni correction for the two tests).
    """
    threshold = alpha / 2
    labels = sorted(set(current["label_counts"]) | set(reference["label_counts"]))
    table = [[current["label_counts"].get(t, 0) for t in labels], [reference["label_counts"].get(t, 0) for t in labels]]
    label_p = float(stats.chi2_contingency(table).pvalue) if len(labels) > 1 else 1.0
    length_p = float(stats.ks_2samp(current["text_lengths"], reference["text_lengths"]).pvalue)
    return [
        check(
            "label_drift",
            label_p >= threshold,
            f"chi-square p={label_p:.4g} (Bonferroni threshold {threshold:.4g}); "
            + ", ".join(f"{t}: {a}→{b}" for t, a, b in zip(labels, table[1], table[0], strict=True)),
        ),
        check(
            "text_length_drift",
            length_p >= threshold,
            f"KS p={length_p:.4g} (Bonferroni threshold {threshold:.4g}); median words "
            f"{pd.Series(reference['text_lengths']).median():g}→{pd.Series(current['text_lengths']).median():g}",
        ),
    ]


def validate(
    df: pd.DataFrame, settings: Settings, reference: dict[str, Any] | None = None, drift_blocks: bool = True
) -> dict[str, Any]:
    """Run the data contract (and drift checks when a reference profile is given).

    Args:
        df: labeled projects as produced by `elt`.
        settings: all settings (`data` and `validate` sections are used).
        reference: the profile of the last validated data, if any.
        drift_blocks: whether drift fails validation (otherwise it is reported as a warning).

    Returns:
        A report: `passed`, the list of `checks`, the data `profile`.
    """
    columns = check_columns(df)
    if not columns["passed"]:
        return {"passed": False, "checks": [columns], "profile": None}
    checks = [
        columns,
        check_dtypes(df),
        check_ids(df),
        check_text(df),
        check_tags(df, settings.data.known_tags),
        *check_size(df, settings.data, settings.validation),
    ]
    if settings.validation.signal_check and all(c["passed"] for c in checks):  # it needs clean, sizable data
        checks.append(check_signal(df, settings.data, settings.validation))
    current = profile(df, settings.data)
    if reference is not None:
        drift = drift_checks(current, reference, settings.validation.drift_alpha)
        checks += [{**c, "blocking": drift_blocks} for c in drift]
    passed = all(c["passed"] or not c.get("blocking", True) for c in checks)
    return {"passed": passed, "checks": checks, "profile": current}


def failed_checks(report: dict[str, Any]) -> list[str]:
    """Return "name: detail" for each failed check."""
    return [f"{c['name']}: {c['detail']}" for c in report["checks"] if not c["passed"] and c.get("blocking", True)]


def render_markdown(report: dict[str, Any], title: str = "Data validation report") -> str:
    """Render a report as a markdown page for people."""
    verdict = "PASSED" if report["passed"] else "FAILED"
    lines = [f"# {title}", "", f"**{verdict}**", "", "| check | result | detail |", "| --- | --- | --- |"]
    for c in report["checks"]:
        detail = c["detail"].replace("|", "\\|")
        result = "pass" if c["passed"] else ("**FAIL**" if c.get("blocking", True) else "warn (allowed)")
        lines.append(f"| {c['name']} | {result} | {detail} |")
    if report.get("profile"):
        lines += ["", f"Rows: {report['profile']['rows']}", "", "| label | rows |", "| --- | --- |"]
        lines += [f"| {tag} | {n} |" for tag, n in report["profile"]["label_counts"].items()]
    if report.get("reference_run_id"):
        lines += ["", f"Drift reference: run `{report['reference_run_id']}`"]
    return "\n".join(lines) + "\n"
