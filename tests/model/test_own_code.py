"""A logged version predicts with the code it was trained with, whatever tagifai the loading process runs.

The versions are logged as `tagifai.pipeline.steps.train` logs them (models from code, `code_paths` from
`tagifai.model.copy_code`, fitted parts in skops) to a SQLite MLflow store, and loaded with `tagifai.model.load`.
"""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import SGDClassifier

from tagifai import model as models
from tagifai.core import data

ROWS = pd.DataFrame(
    {
        "title": ["Image pixels", "words and text", "the video", "Language words"],
        "description": ["", "x", None, "text"],
    }
)
PRIVATE = re.compile(r"_tagifai_model_[0-9a-f]{12}\.model")
# What model_code.py did before models carried their own code: the installed tagifai builds the model.
OLD_MODEL_CODE = """import mlflow.models

from tagifai.model import TagifaiModel

mlflow.models.set_model(TagifaiModel())
"""
# Another version's clean_text (appended to its data.py, it replaces the first): only the first word, lowercased.
FIRST_WORD = """

def clean_text(text, stopwords, stem=False):
    return " ".join(text.lower().split()[:1])
"""


def trained() -> models.TagifaiModel:
    """A small trained model: two classes, real TF-IDF and SGD, the installed `clean_text` on its texts."""
    texts = ["image pixels photo", "language words text", "image video frames", "words text sentences"]
    labels = ["cv", "nlp", "cv", "nlp"]
    model = models.TagifaiModel(TfidfVectorizer(), None, ["cv", "nlp"], 0.6, "other", ["the"], False)
    cleaned = model.clean(pd.DataFrame({"title": texts}))
    model.vectorizer.fit(cleaned)
    model.classifier = SGDClassifier(loss="log_loss", random_state=0).fit(model.vectorizer.transform(cleaned), labels)
    return model


def appending(text: str) -> Callable[[Path], None]:
    """An edit of a model's copied code: `text` appended to its `core/data.py`."""

    def edit(package: Path) -> None:
        with (package / "core" / "data.py").open("a", encoding="utf-8") as file:
            file.write(text)

    return edit


def log(
    model: models.TagifaiModel, folder: Path, edit: Callable[[Path], None] | None = None, code: Path | None = None
) -> str:
    """Log `model` as the train step does (`edit` changes its copied code first; `code`: another model_code.py)."""
    folder.mkdir(parents=True)
    fitted = models.save_fitted(model, folder / "fitted.skops")
    package = models.copy_code(folder)
    if edit:
        edit(package)
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(code or models.MODEL_CODE),
            artifacts={models.FITTED: str(fitted)},
            code_paths=[str(package)],
            pip_requirements=["mlflow"],  # no requirement inference (a slow subprocess)
        )
    return info.model_uri


def reverse_installed_clean_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the running tagifai's `clean_text` another one (reversed text), as a newer release would.

    `tagifai.model` bound the name when it was imported: both are changed.
    """

    def reversed_text(text, stopwords, stem=False):
        return text.lower()[::-1]

    monkeypatch.setattr(data, "clean_text", reversed_text)
    monkeypatch.setattr(models, "clean_text", reversed_text)


def assert_installed_tagifai_untouched() -> None:
    assert sys.modules["tagifai.model"] is models
    assert sys.modules["tagifai.core.data"] is data
    assert sys.modules["tagifai"].__file__ == str(Path(models.__file__).with_name("__init__.py"))


def test_an_old_version_predicts_as_it_did_after_the_installed_clean_text_changed(mlflow_store, tmp_path, monkeypatch):
    model = trained()
    uri = log(model, tmp_path / "v1")
    before = models.load(uri).predict(ROWS)
    pd.testing.assert_frame_equal(before, model.predict(None, ROWS), check_exact=True)

    reverse_installed_clean_text(monkeypatch)
    changed = model.predict(None, ROWS)  # the installed code's model: today's clean_text changes its predictions
    assert changed["tag"].tolist() != before["tag"].tolist()

    loaded = models.load(uri)
    after = loaded.predict(ROWS)
    pd.testing.assert_frame_equal(after, before, check_exact=True)
    assert after.to_json(orient="split", double_precision=15) == before.to_json(orient="split", double_precision=15)
    unwrapped = loaded.unwrap_python_model()
    assert PRIVATE.fullmatch(type(unwrapped).__module__), type(unwrapped).__module__
    assert unwrapped.classes == ["cv", "nlp"]  # what evaluate and the reports read
    assert_installed_tagifai_untouched()


def test_two_versions_with_different_code_load_side_by_side_each_with_its_own(mlflow_store, tmp_path, monkeypatch):
    model = trained()
    uri_today = log(model, tmp_path / "today")
    uri_other = log(model, tmp_path / "other", edit=appending(FIRST_WORD))

    today, other = models.load(uri_today), models.load(uri_other)
    # Interleaved, as a serve process answers with the champion while the next version is loaded.
    predicted_today, predicted_other, again_today = today.predict(ROWS), other.predict(ROWS), today.predict(ROWS)

    expected_today = model.predict(None, ROWS)
    with monkeypatch.context() as patch:  # the other version's clean_text, run by the installed model class
        patch.setattr(models, "clean_text", lambda text, stopwords, stem=False: " ".join(text.lower().split()[:1]))
        expected_other = model.predict(None, ROWS)
    assert expected_other["tag"].tolist() != expected_today["tag"].tolist()
    pd.testing.assert_frame_equal(predicted_today, expected_today, check_exact=True)
    pd.testing.assert_frame_equal(again_today, expected_today, check_exact=True)
    pd.testing.assert_frame_equal(predicted_other, expected_other, check_exact=True)

    modules = {type(today.unwrap_python_model()).__module__, type(other.unwrap_python_model()).__module__}
    assert len(modules) == 2 and all(PRIVATE.fullmatch(name) for name in modules), modules
    # The same code again: its package is reused, not imported a second time.
    assert type(models.load(uri_other).unwrap_python_model()) is type(other.unwrap_python_model())
    assert_installed_tagifai_untouched()
    assert data.clean_text("The Image, of pixels", ["the"]) == "image of pixels"


def test_loading_never_replaces_the_running_tagifai_not_even_while_importing_the_logged_code(mlflow_store, tmp_path):
    # Serving loads the next version in a thread while others predict: at every import the load makes (an audit
    # hook sees each module imported for the first time), the running tagifai's modules are the ones in place.
    seen, wrong = [], []
    watching = [False]

    def check(event, args):
        if watching[0] and event == "import":
            seen.append(args[0])
            if sys.modules.get("tagifai.model") is not models or sys.modules.get("tagifai.core.data") is not data:
                wrong.append(args[0])

    sys.addaudithook(check)  # (a hook cannot be removed: `watching` turns it off)
    # Code no other test logged (a comment of its own): its package is imported by this load, not reused.
    uri = log(trained(), tmp_path / "v", edit=appending(f"\n# {tmp_path.name}\n"))
    watching[0] = True
    try:
        loaded = models.load(uri)
    finally:
        watching[0] = False
    assert any(name.endswith(".core.data") for name in seen), seen  # the hook did see the logged code imported
    assert wrong == []
    pd.testing.assert_frame_equal(loaded.predict(ROWS), trained().predict(None, ROWS), check_exact=True)
    assert_installed_tagifai_untouched()


def test_threads_loading_the_same_new_code_at_once_each_get_the_whole_package(mlflow_store, tmp_path):
    # Serving's follower and a request path may load versions of the same code at the same moment: neither may
    # see the other's package half imported, and both end with the one package of that code.
    model = trained()
    uris = [log(model, tmp_path / name, edit=appending(f"\n# {tmp_path.name}\n")) for name in ("a", "b")]
    start, loaded, failed = threading.Barrier(len(uris)), {}, []

    def load(uri: str) -> None:
        start.wait()
        try:
            loaded[uri] = models.load(uri)
        except Exception as exc:  # reported below, with its thread's model
            failed.append(f"{uri}: {exc!r}")

    threads = [threading.Thread(target=load, args=(uri,)) for uri in uris]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert failed == [] and len(loaded) == len(uris), failed
    kinds = {type(pyfunc.unwrap_python_model()) for pyfunc in loaded.values()}
    assert len(kinds) == 1 and PRIVATE.fullmatch(next(iter(kinds)).__module__), kinds
    for pyfunc in loaded.values():
        pd.testing.assert_frame_equal(pyfunc.predict(ROWS), model.predict(None, ROWS), check_exact=True)
    assert_installed_tagifai_untouched()


def test_a_version_logged_before_models_carried_their_own_code_still_loads_with_the_installed_code(
    mlflow_store, tmp_path, monkeypatch
):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "model_code.py").write_text(OLD_MODEL_CODE)
    model = trained()
    uri = log(model, tmp_path / "v", code=tmp_path / "old" / "model_code.py")
    loaded = models.load(uri)
    assert type(loaded.unwrap_python_model()) is models.TagifaiModel
    pd.testing.assert_frame_equal(loaded.predict(ROWS), model.predict(None, ROWS), check_exact=True)
    # As before: it predicts with the running tagifai's code.
    reverse_installed_clean_text(monkeypatch)
    pd.testing.assert_frame_equal(models.load(uri).predict(ROWS), model.predict(None, ROWS), check_exact=True)
    assert_installed_tagifai_untouched()
