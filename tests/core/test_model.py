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


def test_a_logged_model_loads_from_its_own_code_where_tagifai_is_not_installed(tmp_path):
    # The model logs only the code it loads (`CODE`); a process without the checkout's tagifai on its path
    # loads it from that copy and predicts: nothing it needs was left out.
    import subprocess
    import sys

    import mlflow
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import SGDClassifier

    from tagifai import model as models

    texts, labels = ["image pixels", "language words", "image video", "words text"], ["cv", "nlp", "cv", "nlp"]
    vectorizer = TfidfVectorizer().fit(texts)
    classifier = SGDClassifier(loss="log_loss", random_state=0).fit(vectorizer.transform(texts), labels)
    model = models.TagifaiModel(vectorizer, classifier, ["cv", "nlp"], 0.0, "other", [], False)
    mlflow.pyfunc.save_model(tmp_path / "model", python_model=model, code_paths=[str(models.copy_code(tmp_path))])
    logged = {
        p.relative_to(tmp_path / "model" / "code").as_posix() for p in (tmp_path / "model" / "code").rglob("*.py")
    }
    assert logged == {f"tagifai/{name}" for name in models.CODE}
    script = (
        "import sys; sys.path = [p for p in sys.path if p not in ('', sys.argv[2])]\n"
        "import mlflow.pyfunc, pandas as pd\n"
        "out = mlflow.pyfunc.load_model(sys.argv[1]).predict(pd.DataFrame({'title': ['image pixels']}))\n"
        "print(sys.modules['tagifai.model'].__file__, sys.modules['tagifai.core.data'].__file__, out['tag'][0])\n"
    )
    repo = str(models.Path(models.__file__).resolve().parents[1])
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "model"), repo], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    model_file, data_file, tag = done.stdout.split()
    assert model_file.startswith(str(tmp_path / "model")) and data_file.startswith(str(tmp_path / "model"))
    assert tag == "cv"
