"""deploy/compose.yaml cannot run here (no container engine); these keep it consistent with the code."""

import yaml

from services.features.settings import FeaturesSettings
from services.postprocess.settings import PostprocessSettings
from services.predict.tritonserver import trace_args
from services.stack.topology import REPO

COMPOSE = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]


def test_jaeger_receives_otlp_from_every_scoregraph_service():
    assert SERVICES["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    for name in ("gateway", "features", "postprocess"):
        env = SERVICES[name]["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://jaeger:4317"), name
        assert env["OTEL_SERVICE_NAME"] == f"scoregraph-{name}"
    triton_args = " ".join(SERVICES["triton"]["command"])
    assert "mode=opentelemetry" in triton_args and "jaeger:4318/v1/traces" in triton_args
    # The rate the embedded stack's tritonserver runs with: whatever the sampler, Triton traces the calls
    # the gateway sampled, which alone send it their trace context.
    [rate] = [
        arg for arg in trace_args({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4318"}) if "rate=" in arg
    ]
    assert rate in SERVICES["triton"]["command"]


def test_the_gateway_reaches_each_upstream_on_the_port_it_listens_on():
    env = SERVICES["gateway"]["environment"]
    assert env["SCOREGRAPH_GATEWAY_FEATURES_ADDRESSES"] == f"features:{FeaturesSettings().port}"
    assert env["SCOREGRAPH_GATEWAY_POSTPROCESS_ADDRESSES"] == f"postprocess:{PostprocessSettings().port}"
    assert env["SCOREGRAPH_GATEWAY_TRITON_ADDRESSES"] == "triton:8001"
    for name in ("gateway", "features", "postprocess"):
        prefix = f"SCOREGRAPH_{name.upper()}_HOST"
        assert SERVICES[name]["environment"][prefix] == "0.0.0.0", "bind beyond loopback in a container"


def test_the_features_replicas_read_redis_that_the_materialize_job_filled():
    features = SERVICES["features"]
    assert features["environment"]["SCOREGRAPH_FEATURES_ONLINE_STORE"] == "redis"
    assert features["depends_on"]["materialize"]["condition"] == "service_completed_successfully"
    assert "feature_store.redis.yaml materialize-incremental" in " ".join(SERVICES["materialize"]["command"])
