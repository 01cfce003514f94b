"""Triton Python-backend model that scores with onnxruntime on CPU.

repository.py copies this file as `<model>/<version>/model.py`. It runs inside Triton's Python stub, in the
triton environment, so it imports nothing from this package.

Loading fails unless model.onnx was trained on exactly the feature contract that config.pbtxt publishes to
the gateway: features in a different order would still produce scores, just wrong ones.

Faults can be injected per tritonserver process for tests, demos and benchmarks, as the other services'
`SCOREGRAPH_<SERVICE>_FAULT_*` settings do: `SCOREGRAPH_TRITON_FAULT_DELAY_MS` (with `_DELAY_SHARE`,
default 1), `SCOREGRAPH_TRITON_FAULT_ERROR_SHARE` (answered UNAVAILABLE) and `SCOREGRAPH_TRITON_FAULT_HANG`
(no answer until the caller cancels).
"""

import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

# Mirrors services/predict/contract.py.
METADATA_FEATURE_SERVICE = "scoregraph.feature_service"
METADATA_FEATURE_NAMES = "scoregraph.feature_names"
PARAMETER_FEATURE_SERVICE = "feature_service"
PARAMETER_FEATURE_NAMES = "feature_names"
MODEL_FILENAME = "model.onnx"
FAULT_ENV_PREFIX = "SCOREGRAPH_TRITON_FAULT_"
_HANG_POLL_S = 0.005


@dataclass(frozen=True)
class Faults:
    delay_s: float = 0.0
    delay_share: float = 1.0
    error_share: float = 0.0
    hang: bool = False

    @classmethod
    def from_env(cls, env: dict[str, str]) -> "Faults":
        def number(name: str, default: float) -> float:
            return float(env.get(FAULT_ENV_PREFIX + name, "") or default)

        return cls(
            delay_s=number("DELAY_MS", 0.0) / 1000,
            delay_share=number("DELAY_SHARE", 1.0),
            error_share=number("ERROR_SHARE", 0.0),
            hang=env.get(FAULT_ENV_PREFIX + "HANG", "").lower() in {"1", "true", "yes", "on"},
        )

    def delay_for(self, requests: int, rng: random.Random) -> float:
        """Seconds to hold a batch of `requests`: the delay when any of them draws it."""
        if not self.delay_s or not any(rng.random() < self.delay_share for _ in range(requests)):
            return 0.0
        return self.delay_s


def contract_mismatch(
    feature_service: str, feature_names: list[str], model_metadata: dict[str, str]
) -> str | None:
    """Describe how model.onnx's feature contract differs from the config's, or None when it does not."""
    model_service = model_metadata.get(METADATA_FEATURE_SERVICE)
    model_names = model_metadata.get(METADATA_FEATURE_NAMES)
    if model_service is None or model_names is None:
        return f"{MODEL_FILENAME} has no feature contract in its metadata; export it with to_serving_onnx"
    if model_service != feature_service:
        return (
            f"{MODEL_FILENAME} was trained on feature service {model_service} "
            f"but config.pbtxt serves feature service {feature_service}"
        )
    model_names = model_names.split(",")
    if len(model_names) != len(feature_names):
        return (
            f"{MODEL_FILENAME} takes {len(model_names)} features "
            f"but feature service {feature_service} lists {len(feature_names)}"
        )
    for position, (model_name, config_name) in enumerate(zip(model_names, feature_names, strict=True)):
        if model_name != config_name:
            return (
                f"feature order in {MODEL_FILENAME} differs from feature service {feature_service} "
                f"at position {position}: {MODEL_FILENAME} has {model_name!r}, "
                f"config.pbtxt has {config_name!r}"
            )
    return None


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        feature_service = parameters[PARAMETER_FEATURE_SERVICE]
        feature_names = parameters[PARAMETER_FEATURE_NAMES].split(",")
        self._input_name = config["input"][0]["name"]
        self._output_name = config["output"][0]["name"]
        self._width = len(feature_names)

        options = ort.SessionOptions()
        # Triton runs one stub process per instance; more threads per session only contend for the cores.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        model_path = Path(args["model_repository"]) / args["model_version"] / MODEL_FILENAME
        self._session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])

        self._faults = Faults.from_env(dict(os.environ))
        self._rng = random.Random()

        mismatch = contract_mismatch(
            feature_service, feature_names, self._session.get_modelmeta().custom_metadata_map
        )
        if mismatch:
            raise pb_utils.TritonModelException(mismatch)
        model_inputs = [i.name for i in self._session.get_inputs()]
        if model_inputs != [self._input_name]:
            raise pb_utils.TritonModelException(
                f"{MODEL_FILENAME} takes inputs {model_inputs} but config.pbtxt feeds {self._input_name!r}"
            )

    def execute(self, requests: list) -> list:
        if self._faults.hang:
            return self._hang(requests)
        if self._faults.error_share and self._rng.random() < self._faults.error_share:
            return [
                pb_utils.InferenceResponse(
                    error=pb_utils.TritonError("injected fault", pb_utils.TritonError.UNAVAILABLE)
                )
                for _ in requests
            ]
        time.sleep(self._faults.delay_for(len(requests), self._rng))
        responses = [None] * len(requests)
        accepted, batches = [], []
        for index, request in enumerate(requests):
            features = pb_utils.get_input_tensor_by_name(request, self._input_name).as_numpy()
            if features.ndim != 2 or features.shape[1] != self._width:
                responses[index] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(
                        f"{self._input_name} must have shape [n, {self._width}], got {list(features.shape)}",
                        pb_utils.TritonError.INVALID_ARG,
                    )
                )
                continue
            accepted.append(index)
            batches.append(features)
        if not accepted:
            return responses

        try:
            (scores,) = self._session.run([self._output_name], {self._input_name: np.concatenate(batches)})
        except Exception as error:  # noqa: BLE001 - each request must still get a response
            for index in accepted:
                responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error)))
            return responses

        row_ends = np.cumsum([len(batch) for batch in batches])[:-1]
        for index, request_scores in zip(accepted, np.split(scores, row_ends), strict=True):
            responses[index] = pb_utils.InferenceResponse(
                [pb_utils.Tensor(self._output_name, request_scores)]
            )
        return responses

    def _hang(self, requests: list) -> list:
        # Held until every caller has gone (cancelled, or its Triton-side timeout passed), as a hung
        # replica would, and then released: Triton still needs a response per request.
        while not all(request.is_cancelled() for request in requests):
            time.sleep(_HANG_POLL_S)
        return [
            pb_utils.InferenceResponse(
                error=pb_utils.TritonError("cancelled", pb_utils.TritonError.CANCELLED)
            )
            for _ in requests
        ]
