"""Turns a trained classifier's ONNX export into the graph we serve, and reads back what it serves.

The served graph has one input, `features` FP32 [batch, F], and one output, `score` FP32 [batch, 1],
the probability of the fraud class; its metadata carries the feature contract and the model name, so the
contract travels inside the file that Triton loads.
"""

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.utils import Extractor

from services.predict.contract import (
    INPUT_TENSOR,
    METADATA_FEATURE_NAMES,
    METADATA_FEATURE_SERVICE,
    METADATA_MODEL_NAME,
    OUTPUT_TENSOR,
    FeatureContract,
)

# skl2onnx names a classifier's probability output so when exported with options {"zipmap": False}.
_PROBABILITIES = "probabilities"
_FRAUD_CLASS = 1


@dataclass(frozen=True)
class ServingModel:
    name: str
    contract: FeatureContract


def to_serving_onnx(
    onnx_model: onnx.ModelProto, contract: FeatureContract, model_name: str
) -> onnx.ModelProto:
    """Reduce an skl2onnx binary classifier (zipmap=False) to the `features` -> `score` graph."""
    graph = onnx_model.graph
    if len(graph.input) != 1:
        raise ValueError(f"expected one input tensor, the export has {[i.name for i in graph.input]}")
    (source_input,) = graph.input
    if source_input.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise ValueError(f"input {source_input.name!r} must be FP32 so Triton can feed it as TYPE_FP32")
    width = source_input.type.tensor_type.shape.dim[-1].dim_value
    if width and width != contract.width:
        raise ValueError(
            f"the export takes {width} features but feature service {contract.feature_service} "
            f"lists {contract.width}"
        )
    if _PROBABILITIES not in {o.name for o in graph.output}:
        raise ValueError(
            f"expected an skl2onnx classifier exported with zipmap=False (output {_PROBABILITIES!r})"
        )

    served = onnx.ModelProto()
    served.CopyFrom(onnx_model)
    graph = served.graph
    for node in graph.node:
        node.input[:] = [INPUT_TENSOR if name == source_input.name else name for name in node.input]
    graph.input[0].name = INPUT_TENSOR
    graph.input[0].type.tensor_type.shape.dim[-1].dim_value = contract.width

    # Slicing keeps the column axis, so `score` is [batch, 1] as Triton's output dims [1] expect.
    slice_bounds = {"score_starts": _FRAUD_CLASS, "score_ends": _FRAUD_CLASS + 1, "score_axes": 1}
    graph.initializer.extend(
        numpy_helper.from_array(np.array([value], dtype=np.int64), name)
        for name, value in slice_bounds.items()
    )
    graph.node.append(helper.make_node("Slice", [_PROBABILITIES, *slice_bounds], [OUTPUT_TENSOR]))
    graph.output.append(helper.make_tensor_value_info(OUTPUT_TENSOR, onnx.TensorProto.FLOAT, [None, 1]))

    served = Extractor(served).extract_model([INPUT_TENSOR], [OUTPUT_TENSOR])
    helper.set_model_props(
        served,
        {
            METADATA_FEATURE_SERVICE: contract.feature_service,
            METADATA_FEATURE_NAMES: contract.joined_names,
            METADATA_MODEL_NAME: model_name,
        },
    )
    onnx.checker.check_model(served, full_check=True)
    return served


def read_serving_model(onnx_model: onnx.ModelProto) -> ServingModel:
    metadata = {prop.key: prop.value for prop in onnx_model.metadata_props}
    missing = {METADATA_FEATURE_SERVICE, METADATA_FEATURE_NAMES, METADATA_MODEL_NAME} - metadata.keys()
    if missing:
        raise ValueError(
            f"the ONNX file lacks serving metadata {sorted(missing)}; export it with to_serving_onnx"
        )
    contract = FeatureContract.parse(metadata[METADATA_FEATURE_SERVICE], metadata[METADATA_FEATURE_NAMES])
    return ServingModel(metadata[METADATA_MODEL_NAME], contract)
