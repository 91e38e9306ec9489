"""Behavioral tests on a model trained on synthetic data (invariance, directional, minimum functionality)."""

import pandas as pd
import pytest

from tagifai.core import data, train


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from harness import synthetic
    from tagifai.contract.config import load_settings

    config = synthetic.write_small_config(tmp_path_factory.mktemp("cfg") / "small.toml")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TAGIFAI_CONFIG", str(config))
        settings = load_settings()
    projects, tags = synthetic.make_projects(per_tag=60, seed=3)
    frame = pd.DataFrame(projects).astype({"id": str}).merge(pd.DataFrame(tags).astype({"id": str}), on="id")
    prepared = data.prepare(frame, settings.data)
    params = {**settings.train.model_dump(), "num_epochs": 20, "threshold_quantile": 0.0}
    result = train.train(
        params, prepared[prepared.split == "train"], prepared[prepared.split == "val"], settings.stopwords
    )
    return result["model"]


def tags(model, *texts):
    return model.predict(None, pd.DataFrame({"title": list(texts), "description": [""] * len(texts)}))["tag"].tolist()


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        (["CNN for images", "convnet for images"], "computer-vision"),  # synonyms
        (
            ["Sentiment of text and language with BERT", "sentiment of TEXT and language with bert!"],
            "natural-language-processing",
        ),  # case and punctuation
        (
            ["Object detection in photos and images", "Object detection in the photos and the images"],
            "computer-vision",
        ),  # stopwords
    ],
)
def test_invariance(model, texts, expected):
    assert tags(model, *texts) == [expected] * len(texts)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("image segmentation of photos with a cnn", "computer-vision"),
        ("translation of language text with a transformer", "natural-language-processing"),
        ("serving models with kubernetes, docker and monitoring", "mlops"),
    ],
)
def test_directional(model, text, expected):
    assert tags(model, text) == [expected]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("question answering and summarization of language", "natural-language-processing"),
        ("yolo object detection on video", "computer-vision"),
        ("agent reward policy in atari games", "other"),
        ("zzzz qqqq", "other"),  # nothing it knows: below the threshold
    ],
)
def test_minimum_functionality(model, text, expected):
    assert tags(model, text) == [expected]
