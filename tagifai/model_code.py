"""The code MLflow runs to build a logged tagifai model ("models from code"), in place of unpickling one.

The model is empty here: `TagifaiModel.load_context` reads its fitted parts from the model's skops artifact.
"""

import mlflow.models

from tagifai.model import TagifaiModel

mlflow.models.set_model(TagifaiModel())
