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
