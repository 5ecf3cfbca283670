"""MLflow pyfunc for the return model (logged as "models from code": no pickle in the artifact).

`mlflow.pyfunc.load_model("models:/returnrisk@champion").predict(features_df)` returns calibrated
return probabilities (a float64 array, one per row), never labels. Categorical features may be given as
text or pandas `category`; the saved level lists are applied by `ReturnModel`, not by MLflow.
The `returnrisk` package must be importable where the model is loaded.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

ARTIFACT_KEY = "model_dir"


class ReturnRiskPyfunc(PythonModel):
    """Wraps `models.artifact.ReturnModel`; predict -> calibrated probabilities."""

    def load_context(self, context) -> None:
        from models.artifact import ReturnModel

        self.model = ReturnModel.load(context.artifacts[ARTIFACT_KEY])

    def predict(self, context, model_input, params=None) -> np.ndarray:
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        return self.model.predict_proba(model_input)


mlflow.models.set_model(ReturnRiskPyfunc())
