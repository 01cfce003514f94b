# prometheus_client chooses, when first imported, where every metric of the process keeps its values: in
# the process, or in files if PROMETHEUS_MULTIPROC_DIR is set then. Importing feast sets it (see
# services/features/__init__.py), so prometheus_client comes first, before anything here imports feast.
import prometheus_client  # noqa: F401
