import os
import subprocess
import sys
from pathlib import Path


def test_start_up_fails_on_an_invalid_policy_naming_file_and_field(write_policy) -> None:
    path = write_policy(text="policy_version: x\napplies_to: {model: fraud_mlp, versions: ['1']}\n")
    environment = {**os.environ, "SCOREGRAPH_POSTPROCESS_POLICY_DIR": str(path.parent)}

    finished = subprocess.run(
        [sys.executable, "-m", "services.postprocess"],
        env=environment,
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert finished.returncode == 1
    assert str(path) in finished.stdout
    assert "thresholds: Field required" in finished.stdout
