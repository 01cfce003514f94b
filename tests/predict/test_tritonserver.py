import os

import pytest

from services.predict.tritonserver import (
    TRITON_ENV_VARIABLE,
    TritonInstallation,
    remove_stale_shm,
    server_command,
    shm_prefix,
)


def test_runs_with_the_triton_environment_first_on_path(tmp_path):
    installation = TritonInstallation.locate()

    command = server_command(tmp_path, grpc_port=1, http_port=2, metrics_port=3, installation=installation)

    assert os.access(command.argv[0], os.X_OK)
    assert f"--model-repository={tmp_path}" in command.argv
    assert command.env["PATH"].split(os.pathsep)[0] == str(installation.env / "bin")
    assert command.env["LD_LIBRARY_PATH"].split(os.pathsep)[0] == str(installation.libraries)
    assert "PYTHONPATH" not in command.env


def test_backend_directory_pairs_the_python_backend_with_the_stub_for_its_python():
    installation = TritonInstallation.locate()

    backends = installation.backend_directory()
    again = installation.backend_directory()

    stub = backends / "python" / "triton_python_backend_stub"
    assert again == backends
    assert (backends / "python" / "libtriton_python.so").exists()
    assert stub.resolve().parent.name == installation.python_version
    assert os.access(stub, os.X_OK)


def test_explicit_mode_loads_the_whole_repository_at_start(tmp_path):
    command = server_command(
        tmp_path, grpc_port=1, http_port=2, metrics_port=3, model_control_mode="explicit"
    )

    assert "--load-model=*" in command.argv


def test_names_the_variable_when_no_triton_environment_is_found(tmp_path):
    with pytest.raises(FileNotFoundError, match=TRITON_ENV_VARIABLE):
        TritonInstallation.locate(tmp_path)


def test_a_killed_servers_shared_memory_is_removed_and_no_other_servers(tmp_path):
    mine = [tmp_path / f"{shm_prefix(8001)}{n}" for n in ("a1", "b2")]
    others = [tmp_path / f"{shm_prefix(8011)}c3", tmp_path / "sem.mp-xyz"]
    for region in mine + others:
        region.write_bytes(b"\0")

    assert sorted(remove_stale_shm(8001, shm=tmp_path)) == sorted(mine)
    assert sorted(tmp_path.iterdir()) == sorted(others)
