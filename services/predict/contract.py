"""The feature contract a model is served with: which Feast feature service, in which order.

Kept free of onnx and protobuf imports so the gateway's client can use it cheaply.
"""

from collections.abc import Mapping
from dataclasses import dataclass

INPUT_TENSOR = "features"
OUTPUT_TENSOR = "score"

# Keys in the ONNX file's metadata_props; triton_backend.py repeats them because it runs
# inside Triton's Python stub, where this package is not importable.
METADATA_FEATURE_SERVICE = "scoregraph.feature_service"
METADATA_FEATURE_NAMES = "scoregraph.feature_names"
METADATA_MODEL_NAME = "scoregraph.model_name"

# Keys in config.pbtxt's parameters, which is how the contract reaches the gateway.
PARAMETER_FEATURE_SERVICE = "feature_service"
PARAMETER_FEATURE_NAMES = "feature_names"

_NAME_SEPARATOR = ","


@dataclass(frozen=True)
class FeatureContract:
    feature_service: str
    feature_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.feature_service:
            raise ValueError("feature contract has no feature service name")
        if not self.feature_names:
            raise ValueError(f"feature service {self.feature_service} lists no features")
        separated = [name for name in self.feature_names if not name or _NAME_SEPARATOR in name]
        if separated:
            raise ValueError(f"feature names must be non-empty and free of {_NAME_SEPARATOR!r}: {separated}")
        if len(set(self.feature_names)) != len(self.feature_names):
            raise ValueError(f"feature service {self.feature_service} lists a feature twice")

    @property
    def width(self) -> int:
        return len(self.feature_names)

    @property
    def joined_names(self) -> str:
        return _NAME_SEPARATOR.join(self.feature_names)

    def as_parameters(self) -> dict[str, str]:
        return {PARAMETER_FEATURE_SERVICE: self.feature_service, PARAMETER_FEATURE_NAMES: self.joined_names}

    @classmethod
    def parse(cls, feature_service: str, joined_names: str) -> "FeatureContract":
        return cls(feature_service, tuple(joined_names.split(_NAME_SEPARATOR)))

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str]) -> "FeatureContract":
        missing = {PARAMETER_FEATURE_SERVICE, PARAMETER_FEATURE_NAMES} - parameters.keys()
        if missing:
            raise ValueError(f"model config lacks the feature contract parameters {sorted(missing)}")
        return cls.parse(parameters[PARAMETER_FEATURE_SERVICE], parameters[PARAMETER_FEATURE_NAMES])
