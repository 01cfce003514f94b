"""The README's settings tables and span attribute list, rendered from the code so they cannot drift.

python -m services.stack settings            # print the tables
python -m services.stack settings --write    # rewrite them in README.md
"""

from __future__ import annotations

import importlib
from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings

from services.stack.topology import REPO

README = REPO / "README.md"
BLOCKS = {
    "settings": ("<!-- settings:start -->", "<!-- settings:end -->"),
    "attributes": ("<!-- span-attributes:start -->", "<!-- span-attributes:end -->"),
}
SETTINGS = {
    "gateway": "services.gateway.settings:GatewaySettings",
    "features": "services.features.settings:FeaturesSettings",
    "postprocess": "services.postprocess.settings:PostprocessSettings",
    "local stack (make up, make demo)": "services.stack.topology:StackSettings",
    "local trace receiver (make up, make demo)": "services.stack.collector:CollectorSettings",
}
#: Read outside a settings class: by the Triton launcher and the offline feature pipeline.
OTHER = [
    (
        "SCOREGRAPH_TRITON_ENV",
        "`.venv-triton`",
        "Python environment holding tritonserver (nvidia-pytriton) and "
        "the model's runtime (numpy<2, onnxruntime); its bin/ goes first on PATH for the Python backend "
        "stub.",
    ),
    (
        "SCOREGRAPH_CARD_KEY",
        "development key",
        "HMAC key the offline feature build hashes card numbers with; "
        "must equal the gateway's `SCOREGRAPH_GATEWAY_CARD_KEY`.",
    ),
    (
        "SCOREGRAPH_REDIS_ADDRESS",
        "unset",
        "Redis `host:port` for `feast -f feature_store.redis.yaml` (the "
        "feast CLI on the Redis online store).",
    ),
    (
        "SCOREGRAPH_TRITON_OTLP_TRACES_URL",
        "unset",
        "Full OTLP/HTTP URL Triton exports its spans to (Triton "
        "speaks OTLP over HTTP only); set it when the services export over gRPC.",
    ),
    (
        "OTEL_*",
        "",
        "OpenTelemetry's standard variables: OTEL_EXPORTER_OTLP_ENDPOINT (setting it turns export on), "
        "OTEL_EXPORTER_OTLP_PROTOCOL (http/protobuf or grpc; another is refused at start), "
        "OTEL_TRACES_EXPORTER (otlp or none), OTEL_TRACES_SAMPLER(_ARG), OTEL_SERVICE_NAME, "
        "OTEL_BSP_* (Triton's exporter takes the schedule delay, queue size and export batch size too).",
    ),
]


def _default(value: object) -> str:
    if isinstance(value, SecretStr):
        return "development key"
    if value is None:
        return "unset"
    if isinstance(value, Path):
        value = value.relative_to(REPO) if value.is_relative_to(REPO) else value
    if isinstance(value, list):
        value = ",".join(map(str, value))
    return f"`{value}`"


def _table(cls: type[BaseSettings]) -> list[str]:
    prefix = cls.model_config.get("env_prefix", "")
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in cls.model_fields.items():
        meaning = " ".join((field.description or "").split())
        rows.append(f"| `{prefix}{name.upper()}` | {_default(field.default)} | {meaning} |")
    return rows


def render() -> str:
    lines: list[str] = []
    for title, target in SETTINGS.items():
        module, _, name = target.partition(":")
        lines += [f"**{title}**", "", *_table(getattr(importlib.import_module(module), name)), ""]
    lines += ["**elsewhere**", "", "| variable | default | meaning |", "|---|---|---|"]
    lines += [f"| `{var}` | {default} | {meaning} |" for var, default, meaning in OTHER]
    return "\n".join(lines)


def render_attributes() -> str:
    from services.runtime.tracing import SPAN_ATTRIBUTES

    rows = ["| span attribute | meaning |", "|---|---|"]
    return "\n".join(rows + [f"| `{key}` | {meaning} |" for key, meaning in SPAN_ATTRIBUTES.items()])


RENDERERS = {"settings": render, "attributes": render_attributes}


def readme_block(text: str, block: str = "settings") -> str:
    start, end = BLOCKS[block]
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def write_readme() -> None:
    text = README.read_text()
    for block, (start, end) in BLOCKS.items():
        head, rest = text.split(start, 1)
        text = f"{head}{start}\n{RENDERERS[block]()}\n{end}{rest.split(end, 1)[1]}"
    README.write_text(text)
