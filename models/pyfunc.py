"""MLflow pyfunc wrapper: takes user × arm feature rows, returns response probability and
expected revenue. Carries the feature metadata (vocabulary, columns) with the model."""
from __future__ import annotations

import json

import mlflow.pyfunc
import numpy as np
import pandas as pd


class CampaignResponseModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import keras

        self.model = keras.saving.load_model(context.artifacts["keras_model"], compile=False)
        with open(context.artifacts["meta"]) as f:
            self.meta = json.load(f)

    def predict_arrays(self, inputs: dict[str, np.ndarray], batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        if len(inputs["seq"]) == 0:
            return np.zeros(0), np.zeros(0)
        from campaignops.models.uplift_net import predict

        p, revenue = predict(self.model, inputs, batch_size)
        return p, revenue * self.meta["revenue_scale"]

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from campaignops.models.inputs import encode

        p, rev = self.predict_arrays(encode(model_input, self.meta))
        return pd.DataFrame({"p_response": p, "expected_revenue": rev})
