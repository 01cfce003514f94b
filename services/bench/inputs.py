"""What the contenders are sent: the same live transactions, in each API's own form.

The Feast SDK, Feast's feature server and scoregraph's features service all read the same entity rows (the
live transactions' hashed keys and request-time values), Triton gets the vectors those rows give, and both
GatewayService endpoints (the graph and the monolith) get the transactions themselves. Requests are built
before any clock starts, so the figures hold the servers' work, not ours.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scoregraph.features.v1 import features_pb2
from scoregraph.gateway.v1 import gateway_pb2

from services.features.aggregates import with_entity_keys
from services.features.feature_service import contract_of, entity_frame, historical_matrix, open_store
from services.features.keys import DEV_CARD_KEY
from services.gateway.translate import translate_transaction
from services.stack.traffic import score_request

#: The model's feature service: what the gateway asks the features service for.
FEATURE_SERVICE = "fraud_model_v1"


@dataclass(frozen=True)
class BenchInputs:
    score_requests: list[gateway_pb2.ScoreRequest]
    """Every live transaction, as GatewayService.Score requests."""
    entity_rows: list[dict[str, object]]
    """Feast entity rows (keys and request values) of the first transactions."""
    feature_requests: list[features_pb2.GetFeaturesRequest]
    """The same transactions as the gateway asks the features service for them."""
    feast_bodies: list[bytes]
    """The same rows as JSON bodies of Feast's POST /get-online-features."""
    vectors: np.ndarray
    """The model inputs of the same transactions, for Triton."""


def bench_inputs(live: pd.DataFrame, n: int) -> BenchInputs:
    """Every live transaction for the Score endpoints; the first `n` in the other forms."""
    head = live.head(n)
    tx = with_entity_keys(head, DEV_CARD_KEY)
    entities = entity_frame(tx).drop(columns=["event_timestamp", "transaction_id"])
    rows = entities.to_dict("records")
    store = open_store()
    vectors = historical_matrix(store, tx, contract_of(store, FEATURE_SERVICE)).to_numpy(dtype=np.float32)
    return BenchInputs(
        score_requests=[score_request(row) for row in live.itertuples(index=False)],
        entity_rows=rows,
        feature_requests=[
            translate_transaction(score_request(row).transaction, DEV_CARD_KEY, FEATURE_SERVICE)
            for row in head.itertuples(index=False)
        ],
        feast_bodies=[
            json.dumps(
                {"feature_service": FEATURE_SERVICE, "entities": {k: [v] for k, v in row.items()}}
            ).encode()
            for row in rows
        ],
        vectors=vectors,
    )
