import numpy as np
import pandas as pd
import pytest

from tagifai.model import TagifaiModel, custom_predict


@pytest.mark.parametrize(
    ("y_prob", "threshold", "expected"),
    [
        ([[0.7, 0.2, 0.1]], 0.5, [0]),  # confident: argmax
        ([[0.4, 0.35, 0.25]], 0.5, [2]),  # below threshold: other (index 2)
        ([[0.5, 0.3, 0.2]], 0.5, [0]),  # exactly at threshold counts as confident
        ([[0.1, 0.8, 0.1], [0.34, 0.33, 0.33]], 0.6, [1, 2]),  # row by row
    ],
)
def test_custom_predict(y_prob, threshold, expected):
    assert custom_predict(np.array(y_prob), threshold, other_index=2).tolist() == expected


class Constant:
    """A stand-in classifier: the same probabilities for every row."""

    def __init__(self, probabilities):
        self.probabilities = np.array(probabilities)

    def predict_proba(self, x):
        return np.tile(self.probabilities, (x.shape[0], 1))


class Identity:
    def transform(self, texts):
        return np.zeros((len(texts), 1))


@pytest.mark.parametrize(
    ("probabilities", "expected"),
    [
        ([0.1, 0.8, 0.1], "mlops"),  # confident
        ([0.4, 0.3, 0.3], "other"),  # not confident: other
    ],
)
def test_model_predicts_a_tag_per_row_from_raw_text(probabilities, expected):
    model = TagifaiModel(Identity(), Constant(probabilities), ["cv", "mlops", "nlp"], 0.5, "other", ["the"], False)
    out = model.predict(None, pd.DataFrame({"title": ["a", "b"], "description": ["x", "y"]}))
    assert out["tag"].tolist() == [expected, expected]
    assert out["probability"].tolist() == [max(probabilities)] * 2


def test_model_accepts_title_only_and_rejects_input_without_title():
    model = TagifaiModel(Identity(), Constant([0.9, 0.1]), ["cv", "other"], 0.5, "other", [], False)
    assert model.predict(None, pd.DataFrame({"title": ["x"]}))["tag"].tolist() == ["cv"]
    with pytest.raises(ValueError, match="needs a 'title' column"):
        model.predict(None, pd.DataFrame({"text": ["x"]}))
