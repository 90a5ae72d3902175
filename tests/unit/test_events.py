"""Live feedback logic: applying events to a user's state, the events body, experiments, streaming metrics."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from data_exchange_center import schema as S
from data_exchange_center.chain import RankingPolicy, UserState
from data_exchange_center.events import Event, StoredEvent, apply_events, events_frame, last_occurrences, rating_of
from data_exchange_center.experiments import ExperimentConfigError, assign_variant, parse_variants, user_bucket
from data_exchange_center.streaming import UserWalk, holdout_walks, next_item_metrics
from online.main.stream_replay import ReplayLogNotEmpty, event_body, walk_user, with_retries
from online.service.errors import InvalidBody, InvalidField, MalformedJson, MissingField, UnknownField
from online.service.event_validation import parse_events
from online.service.live_events import UnknownItem, check_items

pytestmark = pytest.mark.unit


def state(items: list[int], labels: list[int]) -> UserState:
    return UserState(["Drama"], None, np.array(items, np.int64), np.array(labels, np.int8))


def test_apply_events_appends_in_order_and_moves_a_repeated_item_to_its_latest_position() -> None:
    after = apply_events(state([10, 20, 30], [1, 0, 1]), np.array([40, 20]), np.array([1, 1]))
    assert after.seen.tolist() == [10, 30, 40, 20]
    assert after.seen_labels.tolist() == [1, 1, 1, 1]  # the later label of 20 wins
    assert after.terms == ["Drama"]


def test_apply_no_events_returns_the_base_unchanged() -> None:
    base = state([1, 2], [0, 1])
    assert apply_events(base, np.zeros(0, np.int64), np.zeros(0, np.int8)) is base


@pytest.mark.parametrize("items", [[5, 3, 5, 1, 3], [1], [2, 2, 2], list(range(20)) * 2])
def test_last_occurrences_matches_a_loop(items: list[int]) -> None:
    expected = [i for i, item in enumerate(items) if item not in items[i + 1 :]]
    assert last_occurrences(np.array(items)).tolist() == expected


def test_labels_and_typed_ratings() -> None:
    assert Event("a", 1, 2, 4.0, None, 0).label == 1
    assert Event("a", 1, 2, 3.0, None, 0).label == 0
    assert rating_of(None, "like") == 5.0 and rating_of(None, "dislike") == 1.0
    with pytest.raises(ValueError, match="rating or a type"):
        rating_of(None, "share")


def test_events_frame_has_the_export_columns() -> None:
    frame = events_frame([StoredEvent(3, Event("x", 1, 2, 5.0, "like", 9))])
    assert list(frame.columns) == ["seq", "event_id", S.USER_ID, S.ITEM_ID, S.RATING, "type", S.TIMESTAMP]
    assert frame.iloc[0].tolist() == [3, "x", 1, 2, 5.0, "like", 9]


# --- the POST /ml/events body ------------------------------------------------------------------------
GOOD = {"userid": 1, "itemid": 1193, "rating": 4.5, "timestamp": 978300760, "event_id": "e-1"}


def body(value: object) -> bytes:
    return json.dumps(value).encode()


def test_one_event_and_a_batch_parse() -> None:
    assert parse_events(body(GOOD), 10) == [Event("e-1", 1, 1193, 4.5, None, 978300760)]
    typed = {**GOOD, "event_id": "e-2", "type": "like"}
    del typed["rating"]
    events = parse_events(body([GOOD, typed]), 10)
    assert [e.rating for e in events] == [4.5, 5.0] and events[1].type == "like"


@pytest.mark.parametrize(
    ("payload", "error", "text"),
    [
        (b"", MalformedJson, "empty"),
        (b"{", MalformedJson, "not valid JSON"),
        (body([]), InvalidBody, "empty"),
        (body([GOOD] * 11), InvalidBody, "at most 10"),
        (body("x"), InvalidBody, "JSON object"),
        (body({**GOOD, "extra": 1}), UnknownField, "extra"),
        (body({k: v for k, v in GOOD.items() if k != "event_id"}), MissingField, "event_id"),
        (body({**GOOD, "type": "like"}), MissingField, "exactly one"),
        (body({k: v for k, v in GOOD.items() if k != "rating"}), MissingField, "exactly one"),
        (body({**GOOD, "rating": 7}), InvalidField, "between"),
        (body({**GOOD, "rating": True}), InvalidField, "number"),
        (body({**GOOD, "rating": "4"}), InvalidField, "number"),
        (body({**GOOD, "userid": -1}), InvalidField, "userid"),
        (body({**GOOD, "itemid": 1.5}), InvalidField, "itemid"),
        (body({**GOOD, "timestamp": "2020"}), InvalidField, "timestamp"),
        (body({**GOOD, "event_id": ""}), InvalidField, "event_id"),
        (body({**GOOD, "event_id": "a b"}), InvalidField, "event_id"),
        (body({**GOOD, "event_id": 5}), InvalidField, "event_id"),
        (body([GOOD, {**GOOD, "type": "share", "rating": None}]), InvalidField, "event 1: 'type'"),
    ],
)
def test_bad_bodies_are_refused_with_a_message(payload: bytes, error: type, text: str) -> None:
    with pytest.raises(error, match=text):
        parse_events(payload, 10)


def test_unknown_items_refuse_the_batch_and_are_named() -> None:
    catalogue = np.array([1, 5, 9], np.int64)
    check_items([Event("a", 1, 5, 4.0, None, 0)], catalogue)
    with pytest.raises(UnknownItem, match="event 1: itemid 6"):
        check_items([Event("a", 1, 5, 4.0, None, 0), Event("b", 1, 6, 4.0, None, 0)], catalogue)
    assert UnknownItem.status == 422


# --- experiments ---------------------------------------------------------------------------------------
def test_variants_parse_and_override_the_policy() -> None:
    variants = parse_variants("control:1, strict:3:like_weight=2:max_triggers=5:live_events=0")
    assert [(v.name, v.weight) for v in variants] == [("control", 1.0), ("strict", 3.0)]
    base = RankingPolicy(like_weight=1.0, prior_weight=0.01)
    assert variants[0].policy(base) == base and variants[0].live_events
    assert variants[1].policy(base) == RankingPolicy(like_weight=2.0, prior_weight=0.01)
    assert variants[1].max_triggers(20) == 5 and not variants[1].live_events
    assert [v.name for v in parse_variants("")] == ["default"]
    no_ranker = parse_variants("no_ranker:1:ranker_final=0:like_weight=0")[0]  # the recall evidence blend
    served = RankingPolicy(ranker_final=1)
    assert no_ranker.policy(served) == RankingPolicy(like_weight=0.0, ranker_final=0)


@pytest.mark.parametrize("spec", ["a", "a:x", "a:1,a:1", "a:1:colour=3", "a:0", ":1"])
def test_bad_variant_specs_are_refused(spec: str) -> None:
    with pytest.raises(ExperimentConfigError):
        parse_variants(spec)


def test_assignment_is_stable_and_follows_the_weights() -> None:
    variants = parse_variants("a:1,b:3")
    users = range(20_000)
    names = [assign_variant(u, variants, "s").name for u in users]
    assert names == [assign_variant(u, variants, "s").name for u in users]  # deterministic
    assert abs(names.count("b") / len(names) - 0.75) < 0.015
    assert all(0 <= user_bucket(u, "recsys") < 1 for u in range(100))
    assert user_bucket(42, "recsys") != user_bucket(42, "other")  # the salt reshuffles


def test_assignment_golden_value() -> None:
    # sha256("recsys:1") starts with these 8 bytes; a change of the hash would move every user
    import hashlib

    expected = int.from_bytes(hashlib.sha256(b"recsys:1").digest()[:8], "big") / 2**64
    assert user_bucket(1, "recsys") == expected


# --- streaming metrics -----------------------------------------------------------------------------------
def test_next_item_metrics_against_hand_values() -> None:
    lists = [np.array([5, 6, 7]), np.array([1, 2, 3]), np.array([9])]
    metrics = next_item_metrics(lists, np.array([7, 1, 4]), k=3)
    assert metrics["hit_rate"] == pytest.approx(2 / 3, abs=1e-6)
    assert metrics["mrr"] == pytest.approx((1 / 3 + 1) / 3, abs=1e-6)
    assert metrics["ndcg"] == pytest.approx((1 / np.log2(4) + 1) / 3, abs=1e-6)
    assert metrics["n_events"] == 3
    assert next_item_metrics([np.array([1, 2])], np.array([2]), k=1)["hit_rate"] == 0.0


def test_holdout_walks_keep_time_order_and_skip_users_without_a_positive() -> None:
    samples = pd.DataFrame(
        {
            S.USER_ID: [1, 1, 1, 2, 2, 3],
            S.ITEM_ID: [10, 11, 12, 20, 21, 30],
            S.RATING: [5.0, 2.0, 4.0, 1.0, 2.0, 5.0],
            S.TIMESTAMP: [1, 2, 3, 1, 2, 1],
            S.LABEL: [1, 0, 1, 0, 0, 1],
            S.SEQ: [2, 0, 1, 0, 1, 0],
            S.SPLIT: [S.SPLIT_ONLINE] * 6,
        }
    )
    walks = holdout_walks(samples)
    assert [w.userid for w in walks] == [1, 3]
    assert walks[0].items.tolist() == [11, 12, 10] and walks[0].target_steps.tolist() == [1, 2]
    assert [w.userid for w in holdout_walks(samples, every=2)] == [1]


# --- the served streaming walk -------------------------------------------------------------------------
def a_walk() -> UserWalk:
    return UserWalk(7, np.array([10, 11, 12]), np.array([5.0, 2.0, 4.0], np.float32), np.array([1, 0, 1], np.int8),
                    np.array([100, 101, 102]))  # fmt: skip


def test_walk_user_asks_before_each_positive_and_posts_every_step() -> None:
    calls: list[tuple[str, object]] = []

    def recommend(userid: int, k: int) -> dict[str, object]:
        calls.append(("rec", userid))
        return {"item_list": [{"itemid": 12}, {"itemid": 10}], "variant": "a"}

    def post(events: list[dict[str, object]]) -> dict[str, object]:
        calls.append(("post", events[0]["itemid"]))
        return {"duplicates": 0}

    steps = walk_user(a_walk(), recommend, post, 50)
    assert [c[0] for c in calls] == ["rec", "post", "post", "rec", "post"]
    assert [c[1] for c in calls if c[0] == "post"] == [10, 11, 12]
    assert [(s[1], s[2]) for s in steps] == [(10, "a"), (12, "a")]
    assert event_body(a_walk(), 1) == {"userid": 7, "itemid": 11, "rating": 2.0, "timestamp": 101,
                                       "event_id": "replay-7-1-101"}  # fmt: skip


def test_a_repeated_replay_event_stops_the_walk() -> None:
    def recommend(userid: int, k: int) -> dict[str, object]:
        return {"item_list": []}

    with pytest.raises(ReplayLogNotEmpty, match="user 7"):
        walk_user(a_walk(), recommend, lambda events: {"duplicates": 1}, 50)


def test_shed_requests_are_retried_and_other_errors_are_not() -> None:
    answers = iter([RuntimeError("HTTP 503: busy"), {"ok": 1}])

    def flaky() -> dict[str, object]:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert with_retries(flaky) == {"ok": 1}

    def broken() -> dict[str, object]:
        raise RuntimeError("HTTP 422: bad")

    with pytest.raises(RuntimeError, match="422"):
        with_retries(broken)


def test_recent_terms_equal_the_offline_profile_terms_of_every_user() -> None:
    """The service's terms of a user's recent window equal the offline profile's (same items, same rule)."""
    import tempfile
    from pathlib import Path

    from data_exchange_center.events import recent_terms
    from data_exchange_center.item_catalog import ItemCatalog, build_catalog
    from offline.preprocess.datasets import LAYOUT_DAT, read_dataset
    from offline.preprocess.pit_features import item_genre_flags, list_genres, online_user_profiles
    from offline.preprocess.split import split_by_time
    from offline.preprocess.synthetic import SyntheticConfig, generate_synthetic
    from offline.recall.tables import user_seen_table

    with tempfile.TemporaryDirectory() as tmp:
        dataset = read_dataset(generate_synthetic(SyntheticConfig(n_users=80, n_items=60, n_ratings=4000, seed=3),
                                                  Path(tmp)), LAYOUT_DAT)  # fmt: skip
    samples = split_by_time(dataset.ratings)
    genres = list_genres(dataset.items)
    profiles = online_user_profiles(samples, item_genre_flags(dataset.items, genres), genres).set_index(S.USER_ID)
    catalog = ItemCatalog.from_frame(build_catalog(dataset.items))
    seen = user_seen_table(samples)
    with_terms = 0
    for userid, items, labels in zip(seen[S.USER_ID], seen[S.ITEMS], seen[S.LABELS], strict=True):
        got = recent_terms(np.asarray(items), np.asarray(labels), catalog.genres_of_items)
        assert got == list(profiles.loc[userid, S.TERMS]), userid
        with_terms += bool(got)
    assert with_terms > 10  # the rule is exercised, not only empty lists
    assert recent_terms(np.array([1, 2]), np.array([1, 1]), lambda items: [["Drama"]] * len(items)) == []
    three = recent_terms(np.arange(12), np.ones(12, np.int8), lambda items: [["Drama"]] * len(items))
    assert three == ["Drama"]
