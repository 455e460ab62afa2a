"""MLflow pyfunc wrappers: take user × arm feature rows, return response probability and expected
revenue. Each carries the feature metadata (vocabulary, columns) with the model, and its family in
`meta["family"]`: "network" (the campaign response network), "mlp_noseq" (the same network without
the sequence encoder: this class too) or a T-learner baseline ("tlearner_gbt", "tlearner_logreg":
`TLearnerResponseModel`). The evaluation gate may serve a baseline when it leads the network
(pipelines/family.py); scoring and evaluation call `predict_arrays` on whichever was registered."""
from __future__ import annotations

import json

import mlflow.pyfunc
import numpy as np
import pandas as pd

NETWORK = "network"


def family(python_model) -> str:
    return (getattr(python_model, "meta", None) or {}).get("family", NETWORK)


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


class TLearnerResponseModel(CampaignResponseModel):
    """A T-learner baseline (models/baselines.TLearner, pickled): it predicts the response only, so
    its expected revenue is p × the mean revenue of a response in its training rows
    (`meta["revenue_per_response"]`)."""

    def load_context(self, context):
        from campaignops.models.baselines import TLearner

        with open(context.artifacts["meta"]) as f:
            self.meta = json.load(f)
        self.model = TLearner.load(context.artifacts["tlearner"])
        self.model.meta = self.meta

    def predict_arrays(self, inputs: dict[str, np.ndarray], batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        if len(inputs["seq"]) == 0:
            return np.zeros(0), np.zeros(0)
        p = self.model.predict(inputs)
        return p, p * float(self.meta["revenue_per_response"])
