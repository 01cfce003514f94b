import numpy as np
import onnx
import onnxruntime as ort
import pytest

from services.predict.contract import FeatureContract
from services.predict.onnx_export import read_serving_model, to_serving_onnx

from .fraud_model import FEATURE_NAMES, FEATURE_SERVICE, MODEL_NAME


def test_served_graph_is_features_to_fraud_probability(classifier_export):
    served = to_serving_onnx(classifier_export, FeatureContract(FEATURE_SERVICE, FEATURE_NAMES), MODEL_NAME)
    features = np.random.default_rng(0).normal(size=(5, len(FEATURE_NAMES))).astype(np.float32)

    original = ort.InferenceSession(classifier_export.SerializeToString())
    (probabilities,) = original.run(["probabilities"], {original.get_inputs()[0].name: features})
    session = ort.InferenceSession(served.SerializeToString())
    (scores,) = session.run(None, {"features": features})

    assert [(o.name, o.shape[1]) for o in session.get_outputs()] == [("score", 1)]
    np.testing.assert_array_equal(scores[:, 0], probabilities[:, 1])


def test_metadata_round_trips(model_onnx):
    served = read_serving_model(onnx.load(model_onnx))

    assert served.name == MODEL_NAME
    assert served.contract == FeatureContract(FEATURE_SERVICE, FEATURE_NAMES)


def test_refuses_a_contract_of_another_width(classifier_export):
    with pytest.raises(ValueError, match="takes 6 features but feature service fraud_model_v1 lists 2"):
        to_serving_onnx(classifier_export, FeatureContract(FEATURE_SERVICE, ("a__x", "a__y")), MODEL_NAME)


def test_refuses_an_onnx_file_without_serving_metadata(classifier_export):
    with pytest.raises(ValueError, match="lacks serving metadata"):
        read_serving_model(classifier_export)
