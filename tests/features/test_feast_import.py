"""Importing feast leaves the process's Prometheus metrics in it (services/features/__init__.py)."""

import json
import os
import subprocess
import sys

import prometheus_client.values
import pytest

from services.stack.topology import REPO

_DIR_VARIABLES = ("PROMETHEUS_MULTIPROCESS_DIR", "PROMETHEUS_MULTIPROC_DIR")

_REPORT = """
import json, os, sys, importlib
importlib.import_module(sys.argv[1])
import prometheus_client, prometheus_client.values
counter = prometheus_client.Counter("probe", "a metric made after feast is imported")
counter.inc()
print(json.dumps({
    "value_class": prometheus_client.values.ValueClass.__name__,
    "environment": {name: os.environ.get(name) for name in sys.argv[2:]},
}))
"""


def _import_in_a_process(module: str, tmp_path, **environment: str) -> dict:
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in _DIR_VARIABLES}
    done = subprocess.run(
        [sys.executable, "-c", _REPORT, module, *_DIR_VARIABLES],
        cwd=REPO,
        env={**env, "TMPDIR": str(temporary), **environment},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    left = sorted(p.name for p in temporary.iterdir())
    return {**json.loads(done.stdout.splitlines()[-1]), "left_in_tmp": left}


@pytest.mark.parametrize("module", ["services.features.__main__", "services.bench.__main__"])
def test_importing_feast_leaves_metrics_in_the_process_and_nothing_in_tmp(module, tmp_path) -> None:
    # The features service's entry point, and the benchmark's (the stacks it starts inherit its environment).
    report = _import_in_a_process(module, tmp_path)
    assert report == {
        "value_class": "MutexValue",
        "environment": dict.fromkeys(_DIR_VARIABLES),
        "left_in_tmp": [],
    }


def test_a_multiprocess_directory_the_user_set_is_kept(tmp_path) -> None:
    chosen = tmp_path / "metrics"
    chosen.mkdir()
    report = _import_in_a_process("services.features.online", tmp_path, PROMETHEUS_MULTIPROC_DIR=str(chosen))
    assert report["value_class"] == "MmapedValue"
    # Feast still made a directory of its own under its own name for the variable; that one goes.
    assert report["environment"] == {
        "PROMETHEUS_MULTIPROCESS_DIR": None,
        "PROMETHEUS_MULTIPROC_DIR": str(chosen),
    }
    assert report["left_in_tmp"] == []
    assert any(p.name.startswith("counter_") for p in chosen.iterdir())


def test_the_test_process_passes_no_metrics_directory_on_to_the_stacks_it_starts() -> None:
    import services.features.online  # noqa: F401  (imported by the other tests anyway; here, for certain)

    assert not any(name in os.environ for name in _DIR_VARIABLES)
    assert prometheus_client.values.ValueClass is prometheus_client.values.MutexValue
