"""The metadata cost's measurement, briefly, on real postprocess servers."""

import pytest

from services.bench import metadata_cost

pytestmark = pytest.mark.integration


async def test_each_mode_is_measured_on_a_server_of_its_own_that_answered_every_call():
    results = await metadata_cost.measure(rounds=2, turn_s=0.5)

    assert [result.mode for result in results] == list(metadata_cost.MODES)
    for result in results:
        assert result.errors == 0, result.mode.name
        assert len(result.server_us) == len(result.client_us) == len(result.rates) == 2
        assert result.rate > 0
        # A server's CPU per call is its own: a server that served no call, or the same for all, would not be.
        assert 10 < result.server < 100_000, result.mode.name
    table = metadata_cost.table(results)
    assert [line.split(" | ")[0].lstrip("| ") for line in table.splitlines()[2:]] == [
        mode.name for mode in metadata_cost.MODES
    ]
    assert "| +0 |" in table.splitlines()[2]  # the baseline against itself
