"""The data contract: each bad input fails the check named after it; good data passes."""

import numpy as np
import pandas as pd
import pytest

from harness import synthetic
from harness.synthetic import REAL_DATA
from tagifai.contract.config import load_settings
from tagifai.core import data, validate


def labeled(per_tag: int = 30) -> pd.DataFrame:
    from harness import synthetic

    projects, tags = synthetic.make_projects(per_tag)
    frame = pd.DataFrame(projects).astype({"id": str}).merge(pd.DataFrame(tags).astype({"id": str}), on="id")
    return frame[["id", "created_on", "title", "description", "tag"]]


def failed(report):
    return {c["name"]: c["detail"] for c in report["checks"] if not c["passed"]}


def shuffled(df: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """`df` with its tags dealt out again at random: the same label counts, no link to the text."""
    return df.assign(tag=np.random.default_rng(seed).permutation(df["tag"].to_numpy()))


def test_synthetic_data_passes(settings):
    report = validate.validate(labeled(), settings)
    assert report["passed"], failed(report)
    assert "label_signal" in {c["name"] for c in report["checks"]}
    assert report["profile"]["label_counts"] == {
        "computer-vision": 30,
        "mlops": 30,
        "natural-language-processing": 30,
        "other": 30,
    }


def break_duplicate_ids(df):
    df.loc[1, "id"] = df.loc[0, "id"]
    df.loc[3, "id"] = df.loc[2, "id"]


def break_missing_id(df):
    df.loc[4, "id"] = ""


def break_non_integer_id(df):
    df.loc[5, "id"] = "abc"


def break_blank_text(df):
    df.loc[[6, 7], ["title", "description"]] = "  "


def break_unknown_tag(df):
    df.loc[8, "tag"] = "computer vision"


@pytest.mark.parametrize(
    ("breakage", "check", "detail"),
    [
        (break_duplicate_ids, "unique_ids", "2 duplicated id(s)"),
        (break_missing_id, "unique_ids", "1 missing id(s)"),
        (break_non_integer_id, "dtypes", "1 non-integer id(s): 'abc'"),
        (break_blank_text, "non_blank_text", "2 project(s) with blank text"),
        (break_unknown_tag, "known_tags", "unknown tag(s): 'computer vision'"),
    ],
)
def test_each_breakage_fails_its_check(settings, breakage, check, detail):
    df = labeled()
    breakage(df)
    report = validate.validate(df, settings)
    assert not report["passed"]
    assert check in failed(report) and detail in failed(report)[check]
    assert any(line.startswith(f"{check}: ") for line in validate.failed_checks(report))


def test_missing_column_is_the_only_check_reported(settings):
    report = validate.validate(labeled().drop(columns="tag"), settings)
    assert failed(report) == {"required_columns": "missing: tag"}


def test_too_few_rows_and_classes(settings):
    df = labeled(per_tag=30)
    one_class = df[df["tag"] == "mlops"].head(12)
    report = validate.validate(one_class, settings)
    assert failed(report)["enough_rows"] == "12 rows (minimum 20)"
    assert "only 1 class(es): mlops=12; need at least 2" in failed(report)["enough_classes"]


def test_thin_class_fails_enough_classes(settings):
    df = labeled(per_tag=30)
    thin = pd.concat([df[df["tag"] != "mlops"], df[df["tag"] == "mlops"].head(6)])
    report = validate.validate(thin, synthetic.with_setting(settings, "validate", min_rows_per_class=10))
    assert "need at least 10 rows in every class" in failed(report)["enough_classes"]


@pytest.mark.parametrize("seed", [0, 1, 2])  # three shuffles of the same projects
def test_shuffled_labels_fail_label_signal(settings, seed):
    df = shuffled(labeled(per_tag=40), seed)
    report = validate.validate(df, settings)
    assert not report["passed"]
    assert list(failed(report)) == ["label_signal"]  # every other check passes: counts, ids, text are fine
    [line] = validate.failed_checks(report)
    assert "\n" not in line
    assert line.startswith("label_signal: macro f1 0.")
    assert "0.100 for the majority class" in line and "on permuted labels (best of 5)" in line
    assert "less than 0.1 above both: the labels do not follow the text" in line


def test_label_signal_needs_the_lift_above_chance(settings):
    # The same learnable data passes at the default lift and fails when asked to beat chance by 0.95.
    df = labeled(per_tag=40)
    assert validate.validate(df, settings)["passed"]
    strict = synthetic.with_setting(settings, "validate", signal_min_lift=0.95)
    assert list(failed(validate.validate(df, strict))) == ["label_signal"]


def test_label_signal_can_be_switched_off(settings):
    off = synthetic.with_setting(settings, "validate", signal_check=False)
    report = validate.validate(shuffled(labeled(per_tag=40)), off)
    assert report["passed"] and "label_signal" not in {c["name"] for c in report["checks"]}


def test_label_signal_runs_only_on_data_that_passed_the_contract(settings):
    df = shuffled(labeled(per_tag=40))
    break_duplicate_ids(df)
    assert list(failed(validate.validate(df, settings))) == ["unique_ids"]


def test_drift_in_labels_fails_with_bonferroni_threshold(settings):
    reference = validate.profile(labeled(per_tag=60), settings.data)
    df = labeled(per_tag=60)
    shifted = pd.concat([df[df["tag"] == "computer-vision"]] * 3 + [df.head(20)])
    shifted = shifted.assign(id=[str(i) for i in range(len(shifted))])
    report = validate.validate(shifted, settings, reference)
    assert "label_drift" in failed(report)
    assert "Bonferroni threshold 0.005" in failed(report)["label_drift"]


def test_same_distribution_does_not_drift(settings):
    reference = validate.profile(labeled(per_tag=30), settings.data)
    report = validate.validate(labeled(per_tag=30), settings, reference)
    assert report["passed"] and {c["name"] for c in report["checks"]} >= {"label_drift", "text_length_drift"}


def test_allowed_drift_is_a_warning(settings):
    reference = validate.profile(labeled(per_tag=30), settings.data)
    df = labeled(per_tag=30)
    df["description"] = df["description"] + " " + " ".join(["padding"] * 40)
    report = validate.validate(df, settings, reference, drift_blocks=False)
    assert report["passed"] and "text_length_drift" in failed(report)
    assert validate.failed_checks(report) == []
    assert "warn (allowed)" in validate.render_markdown(report)


def test_markdown_report_names_failures(settings):
    df = labeled()
    break_duplicate_ids(df)
    page = validate.render_markdown(validate.validate(df, settings))
    assert "**FAILED**" in page and "| unique_ids | **FAIL** |" in page


@pytest.mark.skipif(not (REAL_DATA / "projects.csv").exists(), reason="real dataset not beside the repo")
def test_real_dataset_passes_the_contract(monkeypatch):
    monkeypatch.delenv("TAGIFAI_CONFIG", raising=False)
    settings = load_settings()
    projects = data.parse_csv((REAL_DATA / "projects.csv").read_bytes(), "projects.csv", data.PROJECT_COLUMNS)
    tags = data.parse_csv((REAL_DATA / "tags.csv").read_bytes(), "tags.csv", data.TAG_COLUMNS)
    report = validate.validate(data.transform(projects, tags), settings)
    assert report["passed"], failed(report)
    assert "label_signal" in {c["name"] for c in report["checks"]}
    assert report["profile"]["rows"] == 955
    assert report["profile"]["label_counts"] == {
        "computer-vision": 356,
        "mlops": 79,
        "natural-language-processing": 388,
        "other": 132,
    }
    # The same projects with their tags shuffled (the registered-as-v1 case) fail on signal alone.
    report = validate.validate(shuffled(data.transform(projects, tags)), settings)
    assert list(failed(report)) == ["label_signal"]
