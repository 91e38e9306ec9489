"""The model: the MLflow pyfunc that turns raw title/description into a tag, and how to load and call it.

Logged as MLflow "models from code": `model_code.py` builds an empty `TagifaiModel`, whose `load_context`
reads the fitted parts from a skops file (`FITTED`) that may hold only the types in `TRUSTED`. Nothing is
unpickled; `load` refuses a model that would need it (versions logged before tagifai 0.2.0).

A logged model carries this module and what it imports (`CODE`), which import one another relatively: a loaded
version is built with that copy, a package of its own name, not with the running tagifai (see `model_code.py`).
"""

from __future__ import annotations

import copy
import importlib
import importlib.metadata
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import mlflow.artifacts
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model

# Relative: a logged model imports its copy of this code as a package of its own name (see model_code.py).
from .contract.errors import BadInputError
from .core.data import clean_text, compose_text
from .core.ngrams import features, prepare

# What the model reads from each row (`description` may be missing).
INPUT_COLUMNS = ("title", "description")
# What it needs to serve, pinned at log time to the versions that trained it.
REQUIREMENTS = ("mlflow", "skops", "numpy", "pandas", "scipy", "scikit-learn", "nltk")
# The code a logged model loads (its `code_paths`): this module and what it imports of tagifai (relatively).
CODE = (
    "__init__.py",
    "model.py",
    "core/__init__.py",
    "core/data.py",
    "core/ngrams.py",
    "contract/__init__.py",
    "contract/errors.py",
)
# The file MLflow runs to build the model ("models from code"), and the artifact holding the fitted parts.
MODEL_CODE = Path(__file__).with_name("model_code.py")
FITTED = "fitted"
# The types the fitted parts are made of, besides builtins and numpy arrays: skops loads nothing else.
# (Its defaults trust scikit-learn's estimators as well; named here so a model's contents are written down.)
TRUSTED = (
    "sklearn.pipeline.FeatureUnion",
    "sklearn.feature_extraction.text.TfidfVectorizer",
    "sklearn.feature_extraction.text.TfidfTransformer",
    "sklearn.linear_model._stochastic_gradient.SGDClassifier",
    "sklearn._loss._loss.CyHalfBinomialLoss",
)
# The first version that logs models without pickle, named when an older one is refused.
NO_PICKLE_SINCE = "0.2.0"


def custom_predict(y_prob: np.ndarray, threshold: float, other_index: int) -> np.ndarray:
    """Return the argmax class per row, or `other_index` where its probability is below `threshold`."""
    return np.where(y_prob.max(axis=1) >= threshold, y_prob.argmax(axis=1), other_index)


def lay_out_weights(classifier: Any) -> None:
    """Keep a linear classifier's weights column by column: as `coef_.T`, by which it multiplies the features.

    scikit-learn scores a sparse matrix of features by `X @ coef_.T`, and scipy's product wants that operand
    laid out row by row: given the transpose of a row-major `coef_`, it copies the whole matrix on every call.
    For the 100k model (4 classes x 1.5M features: 49 MB) that copy was 24 of a single row's 31 ms, and 60 of
    2,000 rows' 197 ms (2026-12-03). The values are the same: so is every probability, to the bit.
    """
    weights = getattr(classifier, "coef_", None)
    if isinstance(weights, np.ndarray) and weights.ndim == 2:
        classifier.coef_ = np.asfortranarray(weights)


class TagifaiModel(mlflow.pyfunc.PythonModel):
    """Raw `title`/`description` in, one tag (and its probability) per row out."""

    def __init__(
        self,
        vectorizer: Any = None,
        classifier: Any = None,
        classes: Sequence[str] = (),
        threshold: float = 0.0,
        other_label: str = "other",
        stopwords: Sequence[str] = (),
        stem: bool = False,
    ) -> None:
        """Hold the fitted vectorizer and classifier and what preprocessing needs (a logged model: nothing yet)."""
        self.vectorizer = vectorizer
        self.classifier = classifier
        self.classes = list(classes)
        self.threshold = float(threshold)
        self.other_label = other_label
        self.stopwords = frozenset(stopwords)
        self.stem = stem

    def parts(self) -> dict[str, Any]:
        """What `__init__` takes: the fitted parts, as `save_fitted` writes them."""
        return {
            "vectorizer": self.vectorizer,
            "classifier": self.classifier,
            "classes": self.classes,
            "threshold": self.threshold,
            "other_label": self.other_label,
            "stopwords": sorted(self.stopwords),
            "stem": self.stem,
        }

    def load_context(self, context: Any) -> None:
        """Read the fitted parts of a logged model from its `FITTED` artifact (skops, no pickle)."""
        self.__init__(**load_fitted(context.artifacts[FITTED]))
        # Before batch scoring forks: its processes share what these make.
        prepare(self.vectorizer)
        lay_out_weights(self.classifier)

    def clean(self, df: pd.DataFrame) -> list[str]:
        """Compose and clean the text of each row."""
        return [clean_text(text, self.stopwords, self.stem) for text in compose_text(df)]

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        """Class probabilities per row, columns in `self.classes` order."""
        return self.classifier.predict_proba(features(self.vectorizer, self.clean(df)))

    def labels(self, y_prob: np.ndarray) -> list[str]:
        """The thresholded tag of each row of class probabilities: below the threshold, `other`."""
        names = [*self.classes, self.other_label]  # `other` is last when it is not a class
        return [names[i] for i in custom_predict(y_prob, self.threshold, names.index(self.other_label))]

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """Predict a `tag` and its `probability` (the top class probability) per row of `title`, `description`."""
        frame = pd.DataFrame(model_input)
        if "title" not in frame.columns:
            raise ValueError(f"model input needs a 'title' column (got: {', '.join(map(str, frame.columns))})")
        y_prob = self.predict_proba(frame)
        return pd.DataFrame({"tag": self.labels(y_prob), "probability": y_prob.max(axis=1).round(6)})


class UnloadableModelError(BadInputError):
    """A model version that can never be loaded here: its files are gone, or it is not a model this code loads."""


def save_fitted(model: TagifaiModel, path: Path) -> Path:
    """Write the fitted parts of `model` to `path` with skops (no pickle): the `FITTED` artifact of a logged model.

    Each TF-IDF part's vocabulary goes in packed (`pack_vocabularies`): skops writes a dict entry by entry, a
    file in its archive for each numpy integer, which took minutes for a vocabulary of a million n-grams.
    """
    vectorizer, vocabularies = pack_vocabularies(model.vectorizer)
    skops_io().dump({**model.parts(), "vectorizer": vectorizer, VOCABULARIES: vocabularies}, path)
    return path


def load_fitted(path: str | Path) -> dict[str, Any]:
    """The fitted parts `save_fitted` wrote to `path`, made only of `TRUSTED` types, builtins and numpy arrays.

    Raises:
        UntrustedTypesFoundException: the file holds any other type; nothing of it was constructed.
    """
    parts = skops_io().load(path, trusted=list(TRUSTED))
    vocabularies = parts.pop(VOCABULARIES, {})  # none in a file saved before they were packed
    for name, part in getattr(parts["vectorizer"], "transformer_list", []):
        if name in vocabularies:
            terms, columns = vocabularies[name]["terms"], vocabularies[name]["columns"]
            part.vocabulary_ = dict(zip(terms.split(TERM_SEPARATOR) if terms else [], columns.tolist(), strict=True))
    return parts


def skops_io() -> ModuleType:
    """`skops.io`, imported here, not at the top (it takes seconds, and most steps load no model), without torch.

    Importing skops lists scikit-learn's estimators (`sklearn.utils.all_estimators`), which imports every package
    of scikit-learn, its array API wrapper of torch among them: with torch installed (snorkel's), about 170 MB in
    every process that loads a model and never uses torch (`serve`, each batch scorer). Torch is hidden while skops
    is imported: the walk passes over a package it cannot import, and that one holds no estimator. A torch
    imported before (evaluate's snorkel) or after is left alone.
    """
    if "skops.io" in sys.modules or "torch" in sys.modules:
        return importlib.import_module("skops.io")
    sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` raises ImportError meanwhile
    try:
        return importlib.import_module("skops.io")
    finally:
        if sys.modules.get("torch", ...) is None:  # still the placeholder: nothing imported torch meanwhile
            del sys.modules["torch"]


# Where a saved model keeps its vectorizers' vocabularies, and what separates the terms: cleaned text
# (`clean_text`) has no line breaks.
VOCABULARIES = "vocabularies"
TERM_SEPARATOR = "\n"


def pack_vocabularies(vectorizer: Any) -> tuple[Any, dict[str, dict[str, Any]]]:
    """`vectorizer` without its parts' vocabularies (shallow copies: it is not changed), and those vocabularies.

    Each vocabulary is one string of its terms and one array of their columns, two items for skops to write
    whatever their size. A vocabulary with a term holding `TERM_SEPARATOR` stays where it is.
    """
    if not hasattr(vectorizer, "transformer_list"):
        return vectorizer, {}
    union, parts, vocabularies = copy.copy(vectorizer), [], {}
    for name, part in vectorizer.transformer_list:
        vocabulary = getattr(part, "vocabulary_", None)
        if isinstance(vocabulary, dict) and not any(TERM_SEPARATOR in term for term in vocabulary):
            part = copy.copy(part)
            del part.vocabulary_
            columns = np.fromiter(vocabulary.values(), dtype=np.int64, count=len(vocabulary))
            vocabularies[name] = {"terms": TERM_SEPARATOR.join(vocabulary), "columns": columns}
        parts.append((name, part))
    union.transformer_list = parts
    return union, vocabularies


def untrusted_types_error() -> type[Exception] | tuple[()]:
    """The exception skops refuses an untrusted type with, for an `except` clause.

    Nothing to catch until `load_fitted` imported skops: only skops raises it.
    """
    module = sys.modules.get("skops.io.exceptions")
    return module.UntrustedTypesFoundException if module else ()


# MLflow's answers that mean the model is not there (as opposed to "cannot reach MLflow now"), and how an
# HTTP artifact store (the server's proxy) says a file is not there, within MLflow's INTERNAL_ERROR.
MISSING = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
NOT_FOUND = "404 Client Error: Not Found"


def refusal(uri: str, flavors: dict[str, Any]) -> str | None:
    """Why the model whose MLmodel has `flavors` cannot be loaded without pickle (None: it can)."""
    pyfunc = flavors.get(mlflow.pyfunc.FLAVOR_NAME) or {}
    since = f"this deployment loads only models without pickle (logged by tagifai >= {NO_PICKLE_SINCE})"
    if "python_model" in pyfunc:
        return f"{uri} is a pickled model ({pyfunc['python_model']}); {since}"
    if pyfunc.get("loader_module") != "mlflow.pyfunc.loaders.code_model" or "model_code_path" not in pyfunc:
        kind = pyfunc.get("loader_module") or "no python_function flavor"
        return f"{uri} is not a tagifai model from code ({kind}; flavors: {', '.join(flavors)}); {since}"
    return None


def load(uri: str, dst_path: str | None = None, **kwargs: Any) -> Any:
    """The pyfunc model at `uri` (`models:/name/version`, `runs:/...`, a folder), downloaded into `dst_path`.

    The files are downloaded once and their MLmodel read before MLflow loads those very files: a model that
    would need pickle is refused before anything of it is loaded. `kwargs` go to `mlflow.pyfunc.load_model`.

    Raises:
        UnloadableModelError: loading can never succeed (definite): no such model, its files are gone, it
            needs pickle, its fitted parts hold an untrusted type. Other errors (the network, MLflow
            answering 5xx, a timeout) pass through as they are: they may pass.
    """
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst_path)
        if not (Path(local) / "MLmodel").is_file():
            reason = f"{uri} cannot be loaded: it has no MLmodel (its files are gone, or it is not a model)"
        elif (reason := refusal(uri, Model.load(local).flavors)) is None:
            skops_io()  # now, without torch, whichever copy of this code the version brings imports it then
            return mlflow.pyfunc.load_model(local, **kwargs)
    except untrusted_types_error() as exc:
        reason = f"{uri}: its fitted parts hold types this deployment does not load: {exc}"
    except MlflowException as exc:
        if exc.error_code in MISSING:
            reason = f"{uri} cannot be loaded: {exc.message}"
        elif NOT_FOUND in exc.message:
            reason = f"{uri} cannot be loaded: its files are gone (the artifact store answers {NOT_FOUND})"
        else:
            raise
    except FileNotFoundError as exc:
        reason = f"{uri} cannot be loaded: its files are gone ({exc})"
    raise UnloadableModelError(reason.splitlines()[0])


def predict_tags(model: Any, df: pd.DataFrame) -> list[str]:
    """Tags a pyfunc model predicts for the rows of `df`."""
    return model.predict(df[list(INPUT_COLUMNS)].reset_index(drop=True))["tag"].tolist()


def texts_frame(texts: Sequence[str]) -> pd.DataFrame:
    """Free texts as model input: the text is the title, the description empty."""
    return pd.DataFrame({"title": list(texts), "description": [""] * len(texts)})


def pinned_requirements() -> list[str]:
    """The serving requirements of the model, pinned to what trained it."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in REQUIREMENTS]


def copy_code(folder: Path) -> Path:
    """Copy the model's code (`CODE`) into `folder/tagifai`, a package MLflow logs beside the model."""
    package, target = Path(__file__).parent, folder / "tagifai"
    for name in CODE:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(package / name, target / name)
    return target
