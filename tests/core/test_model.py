import io
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import skops.io
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import FeatureUnion
from sklearn.preprocessing import FunctionTransformer
from skops.io.exceptions import UntrustedTypesFoundException

from tagifai import model as models
from tagifai.core import ngrams
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


def fitted_model() -> TagifaiModel:
    """A small fitted TagifaiModel: two classes, real TF-IDF and SGD."""
    texts, labels = ["image pixels", "language words", "image video", "words text"], ["cv", "nlp", "cv", "nlp"]
    vectorizer = TfidfVectorizer().fit(texts)
    classifier = SGDClassifier(loss="log_loss", random_state=0).fit(vectorizer.transform(texts), labels)
    return TagifaiModel(vectorizer, classifier, ["cv", "nlp"], 0.6, "other", ["the"], False)


def save_from_code(model: TagifaiModel, folder: Path) -> Path:
    """Save `model` as `tagifai.pipeline.steps.train` logs it: models from code, fitted parts in skops."""
    fitted = models.save_fitted(model, folder / "fitted.skops")
    mlflow.pyfunc.save_model(
        folder / "model",
        python_model=str(models.MODEL_CODE),
        artifacts={models.FITTED: str(fitted)},
        code_paths=[str(models.copy_code(folder))],
        pip_requirements=["mlflow"],  # no requirement inference (a slow subprocess)
    )
    return folder / "model"


def test_a_logged_model_loads_without_pickle_from_its_own_code_where_tagifai_is_not_installed(tmp_path):
    # The model logs only the code it loads (`CODE`); a process without the checkout's tagifai on its path,
    # with MLflow's pickle deserialization off, loads it from that copy and predicts what the fitted model did.
    model = fitted_model()
    path = save_from_code(model, tmp_path)
    logged = {p.relative_to(path / "code").as_posix() for p in (path / "code").rglob("*.py")}
    assert logged == {f"tagifai/{name}" for name in models.CODE}
    assert not [p.name for p in path.rglob("*.pkl")]
    rows = pd.DataFrame({"title": ["image pixels", "words and text", "the video"], "description": ["", "x", None]})
    script = (
        "import sys; sys.path = [p for p in sys.path if p not in ('', sys.argv[2])]\n"
        "import pandas as pd\n"
        "from mlflow.pyfunc import load_model\n"
        "model = load_model(sys.argv[1])\n"
        "print(model.predict(pd.read_json(sys.stdin, orient='split')).to_json(orient='split'))\n"
        "print(*sorted(m.__file__ for name, m in sys.modules.items() if 'tagifai' in name))\n"
    )
    repo = str(Path(models.__file__).resolve().parents[1])
    done = subprocess.run(
        [sys.executable, "-c", script, str(path), repo],
        input=rows.to_json(orient="split"),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false", "PYTHONPATH": ""},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    predicted, files = done.stdout.splitlines()[-2:]
    # Every module of tagifai it ran is the model's copy (the package of its own name model_code.py imports).
    assert [file.removeprefix(str(path / "code" / "tagifai")) for file in files.split()] == [
        f"/{name}" for name in sorted(models.CODE)
    ]
    expected = model.predict(None, rows)
    pd.testing.assert_frame_equal(pd.read_json(io.StringIO(predicted), orient="split"), expected, check_dtype=False)
    assert models.load(str(path)).unwrap_python_model().classes == ["cv", "nlp"]


def test_a_loaded_model_has_its_character_ngrams_numbered_before_any_text(tmp_path):
    # Batch scoring forks once the model is loaded: the forks share the numbers instead of each making them.
    texts, labels = ["image pixels", "language words", "image video", "words text"], ["cv", "nlp", "cv", "nlp"]
    vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4)).fit(texts)
    classifier = SGDClassifier(loss="log_loss", random_state=0).fit(vectorizer.transform(texts), labels)
    fitted = models.save_fitted(TagifaiModel(vectorizer, classifier, ["cv", "nlp"]), tmp_path / "fitted.skops")
    loaded = TagifaiModel()
    loaded.load_context(SimpleNamespace(artifacts={models.FITTED: str(fitted)}))
    assert loaded.vectorizer in ngrams._VOCABULARIES


def test_a_loaded_model_multiplies_by_its_weights_without_copying_them_and_predicts_the_same(tmp_path):
    # scipy's sparse product copies a weight matrix not laid out as `coef_.T` reads (49 MB a call, the 100k model).
    texts = ["image pixels", "language words", "image video", "words text", "deploy ops", "ops pipeline"]
    labels = ["cv", "nlp", "cv", "nlp", "mlops", "mlops"]  # three classes: a row of weights each (two: one row)
    vectorizer = TfidfVectorizer().fit(texts)
    classifier = SGDClassifier(loss="log_loss", random_state=0).fit(vectorizer.transform(texts), labels)
    model = TagifaiModel(vectorizer, classifier, ["cv", "mlops", "nlp"], 0.4, "other", ["the"], False)
    fitted = models.save_fitted(model, tmp_path / "fitted.skops")
    loaded = TagifaiModel()
    loaded.load_context(SimpleNamespace(artifacts={models.FITTED: str(fitted)}))
    assert loaded.classifier.coef_.shape == (3, len(vectorizer.vocabulary_))
    assert loaded.classifier.coef_.T.flags.c_contiguous
    assert not model.classifier.coef_.T.flags.c_contiguous  # the fitted one as scikit-learn left it
    rows = pd.DataFrame({"title": ["image pixels", "words and text", "the video"], "description": ["", "x", None]})
    pd.testing.assert_frame_equal(loaded.predict(None, rows), model.predict(None, rows))
    np.testing.assert_array_equal(loaded.predict_proba(rows), model.predict_proba(rows))


class Unpickled(mlflow.pyfunc.PythonModel):
    """An old-style model: unpickling it fails loudly, so a refusal proves nothing was unpickled."""

    def __setstate__(self, state):
        raise AssertionError("unpickled")

    def predict(self, context, model_input, params=None):
        return model_input


def test_a_pickled_model_is_refused_in_one_line_before_anything_is_unpickled(tmp_path):
    mlflow.pyfunc.save_model(tmp_path / "old", python_model=Unpickled(), pip_requirements=["mlflow"])
    uri = str(tmp_path / "old")
    with pytest.raises(models.UnloadableModelError) as refused:
        models.load(uri)
    assert str(refused.value) == (
        f"{uri} is a pickled model (python_model.pkl); this deployment loads only models without pickle "
        f"(logged by tagifai >= {models.NO_PICKLE_SINCE})"
    )


def test_a_model_whose_fitted_parts_hold_an_untrusted_type_is_refused(tmp_path):
    path = save_from_code(fitted_model(), tmp_path)
    # Tampered: the vectorizer swapped for one that would call `eval` on every text.
    tampered = {**fitted_model().parts(), "vectorizer": FunctionTransformer(func=eval)}
    skops.io.dump(tampered, path / "artifacts" / "fitted.skops")
    with pytest.raises(UntrustedTypesFoundException, match="builtins.eval"):
        models.load_fitted(path / "artifacts" / "fitted.skops")
    with pytest.raises(models.UnloadableModelError, match=r"fitted parts hold types .* not load: .*builtins\.eval"):
        models.load(str(path))


def test_skops_is_imported_only_to_save_or_read_fitted_parts(tmp_path):
    # Importing skops takes seconds (it lists every scikit-learn type): a step that saves
    # no model (elt, validate, optimize, decide) does not pay for it, and a tampered model is still refused
    # by a process that had not imported skops before loading it.
    path = save_from_code(fitted_model(), tmp_path)
    tampered = {**fitted_model().parts(), "vectorizer": FunctionTransformer(func=eval)}
    skops.io.dump(tampered, path / "artifacts" / "fitted.skops")
    script = (
        "import sys\n"
        "import tagifai.cli, tagifai.pipeline.steps\n"
        "assert not {'skops.io', 'torch'} & set(sys.modules), sorted({'skops.io', 'torch'} & set(sys.modules))\n"
        "from tagifai import model\n"
        "try:\n"
        f"    model.load({str(path)!r})\n"
        "except model.UnloadableModelError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fitted parts hold types" in done.stdout and "builtins.eval" in done.stdout, done.stdout


def test_loading_a_model_does_not_import_torch_and_trusts_the_same_types(tmp_path):
    # skops lists scikit-learn's estimators by importing each of its packages, torch's array API wrapper among
    # them: ~170 MB in every scoring process, which never uses torch. Hidden while skops is imported; the types
    # skops trusts are the ones it lists with torch, and torch still imports afterwards.
    path = save_from_code(fitted_model(), tmp_path)
    names = "from skops.io._trusted_types import SKLEARN_ESTIMATOR_TYPE_NAMES as names; print(*sorted(names))\n"
    loaded = (
        "import sys\n"
        "from tagifai import model\n"
        f"model.load({str(path)!r}).predict(model.texts_frame(['image pixels']))\n"
        "assert 'torch' not in sys.modules, 'loading the model imported torch'\n"
        f"{names}"
        "import torch\n"
        "print(torch.tensor([1]).sum().item())\n"
    )
    with_torch = f"import torch\n{names}"
    done, reference = (
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
        for script in (loaded, with_torch)
    )
    assert done.returncode == 0 and reference.returncode == 0, (done.stderr + reference.stderr)[-3000:]
    types, one = done.stdout.splitlines()[-2:]
    assert (
        types == reference.stdout.splitlines()[-1]
        and "sklearn.linear_model._stochastic_gradient.SGDClassifier" in types.split()
    )
    assert one == "1"


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda path: shutil.rmtree(path), "No such artifact: 'model'"),  # files gone
        (lambda path: (path / "MLmodel").unlink(), "it has no MLmodel"),  # not a model
    ],
    ids=["files gone", "no MLmodel"],
)
def test_a_model_that_is_not_there_is_unloadable(tmp_path, damage, why):
    path = save_from_code(fitted_model(), tmp_path)
    damage(path)
    with pytest.raises(models.UnloadableModelError) as refused:
        models.load(str(path))
    assert str(refused.value).startswith(f"{path} cannot be loaded: {why}")


@pytest.mark.parametrize(
    ("error", "unloadable"),
    [
        (MlflowException("Model Version (name=t, version=9) not found", RESOURCE_DOES_NOT_EXIST), True),
        (MlflowException("… File MLmodel … 404 Client Error: Not Found for url: …"), True),  # the store's proxy
        (MlflowException("… File MLmodel … 503 Server Error: Service Unavailable for url: …"), False),  # may pass
        (MlflowException("API request to … failed with exception Max retries exceeded"), False),  # the network
    ],
    ids=["no such version", "files gone", "5xx", "no answer"],
)
def test_only_a_definite_answer_makes_a_model_unloadable(monkeypatch, error, unloadable):
    def fail(artifact_uri, dst_path=None):
        raise error

    monkeypatch.setattr(models.mlflow.artifacts, "download_artifacts", fail)
    with pytest.raises(models.UnloadableModelError if unloadable else MlflowException) as raised:
        models.load("models:/t/9")
    assert isinstance(raised.value, models.UnloadableModelError) is unloadable
    assert str(raised.value).startswith("models:/t/9 cannot be loaded") is unloadable


def test_vocabularies_are_saved_packed_and_load_as_they_were(tmp_path):
    texts = [f"project {i} about topic{i % 97} and words{i % 13}" for i in range(3000)]
    union = FeatureUnion(
        [("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), max_features=20_000)),
         ("word", TfidfVectorizer(ngram_range=(1, 2)))]
    ).fit(texts)  # fmt: skip
    model = TagifaiModel(union, None, ["a"], 0.5, "other", [], False)
    before = [dict(part.vocabulary_) for _, part in union.transformer_list]
    path = models.save_fitted(model, tmp_path / "fitted.skops")
    assert [part.vocabulary_ for _, part in union.transformer_list] == before  # the model itself is not changed
    # Two items per vocabulary, not one archive file per entry (thousands of them: minutes for a million).
    assert len(zipfile.ZipFile(path).namelist()) < 40 < sum(map(len, before))
    loaded = models.load_fitted(path)["vectorizer"]
    assert [part.vocabulary_ for _, part in loaded.transformer_list] == before
    assert (loaded.transform(texts[:50]) != union.transform(texts[:50])).nnz == 0
