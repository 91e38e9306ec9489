"""Thresholded prediction and the MLflow pyfunc model that wraps the whole text-to-tag path."""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from tagifai.data import clean_text, compose_text

INPUT_COLUMNS = ("title", "description")


def custom_predict(y_prob: np.ndarray, threshold: float, other_index: int) -> np.ndarray:
    """Return the argmax class per row, or `other_index` where its probability is below `threshold`."""
    y_pred = y_prob.argmax(axis=1)
    confident = y_prob.max(axis=1) >= threshold
    return np.where(confident, y_pred, other_index)


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

    def features(self, df: pd.DataFrame) -> Any:
        """Clean and vectorize raw text."""
        return self.vectorizer.transform(self.clean(df))

    def clean(self, df: pd.DataFrame) -> list[str]:
        """Compose and clean the text of each row."""
        return [clean_text(text, self.stopwords, self.stem) for text in compose_text(df)]

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        """Class probabilities per row, columns in `self.classes` order."""
        return self.classifier.predict_proba(self.features(df))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """Predict a tag per row.

        Args:
            context: unused MLflow context.
            model_input: a frame with a `title` column and optionally `description`.
            params: unused.

        Returns:
            A frame with `tag` and `probability` (the top class probability).
        """
        frame = pd.DataFrame(model_input)
        if "title" not in frame.columns:
            raise ValueError(f"model input needs a 'title' column (got: {', '.join(map(str, frame.columns))})")
        y_prob = self.predict_proba(frame)
        other_index = self.classes.index(self.other_label) if self.other_label in self.classes else -1
        y_pred = custom_predict(y_prob, self.threshold, other_index)
        tags = [self.other_label if i == -1 else self.classes[i] for i in y_pred]
        return pd.DataFrame({"tag": tags, "probability": y_prob.max(axis=1).round(6)})
