"""The model: the MLflow pyfunc that turns raw title/description into a tag, and how to call it.

Registered versions unpickle `tagifai.model.TagifaiModel`: this module keeps its import path.
"""

from __future__ import annotations

import importlib.metadata
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from tagifai.contract.errors import BadInputError
from tagifai.core.data import clean_text, compose_text

# What the model reads from each row (`description` may be missing).
INPUT_COLUMNS = ("title", "description")
# What it needs to serve, pinned at log time to the versions that trained it.
REQUIREMENTS = ("mlflow", "cloudpickle", "numpy", "pandas", "scipy", "scikit-learn", "nltk")
# The code a logged model loads (its `code_paths`): this module and what it imports of tagifai.
CODE = ("__init__.py", "model.py", "core/__init__.py", "core/data.py", "contract/__init__.py", "contract/errors.py")


def custom_predict(y_prob: np.ndarray, threshold: float, other_index: int) -> np.ndarray:
    """Return the argmax class per row, or `other_index` where its probability is below `threshold`."""
    return np.where(y_prob.max(axis=1) >= threshold, y_prob.argmax(axis=1), other_index)


class TagifaiModel(mlflow.pyfunc.PythonModel):
    """Raw `title`/`description` in, one tag (and its probability) per row out."""

    def __init__(
        self,
        vectorizer: Any,
        classifier: Any,
        classes: list[str],
        threshold: float,
        other_label: str,
        stopwords: list[str],
        stem: bool,
    ) -> None:
        """Hold the fitted vectorizer and classifier plus everything preprocessing needs."""
        self.vectorizer = vectorizer
        self.classifier = classifier
        self.classes = list(classes)
        self.threshold = float(threshold)
        self.other_label = other_label
        self.stopwords = frozenset(stopwords)
        self.stem = stem

    def clean(self, df: pd.DataFrame) -> list[str]:
        """Compose and clean the text of each row."""
        return [clean_text(text, self.stopwords, self.stem) for text in compose_text(df)]

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        """Class probabilities per row, columns in `self.classes` order."""
        return self.classifier.predict_proba(self.vectorizer.transform(self.clean(df)))

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


def load(uri: str, **kwargs: Any) -> Any:
    """The pyfunc model at `uri` (`models:/name/version`, `runs:/...`, a folder); `kwargs` go to MLflow.

    Raises:
        UnloadableModelError: loading can never succeed (definite). Other errors (the network, MLflow
            answering 5xx, a timeout) pass through as they are: they may pass.
    """
    return mlflow.pyfunc.load_model(uri, **kwargs)


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
