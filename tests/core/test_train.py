import numpy as np
import pandas as pd
import pytest

from tagifai.core import data, train


@pytest.fixture
def splits(dataset, settings):
    projects_path, tags_path = dataset
    projects = data.parse_csv(projects_path.read_bytes(), "projects", data.PROJECT_COLUMNS)
    tags = data.parse_csv(tags_path.read_bytes(), "tags", data.TAG_COLUMNS)
    prepared = data.prepare(data.transform(projects, tags), settings.data)
    return {name: prepared[prepared["split"] == name] for name in data.SPLITS}


def test_train_logs_every_epoch_and_picks_a_threshold(splits, settings):
    result = train.train(settings.train, splits["train"], splits["val"], settings.stopwords)
    assert [h["epoch"] for h in result["history"]] == list(range(settings.train.num_epochs))
    assert result["history"][-1]["train_loss"] < result["history"][0]["train_loss"]
    assert 0 < result["threshold"] < 1
    assert result["model"].classes == ["computer-vision", "mlops", "natural-language-processing", "other"]
    assert result["val"]["f1"] > 0.7  # well above chance (0.25): the vocabularies separate the tags


def test_training_is_reproducible(splits, settings):
    a = train.train(settings.train, splits["train"], splits["val"], settings.stopwords)
    b = train.train(settings.train, splits["train"], splits["val"], settings.stopwords)
    assert a["history"] == b["history"] and a["threshold"] == b["threshold"]


@pytest.mark.parametrize(
    ("probabilities", "quantile", "expected"),
    [
        ([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.5, 0.5]], 0.0, 0.5),  # minimum top probability
        ([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.5, 0.5]], 0.5, 0.7),  # median of 0.9, 0.6, 0.8, 0.5
    ],
)
def test_find_threshold_is_a_quantile_of_top_probabilities(probabilities, quantile, expected):
    assert train.find_threshold(np.array(probabilities), quantile) == pytest.approx(expected)


def test_coerce_params_restores_types_from_mlflow_strings():
    params = train.coerce_params({"alpha": "1e-05", "num_epochs": "12", "sublinear_tf": "False", "analyzer": "char"})
    assert params == {"alpha": 1e-05, "num_epochs": 12, "sublinear_tf": False, "analyzer": "char"}


def test_build_vectorizer_adds_word_features_on_request():
    base = {"analyzer": "char_wb", "ngram_max_range": 4, "sublinear_tf": True}
    names = lambda p: [name for name, _ in train.build_vectorizer(p).transformer_list]  # noqa: E731
    assert names({**base, "word_features": False}) == ["char"]
    assert names({**base, "word_features": True}) == ["char", "word"]
    assert train.build_vectorizer({**base, "word_features": False}).fit_transform(pd.Series(["ab cd"])).shape[0] == 1


def test_the_tuning_budget_samples_by_class_and_runs_one_fold_above_cv_max_rows():
    df = pd.DataFrame({"tag": ["a"] * 700 + ["b"] * 200 + ["c"] * 100, "title": [f"p{i}" for i in range(1000)]})
    rows, folds, how = train.tuning_budget(df, 100, 50, 5, seed=1)
    assert rows["tag"].value_counts().to_dict() == {"a": 70, "b": 20, "c": 10}
    assert folds == 1
    assert how == (
        "a stratified sample of 100 of 1000 train rows ([optimize] max_rows), one of 5 folds per trial "
        "(above [optimize] cv_max_rows)"
    )
    assert rows.index.is_monotonic_increasing and set(rows.index) <= set(df.index)
    assert train.tuning_budget(df, 100, 50, 5, seed=1)[0].equals(rows)  # the same rows each time
    assert train.tuning_budget(df, 100, 100, 5, seed=1)[1:] == (
        5,
        "a stratified sample of 100 of 1000 train rows ([optimize] max_rows), 5 folds per trial",
    )
    for budget in (0, 1000, 5000):  # no limit, or the data fits
        rows, folds, how = train.tuning_budget(df, budget, 2000, 5, seed=1)
        assert rows is df and (folds, how) == (5, "all 1000 train rows, 5 folds per trial")


def test_cross_validation_can_stop_after_the_first_folds(splits, settings):
    params = {**settings.train.model_dump(), "num_epochs": 2}
    every = train.cross_validate(params, splits["train"], settings.stopwords, num_folds=3)
    first = train.cross_validate(params, splits["train"], settings.stopwords, num_folds=3, folds_run=1)
    assert len(every["folds"]) == 3 and first["folds"] == every["folds"][:1]


def test_max_features_bounds_each_tfidf_part_to_its_most_frequent_ngrams(splits, settings):
    texts = [" ".join(row) for row in splits["train"][["title", "description"]].to_numpy()]
    params = {**settings.train.model_dump(), "max_features": 50}
    bounded = train.build_vectorizer(params).fit(texts)
    assert [len(part.vocabulary_) for _, part in bounded.transformer_list] == [50, 50]
    unbounded = train.build_vectorizer({**params, "max_features": None}).fit(texts)
    assert all(len(part.vocabulary_) > 50 for _, part in unbounded.transformer_list)


def test_threads_fit_the_same_model_as_one(splits, settings):
    params = {**settings.train.model_dump(), "num_epochs": 3}
    one = train.train(params, splits["train"], splits["val"], settings.stopwords)
    two = train.train(params, splits["train"], splits["val"], settings.stopwords, n_jobs=2)
    np.testing.assert_array_equal(one["model"].classifier.coef_, two["model"].classifier.coef_)
    assert one["history"] == two["history"]
    assert two["model"].classifier.get_params() == one["model"].classifier.get_params()  # the threads are not kept
