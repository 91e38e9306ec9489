"""The drift core: a real model's predictions on in-domain and out-of-domain text, judged by Evidently."""

from __future__ import annotations

import re
import socket

import numpy as np
import pandas as pd
import pytest

from harness import synthetic
from harness.packages import package_summaries
from tagifai.contract.errors import BadInputError
from tagifai.core import data, drift, train


@pytest.fixture(scope="module")
def monitor_settings():
    from tagifai.contract.config import load_settings

    return load_settings().monitor  # the deployment's [monitor]: min_rows 100, alpha 0.01, share 0.5, rise 0.2


def scored(model, frame: pd.DataFrame) -> pd.DataFrame:
    """`title`, `description` and the model's `tag` and `probability` per row."""
    texts = frame[["title", "description"]].reset_index(drop=True)
    return pd.concat([texts, model.predict(None, texts)], axis=1)


def labeled(per_tag: int, seed: int) -> pd.DataFrame:
    projects, tags = synthetic.make_projects(per_tag, seed)
    return data.transform(pd.DataFrame(projects).astype({"id": str}), pd.DataFrame(tags).astype({"id": str}))


@pytest.fixture(scope="module")
def champion():
    """A model trained as `train` trains one, on synthetic projects: its train split, reference and the model."""
    from tagifai.contract.config import load_settings

    settings = load_settings()
    prepared = data.prepare(labeled(per_tag=100, seed=0), synthetic.with_setting(settings, "data", min_freq=5).data)
    split = {name: prepared[prepared["split"] == name].drop(columns="split") for name in data.SPLITS}
    params = {**settings.train.model_dump(), "num_epochs": 8, "ngram_max_range": 4}
    model = train.train(params, split["train"], split["val"], list(settings.stopwords))["model"]
    reference = scored(model, pd.concat([split["val"], split["test"]]))
    return {"model": model, "train": split["train"], "reference": reference}


def test_new_projects_like_the_training_ones_are_no_drift(champion, monitor_settings):
    fresh = scored(champion["model"], labeled(per_tag=70, seed=7))  # same generator, other projects
    verdict, html = drift.judge(
        champion["reference"], champion["train"], fresh.iloc[:150], fresh.iloc[150:][["tag", "probability"]],
        monitor_settings,
    )  # fmt: skip
    assert verdict["drifted"] is False and verdict["status"] == "no drift", verdict["reasons"]
    assert set(verdict["sources"]) == {"served", "batch"}
    assert verdict["sources"]["served"]["drifted_share"] < monitor_settings.drift_share
    assert set(verdict["sources"]["served"]["columns"]) == {"tag", "probability", *drift.TEXT_FEATURES}
    assert verdict["reasons"][0].startswith("served requests: ")
    assert "<html" in html.lower() and "unseen_words" in html


def test_non_ml_package_summaries_are_drift(champion, monitor_settings):
    packages = scored(champion["model"], pd.DataFrame(package_summaries(500, seed=3)))
    verdict, html = drift.judge(
        champion["reference"], champion["train"], packages, packages[["tag", "probability"]], monitor_settings
    )
    assert verdict["drifted"] is True and verdict["status"] == "drift"
    served = verdict["sources"]["served"]
    assert served["drifted"] and not served["columns_test_passed"]
    # What the text is like gives it away, whatever the model answered.
    for column in ("unseen_words", "unseen_char_4grams", "text_chars"):
        assert served["columns"][column]["drifted"], column
        assert served["columns"][column]["p_value"] < monitor_settings.drift_alpha
    assert verdict["sources"]["batch"]["drifted"]  # its tags and probabilities alone
    assert any(r.startswith("served requests: ") and "columns drifted" in r for r in verdict["reasons"])
    assert html is not None


def test_too_few_rows_judge_nothing(champion, monitor_settings):
    few = champion["reference"].iloc[: monitor_settings.min_rows - 1]
    verdict, html = drift.judge(champion["reference"], champion["train"], few, few.iloc[:0], monitor_settings)
    assert verdict["drifted"] is None and verdict["status"] == "insufficient" and html is None
    assert verdict["sources"] == {}
    assert verdict["reasons"] == [
        f"too few rows: served requests ({len(few)} < {monitor_settings.min_rows}) and batch predictions "
        f"(0 < {monitor_settings.min_rows}); judged nothing"
    ]


def test_a_source_with_too_few_rows_is_left_out_and_said(champion, monitor_settings):
    fresh = scored(champion["model"], labeled(per_tag=40, seed=8))
    verdict, _ = drift.judge(
        champion["reference"], champion["train"], fresh, fresh.iloc[:10][["tag", "probability"]], monitor_settings
    )
    assert set(verdict["sources"]) == {"served"}
    assert verdict["reasons"][-1] == f"too few rows, not judged: batch predictions (10 < {monitor_settings.min_rows})"


def test_a_rise_of_low_confidence_alone_is_drift(champion, monitor_settings):
    # The same texts and tags, the model suddenly unsure: one column of six drifts (below drift_share), but
    # the share of predictions below low_confidence rises far more than max_low_confidence_rise.
    unsure = champion["reference"].sample(300, replace=True, random_state=0).assign(probability=0.3)
    verdict, _ = drift.judge(champion["reference"], champion["train"], unsure, unsure.iloc[:0], monitor_settings)
    served = verdict["sources"]["served"]
    assert served["columns_test_passed"] and not served["low_confidence_test_passed"]
    assert served["low_confidence_share"] == 1.0 and verdict["drifted"] is True
    assert "share of predictions below 0.5 is 1.00" in verdict["reasons"][1] and "> +0.20" in verdict["reasons"][1]


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        # Every word and 4-gram seen in training.
        ({"title": "CNN for image", "description": ""}, (13, 3, 0.0, 0.0)),
        # "images" is a new word; of its 4-grams only "ages" is new ("image" and "mage" were seen).
        ({"title": "CNN  for", "description": "IMAGES"}, (14, 3, 1 / 3, 1 / 11)),
        # Nothing at all: no words, no 4-grams, nothing unseen.
        ({"title": "", "description": ""}, (0, 0, 0.0, 0.0)),
    ],
)
def test_text_features_measure_against_the_training_vocabulary(texts, expected):
    known = drift.vocabulary(pd.DataFrame([{"title": "CNN for image classification", "description": None}]))
    features = drift.text_features(pd.DataFrame([texts]), known)
    assert tuple(features.iloc[0]) == pytest.approx(expected)


def test_rows_seen_in_training_are_found_whatever_the_case_and_spacing():
    training = pd.DataFrame([{"title": "YOLO  object detection", "description": "Real-time."}])
    window = pd.DataFrame(
        [{"title": "yolo object detection", "description": "real-time."}, {"title": "YOLO", "description": ""}]
    )
    assert drift.seen_in_training(window, training).tolist() == [True, False]


def test_the_tag_test_compares_two_samples_not_a_sample_with_exact_shares():
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    # 60/40 in 200 reference rows; 55/45 in 10 000 current ones: well within the reference's own noise.
    reference = pd.Series(["nlp"] * 120 + ["cv"] * 80)
    current = pd.Series(["nlp"] * 5500 + ["cv"] * 4500)
    ours = get_stattest(reference, current, ColumnType.Categorical, drift.homogeneity_test())
    evidently = get_stattest(reference, current, ColumnType.Categorical, "chisquare")
    assert ours(reference, current, ColumnType.Categorical, 0.01).drifted is False
    assert bool(evidently(reference, current, ColumnType.Categorical, 0.01).drifted)  # why it is not used


def test_judging_needs_no_network(champion, monitor_settings, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access during a report: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    packages = scored(champion["model"], pd.DataFrame(package_summaries(150, seed=5)))
    verdict, html = drift.judge(champion["reference"], champion["train"], packages, packages.iloc[:0], monitor_settings)
    assert verdict["drifted"] is True and html


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        # A frame without a column it needs.
        (
            {"served": pd.DataFrame({"title": ["x"]})},
            "the served rows: missing column(s) description, tag, probability",
        ),
        ({"batch": pd.DataFrame({"tag": ["x"]})}, "the batch predictions: missing column(s) probability"),
        # A champion whose val and test splits are empty: nothing to compare with.
        ({"reference": pd.DataFrame(columns=[*drift.TEXT_COLUMNS, "tag", "probability"])}, "the reference has no rows"),
    ],
)
def test_frames_without_their_columns_or_rows_are_refused(champion, monitor_settings, frames, message):
    arguments = {
        "reference": champion["reference"],
        "training": champion["train"],
        "served": champion["reference"],
        "batch": champion["reference"][["tag", "probability"]],
        **frames,
    }
    with pytest.raises(BadInputError, match=re.escape(message)):
        drift.judge(**arguments, settings=monitor_settings)


def test_a_real_champion_tags_package_summaries_as_ml_with_confidence_and_it_is_drift(monitor_settings):
    """The Made-With-ML data, where CI and developers keep it: what a real champion does out of its domain."""
    if not (synthetic.REAL_DATA / "projects.csv").exists():
        pytest.skip(f"the real dataset is not at {synthetic.REAL_DATA}")
    from tagifai.contract.config import load_settings

    settings = load_settings()
    read = lambda name, columns: data.parse_csv((synthetic.REAL_DATA / name).read_bytes(), name, columns)  # noqa: E731
    prepared = data.prepare(
        data.transform(read("projects.csv", data.PROJECT_COLUMNS), read("tags.csv", data.TAG_COLUMNS)), settings.data
    )
    split = {name: prepared[prepared["split"] == name].drop(columns="split") for name in data.SPLITS}
    model = train.train(settings.train.model_dump(), split["train"], split["val"], list(settings.stopwords))["model"]
    reference = scored(model, pd.concat([split["val"], split["test"]]))
    on_train = scored(model, split["train"])
    # Why the reference is held-out data: the champion is surer of the rows it learned.
    assert on_train["probability"].mean() > reference["probability"].mean() + 0.05
    packages = scored(model, pd.DataFrame(package_summaries(500, seed=11)))
    ml_tags = packages["tag"].isin(["natural-language-processing", "computer-vision", "mlops"]).mean()
    assert ml_tags > 0.7  # confidently wrong: most package summaries get an ML tag
    verdict, _ = drift.judge(reference, split["train"], packages, packages.iloc[:0], monitor_settings)
    assert verdict["drifted"] is True
    assert np.isclose(sum(verdict["tag_shares"]["served"].values()), 1.0)
    print(f"real champion on 500 package summaries: tags {verdict['tag_shares']['served']}; {verdict['reasons']}")
