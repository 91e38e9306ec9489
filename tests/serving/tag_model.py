"""The serving tests' stand-in model, logged from code as tagifai's own is: tags every row with its `tag`.

Its tag comes from the logged model's `model_config`; the probability depends on the title, so rows differ.
"""

from typing import Any

import mlflow
import pandas as pd


class TagModel(mlflow.pyfunc.PythonModel):
    """Tags every row with its version's label (`model_config["tag"]`)."""

    def load_context(self, context: Any) -> None:
        self.tag = context.model_config["tag"]

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        frame = pd.DataFrame(model_input)
        if "title" not in frame.columns:
            raise ValueError(f"model input needs a 'title' column (got: {', '.join(map(str, frame.columns))})")
        titles = frame["title"].fillna("").astype(str)
        return pd.DataFrame({"tag": [self.tag] * len(frame), "probability": [round(len(t) / 97, 6) for t in titles]})


mlflow.models.set_model(TagModel())
