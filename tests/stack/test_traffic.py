from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from services.stack.traffic import SCORING_MARGIN, days_to_move, load_live

WEEK = timedelta(days=7)
OLDEST = datetime(2026, 11, 21, 0, 1, tzinfo=UTC)
NEWEST = OLDEST + timedelta(hours=23, minutes=58)


@pytest.mark.parametrize(
    ("now", "days"),
    [
        # Built the day after the live day, and on every day the gateway still takes it with time to score.
        (OLDEST + timedelta(days=1), 0),
        (OLDEST + WEEK - SCORING_MARGIN, 0),
        # Then by the fewest whole days that bring the oldest transaction back inside the window.
        (OLDEST + WEEK - SCORING_MARGIN + timedelta(seconds=1), 1),
        (OLDEST + WEEK + timedelta(days=1), 2),
        (OLDEST + timedelta(days=30), 24),
    ],
)
def test_the_stream_moves_only_once_the_gateway_would_refuse_its_oldest_transaction(now, days):
    assert days_to_move(OLDEST, NEWEST, now, WEEK) == days
    assert now - WEEK + SCORING_MARGIN <= OLDEST + timedelta(days=days)
    assert NEWEST + timedelta(days=days) <= now


def test_a_window_shorter_than_the_stream_never_moves_it_into_the_future():
    now = NEWEST + timedelta(days=3, hours=1)
    assert days_to_move(OLDEST, NEWEST, now, timedelta(hours=12)) == 3


def stream(tmp_path, *times: datetime):
    path = tmp_path / "live.parquet"
    pd.DataFrame({"transaction_id": [f"t{i}" for i in range(len(times))], "created_at": times}).to_parquet(
        path
    )
    return path


def test_a_stream_within_the_window_is_scored_as_generated(tmp_path):
    path = stream(tmp_path, OLDEST, OLDEST + timedelta(hours=23))
    live = load_live(path, now=OLDEST + timedelta(days=5), max_age=WEEK)
    assert live.attrs["days_moved"] == 0
    assert list(live["created_at"]) == [pd.Timestamp(OLDEST), pd.Timestamp(OLDEST + timedelta(hours=23))]


def test_a_stream_past_the_window_moves_by_whole_days_keeping_each_hour(tmp_path):
    path = stream(tmp_path, OLDEST, OLDEST + timedelta(hours=23, minutes=30))
    live = load_live(path, now=OLDEST + timedelta(days=10), max_age=WEEK)
    assert live.attrs["days_moved"] == 4
    assert list(live["created_at"]) == [
        pd.Timestamp(OLDEST + timedelta(days=4)),
        pd.Timestamp(OLDEST + timedelta(days=4, hours=23, minutes=30)),
    ]


def test_the_window_is_the_gateways_setting_unless_given(tmp_path, monkeypatch):
    path = stream(tmp_path, OLDEST)
    now = OLDEST + timedelta(days=3)
    assert load_live(path, now=now).attrs["days_moved"] == 0
    monkeypatch.setenv("SCOREGRAPH_GATEWAY_MAX_TRANSACTION_AGE_S", str(24 * 3600))
    assert load_live(path, now=now).attrs["days_moved"] == 3
