"""The fetch stage with the live event log (``--events``): events become each user's latest ratings."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_exchange_center import schema as S
from data_exchange_center.events import Event, StoredEvent, events_frame, read_event_log
from data_exchange_center.paths import ArtifactPaths
from offline.preprocess.fetch import fetch_dataset
from offline.preprocess.s0_fetch_data import main as s0_main
from offline.preprocess.split import split_by_time
from offline.preprocess.synthetic import SyntheticConfig

pytestmark = pytest.mark.unit
CONFIG = SyntheticConfig(n_users=60, n_items=80, n_ratings=3000, seed=5)


def log_frame(events: list[Event]) -> pd.DataFrame:
    return events_frame([StoredEvent(i + 1, e) for i, e in enumerate(events)])


def test_without_events_the_tables_are_the_dataset_exactly(tmp_path: Path) -> None:
    plain = fetch_dataset("synthetic", ArtifactPaths(tmp_path / "a"), synthetic=CONFIG)
    empty = fetch_dataset("synthetic", ArtifactPaths(tmp_path / "b"), synthetic=CONFIG, events=log_frame([]))
    pd.testing.assert_frame_equal(plain.ratings, empty.ratings)
    pd.testing.assert_frame_equal(plain.users, empty.users)


def test_events_are_each_users_latest_ratings_and_new_users_join(tmp_path: Path) -> None:
    plain = fetch_dataset("synthetic", ArtifactPaths(tmp_path / "a"), synthetic=CONFIG)
    user = int(plain.ratings[S.USER_ID].iloc[0])
    rated = int(plain.ratings[plain.ratings[S.USER_ID] == user][S.ITEM_ID].iloc[0])
    item = int(plain.items[S.ITEM_ID].iloc[-1])
    new_user = int(plain.users[S.USER_ID].max()) + 1000
    t = int(plain.ratings[S.TIMESTAMP].max()) + 10
    events = [
        Event("e1", user, rated, 5.0, None, t),  # re-rates an item: the latest rating stays
        Event("e2", new_user, item, 4.0, None, t + 1),
        Event("e3", new_user, 10**9, 4.0, None, t + 2),  # not in the catalogue: dropped
    ]
    paths = ArtifactPaths(tmp_path / "b")
    merged = fetch_dataset("synthetic", paths, synthetic=CONFIG, events=log_frame(events))
    assert len(merged.ratings) == len(plain.ratings) + 1  # +e2; e1 replaced an existing rating
    mine = merged.ratings[merged.ratings[S.USER_ID] == user]
    assert mine[S.ITEM_ID].tolist().count(rated) == 1
    assert mine.iloc[-1][S.ITEM_ID] == rated and mine.iloc[-1][S.RATING] == 5.0
    assert new_user in merged.users[S.USER_ID].tolist()
    assert merged.users[merged.users[S.USER_ID] == new_user][S.AGE].isna().all()
    samples = split_by_time(merged.ratings)
    last = samples[samples[S.USER_ID] == user].sort_values(S.SEQ).iloc[-1]
    assert last[S.ITEM_ID] == rated and last[S.SPLIT] == S.SPLIT_ONLINE
    written = pd.read_parquet(paths.ratings_path)
    assert len(written) == len(merged.ratings)
    seqs = pd.read_parquet(paths.event_seqs_path)  # the ratings that came from the log, with their seqs
    assert seqs.to_dict("records") == [{S.USER_ID: user, S.ITEM_ID: rated, "seq": 1},
                                       {S.USER_ID: new_user, S.ITEM_ID: item, "seq": 2}]  # fmt: skip
    fetch_dataset("synthetic", paths, synthetic=CONFIG)  # a run without events leaves no stale table
    assert pd.read_parquet(paths.event_seqs_path).empty


def test_the_base_watermark_is_the_newest_event_in_the_published_seen_items() -> None:
    from offline_to_online.recall.user_source import align_users, base_event_seqs

    profiles = pd.DataFrame({S.USER_ID: [1, 2, 3], S.TERMS: [[], [], []]})
    seen = pd.DataFrame({S.USER_ID: [1, 2, 3], S.ITEMS: [[10, 11, 12], [10], [13]], S.LABELS: [[1, 0, 1], [1], [0]],
                         S.RATINGS: [[5.0, 2.0, 4.0], [4.0], [1.0]]})  # fmt: skip
    source = align_users(profiles, seen, np.zeros(0, np.int64), np.zeros((0, 2), np.float32))
    # user 1: events 4 and 9 made it into the base, 15 (item 14) is in the holdout; user 2 none; user 3 one
    events = pd.DataFrame({S.USER_ID: [1, 1, 1, 2, 3], S.ITEM_ID: [11, 12, 14, 99, 13], "seq": [4, 9, 15, 7, 2]})
    assert base_event_seqs(source, events).tolist() == [9, 0, 2]
    assert base_event_seqs(source, events.iloc[:0]).tolist() == [0, 0, 0]


def test_read_event_log_from_sqlite_and_parquet(tmp_path: Path) -> None:
    frame = log_frame([Event("a", 1, 2, 4.0, None, 7), Event("b", 1, 3, 5.0, "like", 8)])
    frame.to_parquet(tmp_path / "events.parquet")
    pd.testing.assert_frame_equal(read_event_log(str(tmp_path / "events.parquet")), frame)
    db = tmp_path / "events.sqlite3"
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE events (seq, event_id, userid, itemid, rating, type, ts)")
        connection.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
                               [(2, "b", 1, 3, 5.0, "like", 8), (1, "a", 1, 2, 4.0, None, 7)])  # fmt: skip
    read = read_event_log(str(db))
    assert read["event_id"].tolist() == ["a", "b"] and read[S.ITEM_ID].to_numpy(np.int64).tolist() == [2, 3]


def test_stage_names_a_missing_event_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    code = s0_main(["--dataset", "synthetic", "--data-dir", str(tmp_path), "--events", str(tmp_path / "none.db")])
    assert code == 2 and "none.db" in caplog.text
    with pytest.raises(FileNotFoundError):
        read_event_log(str(tmp_path / "none.db"))
