"""Train the fraud model on point-in-time-correct Feast features, export it to ONNX, write the model card.

    python -m services.predict.training --version 1

The training set is Feast's `get_historical_features` over the labelled history: every transaction sees
the feature rows stamped before it, never after. The split is by time (earlier weeks train, the last weeks
are held out), as the model will always score transactions later than anything it saw.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
from rich.console import Console
from skl2onnx import to_onnx
from sklearn.impute import SimpleImputer
from sklearn.metrics import average_precision_score, precision_score, recall_score, roc_auc_score
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from services.features.feature_service import MISSING_VALUE, contract_of, historical_matrix, open_store
from services.predict.contract import INPUT_TENSOR, OUTPUT_TENSOR, FeatureContract
from services.predict.onnx_export import to_serving_onnx
from services.predict.repository import CPU_REPOSITORY, GPU_REPOSITORY, write_repositories

DATA = Path(__file__).resolve().parents[2] / "data"
MODEL_NAME = "fraud_mlp"
FEATURE_SERVICE = "fraud_model_v1"
HELD_OUT_DAYS = 14
#: The rule a fraud team starts with: flag any transaction above this many US dollars.
RULE_AMOUNT_USD = 500.0
#: onnxruntime in-process and scikit-learn must agree to this absolute tolerance on every score.
EXPORT_ATOL = 1e-4
THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)

console = Console(stderr=True)


@dataclass(frozen=True)
class Evaluation:
    roc_auc: float
    pr_auc: float
    rule_roc_auc: float
    rule_pr_auc: float
    rule_precision: float
    rule_recall: float
    positives: int
    rows: int


def build_model(seed: int) -> Pipeline:
    mlp = MLPClassifier(
        hidden_layer_sizes=(64, 32),
        alpha=1e-4,
        batch_size=512,
        learning_rate_init=2e-3,
        max_iter=40,
        early_stopping=True,
        validation_fraction=0.1,
        n_iter_no_change=5,
        random_state=seed,
    )
    # The features service reports a missing feature as NaN (and flags it); the model's own imputer decides
    # what it reads as, so serving and training can never disagree about it.
    impute = SimpleImputer(strategy="constant", fill_value=MISSING_VALUE, keep_empty_features=True)
    return Pipeline([("impute", impute), ("scale", StandardScaler()), ("mlp", mlp)])


def evaluate(y: np.ndarray, score: np.ndarray, amount_usd: np.ndarray) -> Evaluation:
    flagged = amount_usd > RULE_AMOUNT_USD
    return Evaluation(
        roc_auc=float(roc_auc_score(y, score)),
        pr_auc=float(average_precision_score(y, score)),
        rule_roc_auc=float(roc_auc_score(y, amount_usd)),
        rule_pr_auc=float(average_precision_score(y, amount_usd)),
        rule_precision=float(precision_score(y, flagged, zero_division=0)),
        rule_recall=float(recall_score(y, flagged)),
        positives=int(y.sum()),
        rows=len(y),
    )


def score_distribution(y: np.ndarray, score: np.ndarray) -> dict:
    quantiles = (0.5, 0.9, 0.99, 0.999)
    bands = []
    for t in THRESHOLDS:
        flagged = score >= t
        bands.append(
            {
                "threshold": t,
                "flagged_share": float(flagged.mean()),
                "precision": float(precision_score(y, flagged, zero_division=0)),
                "recall": float(recall_score(y, flagged)),
            }
        )
    return {
        "legit_quantiles": {str(q): float(np.quantile(score[y == 0], q)) for q in quantiles},
        "fraud_quantiles": {str(q): float(np.quantile(score[y == 1], q)) for q in (0.1, 0.25, 0.5, 0.75)},
        "thresholds": bands,
    }


def export(model: Pipeline, contract: FeatureContract, sample: np.ndarray, out: Path) -> None:
    raw = to_onnx(model, sample[:1], options={id(model): {"zipmap": False}}, target_opset=17)
    served = to_serving_onnx(raw, contract, MODEL_NAME)
    onnx.save(served, out)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (onnx_score,) = session.run([OUTPUT_TENSOR], {INPUT_TENSOR: sample})
    gap = float(np.abs(onnx_score[:, 0] - model.predict_proba(sample)[:, 1]).max())
    if gap > EXPORT_ATOL:
        raise RuntimeError(f"ONNX export disagrees with scikit-learn by {gap:.2e} (> {EXPORT_ATOL})")


def model_card(contract, version, window, evaluation, distribution, train_rows, seconds) -> tuple[dict, str]:
    card = {
        "model_name": MODEL_NAME,
        "version": version,
        "feature_service": contract.feature_service,
        "features_in_order": list(contract.feature_names),
        "training_window": window,
        "train_rows": train_rows,
        "training_seconds": round(seconds, 1),
        "held_out": asdict(evaluation),
        "held_out_score_distribution": distribution,
    }
    e = evaluation
    rows = "\n".join(
        f"| {b['threshold']:.2f} | {b['flagged_share']:.4f} | {b['precision']:.3f} | {b['recall']:.3f} |"
        for b in distribution["thresholds"]
    )
    features = "\n".join(f"{i}. `{name}`" for i, name in enumerate(contract.feature_names))
    text = f"""# Model card: {MODEL_NAME} version {version}

A multilayer perceptron (scikit-learn: missing inputs read as {MISSING_VALUE}, standardised, two hidden
layers) scoring card transactions for fraud. Input: {contract.width} features from Feast feature service
`{contract.feature_service}`, in this order (the order is recorded in the ONNX metadata and in Triton's
config; a mismatch is refused at load):

{features}

## Training
- Window: {window["train_start"]} to {window["train_end"]} ({train_rows} labelled transactions), point-in-time
  features from Feast's `get_historical_features`; trained in {seconds:.0f} s.
- Held out: {window["held_out_start"]} to {window["held_out_end"]}
  ({e.rows} transactions, {e.positives} fraud).

## Held-out results
| | ROC AUC | PR AUC |
|---|---|---|
| {MODEL_NAME} | {e.roc_auc:.4f} | {e.pr_auc:.4f} |
| rule: amount (USD) as the score | {e.rule_roc_auc:.4f} | {e.rule_pr_auc:.4f} |

The rule "flag above ${RULE_AMOUNT_USD:.0f}" has precision {e.rule_precision:.3f}
and recall {e.rule_recall:.3f}.

## Score distribution (held out)
Legitimate transactions' score quantiles: {distribution["legit_quantiles"]}.
Fraudulent transactions' score quantiles: {distribution["fraud_quantiles"]}.

| threshold | share flagged | precision | recall |
|---|---|---|---|
{rows}
"""
    return card, text


def train(version: int, seed: int = 7, history: Path = DATA / "features" / "transactions.parquet") -> dict:
    started = time.perf_counter()
    store = open_store()
    contract = contract_of(store, FEATURE_SERVICE)
    tx = pd.read_parquet(history)
    with console.status("point-in-time features from Feast (get_historical_features)"):
        matrix = historical_matrix(store, tx, contract)
    console.log(f"training set: {matrix.shape[0]} rows x {matrix.shape[1]} features")

    split = tx["created_at"].max().floor("D") - pd.Timedelta(days=HELD_OUT_DAYS)
    train_rows, test_rows = (tx["created_at"] < split).to_numpy(), (tx["created_at"] >= split).to_numpy()
    x, y = matrix.to_numpy(dtype=np.float32), tx["is_fraud"].to_numpy().astype(int)
    model = build_model(seed)
    with console.status(f"training on {train_rows.sum()} rows"):
        fit_started = time.perf_counter()
        model.fit(x[train_rows], y[train_rows])
    console.log(f"trained in {time.perf_counter() - fit_started:.0f} s ({model['mlp'].n_iter_} epochs)")

    score = model.predict_proba(x[test_rows])[:, 1]
    evaluation = evaluate(y[test_rows], score, tx.loc[test_rows, "amount_usd"].to_numpy())
    window = {
        "train_start": str(tx["created_at"].min()),
        "train_end": str(split),
        "held_out_start": str(split),
        "held_out_end": str(tx["created_at"].max()),
    }
    card, text = model_card(
        contract,
        version,
        window,
        evaluation,
        score_distribution(y[test_rows], score),
        int(train_rows.sum()),
        time.perf_counter() - started,
    )
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export(model, contract, x[test_rows][:2048], onnx_path)
        write_repositories(onnx_path, version)
    for root in (CPU_REPOSITORY, GPU_REPOSITORY):
        version_dir = root / MODEL_NAME / str(version)
        (version_dir / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
        (version_dir / "MODEL_CARD.md").write_text(text)
    console.log(
        f"held out: ROC AUC {evaluation.roc_auc:.4f}, PR AUC {evaluation.pr_auc:.4f}; "
        f"amount rule: ROC AUC {evaluation.rule_roc_auc:.4f}, PR AUC {evaluation.rule_pr_auc:.4f}"
    )
    return card


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", type=int, default=1, help="Triton model version to write")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    train(args.version, args.seed)


if __name__ == "__main__":
    main()
