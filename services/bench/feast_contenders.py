"""Feast itself, as users would run it instead of scoregraph's features service: its SDK in process (the
floor under any feature server) and its own feature server (`feast serve`, HTTP), on the same store."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from services.bench.calls import CALL_TIMEOUT_S
from services.bench.inputs import FEATURE_SERVICE
from services.bench.loadgen import Call
from services.bench.processes import FEAST_SERVER_PORT, Spawned, http_ok, wait_until
from services.features.feature_service import FEATURE_REPO, open_store

FEAST_SERVER_URL = f"http://127.0.0.1:{FEAST_SERVER_PORT}"


@asynccontextmanager
async def feast_sdk_call(rows: list[dict[str, object]]) -> AsyncIterator[Call]:
    """Feast's `get_online_features` in this process, one entity row a call."""
    store = open_store()
    service = store.get_feature_service(FEATURE_SERVICE)

    async def call(i: int) -> object:
        return store.get_online_features(features=service, entity_rows=[rows[i % len(rows)]])

    yield call


def start_feast_server(out: Path) -> Spawned:
    """`feast serve` on scoregraph's feature repository: one worker, as one features replica is one process.

    Gunicorn recycles Feast's worker every 1000 requests by default; a worker that restarts in the middle
    of a step would measure its start-up, not its serving, so recycling is off.
    """
    feast = Path(sys.executable).with_name("feast")
    server = Spawned(
        [str(feast), "--chdir", str(FEATURE_REPO), "serve", "--host", "127.0.0.1"]
        + ["--port", str(FEAST_SERVER_PORT), "--workers", "1", "--max-requests", "0"],
        {},
        out / "feast-serve.log",
    )
    wait_until(lambda: http_ok(f"{FEAST_SERVER_URL}/health"), server, 120, "feast serve")
    return server


@asynccontextmanager
async def feast_server_call(bodies: list[bytes]) -> AsyncIterator[Call]:
    """POST /get-online-features on `feast serve`, one entity row a call."""
    url = f"{FEAST_SERVER_URL}/get-online-features"
    headers = {"Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)
    # HTTP/1.1 takes a connection per call in flight; beyond 100 the calls wait their turn, on our clock.
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=100)) as session:

        async def call(i: int) -> bytes:
            async with session.post(url, data=bodies[i % len(bodies)], headers=headers) as response:
                response.raise_for_status()
                return await response.read()

        yield call
