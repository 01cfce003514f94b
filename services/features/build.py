"""Feature tables for Feast's offline store from the raw history: python -m services.features.build

Writes data/features/<view>.parquet and the labelled data-domain transactions (hashed keys, no card numbers)
that training reads. `feast apply` and `feast materialize` then load them (make features).
"""

import argparse
import os
from pathlib import Path

import pandas as pd
from rich.console import Console

from services.features.aggregates import with_entity_keys, write_tables
from services.features.keys import DEV_CARD_KEY


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, default=Path("data/raw/history.parquet"))
    parser.add_argument("--out", type=Path, default=Path("data/features"))
    args = parser.parse_args()
    console = Console(stderr=True)
    key = os.environ.get("SCOREGRAPH_CARD_KEY", DEV_CARD_KEY)
    with console.status("hashing entity keys"):
        tx = with_entity_keys(pd.read_parquet(args.raw), key)
    with console.status("computing time-stamped aggregates"):
        rows = write_tables(tx, args.out)
    tx.to_parquet(args.out / "transactions.parquet", index=False)
    console.log(f"feature tables {rows} -> {args.out}")


if __name__ == "__main__":
    main()
