"""Write the synthetic history and live stream: python -m services.synthetic --out data/raw"""

import argparse
import json
from datetime import datetime
from pathlib import Path

from rich.console import Console

from services.synthetic.transactions import WorldSpec, default_anchor, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("data/raw"))
    parser.add_argument("--seed", type=int, default=WorldSpec.seed)
    parser.add_argument("--cards", type=int, default=WorldSpec.cards)
    parser.add_argument("--merchants", type=int, default=WorldSpec.merchants)
    parser.add_argument("--history-days", type=int, default=WorldSpec.history_days)
    parser.add_argument(
        "--anchor",
        type=datetime.fromisoformat,
        default=None,
        help="end of history / start of the live stream, ISO 8601 UTC (default: yesterday 00:00 UTC)",
    )
    args = parser.parse_args()
    spec = WorldSpec(
        seed=args.seed, cards=args.cards, merchants=args.merchants, history_days=args.history_days
    )
    anchor = args.anchor or default_anchor()
    console = Console(stderr=True)
    with console.status(f"generating {spec.history_days} days of transactions for {spec.cards} cards"):
        history, live = generate(spec, anchor)
    args.out.mkdir(parents=True, exist_ok=True)
    history.to_parquet(args.out / "history.parquet", index=False)
    live.to_parquet(args.out / "live.parquet", index=False)
    manifest = {
        "seed": spec.seed,
        "anchor": anchor.isoformat(),
        "history_rows": len(history),
        "live_rows": len(live),
        "history_fraud_rate": float(history["is_fraud"].mean()),
        "live_fraud_rate": float(live["is_fraud"].mean()),
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    console.log(
        f"history: {len(history)} transactions ({manifest['history_fraud_rate']:.2%} fraud); "
        f"live stream: {len(live)} ({manifest['live_fraud_rate']:.2%} fraud) -> {args.out}"
    )


if __name__ == "__main__":
    main()
