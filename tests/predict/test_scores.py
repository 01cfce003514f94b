"""The predict client's check of what the model answered: one probability per row, or InvalidScores."""

import math

import numpy as np
import pytest

from services.predict.client import InvalidScores, scores_of


def test_the_first_column_is_the_rows_scores() -> None:
    output = np.array([[0.25, 0.75], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)

    assert scores_of(output, 3, "fraud_mlp version 1").tolist() == [0.25, 1.0, 0.0]


@pytest.mark.parametrize(
    "output",
    [
        None,
        np.array([0.5], dtype=np.float32),
        np.zeros((2, 1), dtype=np.float32),
        np.zeros((1, 0), dtype=np.float32),
    ],
    ids=["missing", "one-dimensional", "another-row-count", "no-column"],
)
def test_an_output_of_another_shape_is_refused_naming_the_model(output) -> None:
    with pytest.raises(InvalidScores, match="fraud_mlp version 1 answered"):
        scores_of(output, 1, "fraud_mlp version 1")


@pytest.mark.parametrize("score", [math.nan, -0.01, 1.5, math.inf, -3.2])
def test_a_score_that_is_no_probability_is_refused(score: float) -> None:
    output = np.array([[0.5], [score]], dtype=np.float32)

    with pytest.raises(InvalidScores, match=r"outside \[0, 1\]"):
        scores_of(output, 2, "fraud_mlp version 1")
