"""The item catalog (titles, years, genres) and the explanations, checked against the chain's own scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_exchange_center import chain, explain
from data_exchange_center import schema as S
from data_exchange_center.item_catalog import ItemCatalog, build_catalog, split_title_year, write_catalog
from data_exchange_center.item_index import ItemIndex

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("raw", "title", "year"),
    [
        ("Toy Story (1995)", "Toy Story", 1995),
        ("City of Lost Children, The (1995)", "City of Lost Children, The", 1995),
        ("Heat: The Movie (1995)", "Heat: The Movie", 1995),
        ("Brain (2000) (2003)", "Brain (2000)", 2003),
        ("No Year", "No Year", None),
        ("Trailing space (1999) ", "Trailing space", 1999),
        ("Cosmos (1980-)", "Cosmos", 1980),
    ],
)
def test_split_title_year(raw: str, title: str, year: int | None) -> None:
    got_title, got_year = split_title_year(pd.Series([raw]))
    assert got_title.iloc[0] == title
    assert (None if pd.isna(got_year.iloc[0]) else int(got_year.iloc[0])) == year


def catalog_frame() -> pd.DataFrame:
    items = pd.DataFrame(
        {
            S.ITEM_ID: [30, 10, 20, 40],
            S.TITLE: ["Aliens (1986)", "Alien (1979)", "<script>alert(1)</script> (2001)", "Heat (1995)"],
            S.GENRES: [["Action", "Sci-Fi"], ["Horror", "Sci-Fi"], ["Comedy"], ["Action", "Crime", "Thriller"]],
        }
    )
    popularity = pd.DataFrame({S.ITEM_ID: [30, 10, 40], S.SCORE: [5.0, 9.0, 7.0]})
    return build_catalog(items, popularity)


def test_catalog_round_trip_describe_and_search(tmp_path: Path) -> None:
    write_catalog(catalog_frame(), tmp_path)
    catalog = ItemCatalog.load(tmp_path, "v1")
    assert catalog.item_ids.tolist() == [10, 20, 30, 40]
    assert catalog.describe(np.array([30, 99])) == [
        {"title": "Aliens", "year": 1986, "genres": ["Action", "Sci-Fi"]},
        {"title": None, "year": None, "genres": []},
    ]
    assert catalog.describe(np.array([20]), ("title",)) == [{"title": "<script>alert(1)</script>"}]
    assert catalog.search("ALIEN", 10).tolist() == [10, 30]  # case-insensitive, most popular first
    assert catalog.search("", 2).tolist() == [10, 40]
    assert catalog.search("nothing like this", 5).tolist() == []
    assert catalog.genres_of(40) == ["Action", "Crime", "Thriller"]


def test_missing_catalog_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="publish the items again"):
        ItemCatalog.load(tmp_path)
    assert len(ItemCatalog.empty()) == 0
    assert ItemCatalog.empty().describe(np.array([1])) == [{"title": None, "year": None, "genres": []}]


def test_trigger_contributions_add_up_to_the_i2i_scores() -> None:
    rng = np.random.default_rng(1)
    neighbors = rng.integers(1, 25, size=(7, 9))
    neighbors[3, 4:] = -1
    weights = rng.random((7, 9)).astype(np.float32)
    triggers = rng.random(7).astype(np.float32)
    items, scores = chain.i2i_scores(neighbors, weights, triggers)
    parts = explain.trigger_contributions(neighbors, weights, triggers, items)
    assert parts.shape == (len(items), 7)
    np.testing.assert_allclose(parts.sum(axis=1), scores, rtol=1e-5)
    assert explain.trigger_contributions(neighbors, weights, triggers, np.array([999])).sum() == 0


def test_score_parts_multiply_to_the_final_score() -> None:
    rng = np.random.default_rng(2)
    n = 40
    candidates = chain.Candidates(
        items=np.arange(n, dtype=np.int64),
        i2i_score=np.where(rng.random(n) < 0.5, rng.random(n), 0.0).astype(np.float32),
        channel=np.array(["i2i"] * n, dtype=object),
        rank_in_channel=rng.integers(0, 20, n),
    )
    like = rng.random(n).astype(np.float32)
    policy = chain.RankingPolicy(like_weight=1.7, prior_weight=0.05)
    parts = explain.score_parts(candidates, like, policy)
    np.testing.assert_array_equal(parts["final"], chain.final_scores(candidates, like, policy))
    rebuilt = (parts["watch"] + policy.prior_weight * parts["channel_prior"]) * parts["like"] ** policy.like_weight
    np.testing.assert_allclose(rebuilt, parts["final"], rtol=1e-6)


def test_a_ranker_final_score_is_explained_as_the_rankers_output() -> None:
    index = small_index()
    user = chain.UserState(["Sci-Fi"], np.array([0.0, 1.0], np.float32), np.array([1, 2]), np.array([1, 0], np.int8))
    policy = chain.RankingPolicy(ranker_final=1)
    results, i2i_all = chain.recall_channels(index, user, {"i2i": 5, "vector": 2, "term": 5, "popularity": 5}, 20)
    candidates = chain.merge_candidates(results, *i2i_all)
    ranker = np.linspace(0.2, 0.6, len(candidates.items)).astype(np.float32)
    items, served = chain.rank_and_cut(candidates, chain.final_scores(candidates, ranker, policy), 3)
    triggers = explain.i2i_triggers(user, 20)
    nbr, nbr_w = index.neighbors_of(triggers[0])
    contributions = explain.trigger_contributions(nbr, nbr_w, triggers[1], items)
    catalog = ItemCatalog.from_frame(
        build_catalog(pd.DataFrame({S.ITEM_ID: index.item_ids, S.TITLE: [f"Film {i} (2000)" for i in range(1, 7)],
                                    S.GENRES: [[] for _ in range(6)]}))
    )  # fmt: skip
    parts = explain.score_parts(candidates, ranker, policy)
    reasons = explain.explain_items(items, user, candidates, results, parts, contributions, triggers, catalog, policy)
    for reason, score in zip(reasons, served.tolist(), strict=True):
        assert set(reason["score_parts"]) == {"i2i_score", "ranker", "final"}
        assert reason["score_parts"]["ranker"] == reason["score_parts"]["final"] == pytest.approx(score, abs=1e-6)


def small_index() -> ItemIndex:
    """Six items; 1 and 2 are neighbours of 3 and 4; vectors favour 5."""
    item_ids = np.arange(1, 7, dtype=np.int64)
    names = ["Action", "Comedy", "Sci-Fi"]
    flags = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0], [1, 1, 0]], dtype=bool)
    nbr = np.array([[3, 4], [4, -1], [1, -1], [1, 2], [-1, -1], [-1, -1]], dtype=np.int64)
    nbr_w = np.array([[0.9, 0.2], [0.6, 0.0], [0.9, 0], [0.2, 0.6], [0, 0], [0, 0]], dtype=np.float32)
    vectors = np.eye(6, 2, dtype=np.float32)[::-1].copy()
    return ItemIndex(item_ids, np.arange(6, 0, -1).astype(np.float32), names, flags, item_ids, vectors, nbr, nbr_w)


def test_explanations_name_the_users_real_triggers_and_reproduce_the_score() -> None:
    index = small_index()
    user = chain.UserState(["Sci-Fi"], np.array([0.0, 1.0], np.float32), np.array([1, 2]), np.array([1, 0], np.int8))
    policy = chain.RankingPolicy()
    quotas = {"i2i": 5, "vector": 2, "term": 5, "popularity": 5}
    results, i2i_all = chain.recall_channels(index, user, quotas, chain.TriggerPolicy(max_triggers=20))
    candidates = chain.merge_candidates(results, *i2i_all)
    like = np.linspace(0.9, 0.5, len(candidates.items)).astype(np.float32)
    scores = chain.final_scores(candidates, like, policy)
    items, served = chain.rank_and_cut(candidates, scores, 4)
    triggers = explain.i2i_triggers(user, 20)
    nbr, nbr_w = index.neighbors_of(triggers[0])
    contributions = explain.trigger_contributions(nbr, nbr_w, triggers[1], items)
    catalog = ItemCatalog.from_frame(
        build_catalog(pd.DataFrame({S.ITEM_ID: index.item_ids, S.TITLE: [f"Film {i} (2000)" for i in range(1, 7)],
                                    S.GENRES: [[n for n, f in zip(index.term_names, row, strict=True) if f]
                                               for row in index.term_flags]}))
    )  # fmt: skip
    parts = explain.score_parts(candidates, like, policy)
    reasons = explain.explain_items(items, user, candidates, results, parts, contributions, triggers, catalog, policy)

    by_item = dict(zip(items.tolist(), reasons, strict=True))
    assert set(by_item) >= {3, 4}
    r3 = by_item[3]
    assert r3["channel"] == "i2i"
    assert [t["itemid"] for t in r3["evidence"]["triggers"]] == [1]  # only item 1 has 3 as a neighbour
    assert r3["evidence"]["triggers"][0] == {"itemid": 1, "title": "Film 1", "liked": True, "contribution": 0.9}
    assert r3["summary"].startswith("Because you rated Film 1")
    r4 = by_item[4]
    assert {t["itemid"] for t in r4["evidence"]["triggers"]} == {1, 2}  # both seen items point at 4
    assert r4["evidence"]["matched_genres"] == ["Sci-Fi"]
    for item, reason, score in zip(items.tolist(), reasons, served.tolist(), strict=True):
        assert reason["score_parts"]["final"] == pytest.approx(score, abs=1e-6)
        for trigger in reason["evidence"].get("triggers", []):
            assert trigger["itemid"] in user.seen.tolist()
        row = candidates.items.tolist().index(item)
        shares = sum(t["contribution"] for t in reason["evidence"].get("triggers", []))
        assert shares == pytest.approx(float(candidates.i2i_score[row]), abs=1e-5)
    vector_items = results["vector"][0].tolist()
    for item in set(vector_items) & set(by_item):
        assert "similarity" in by_item[item]["evidence"]


def test_summaries_per_channel() -> None:
    assert explain.summarize("term", {"matched_genres": ["Action", "Drama"]}) == "Matches your genres Action and Drama"
    assert explain.summarize("vector", {"similarity": 0.5}) == "Close to your taste (similarity 0.50)"
    assert explain.summarize("popularity", {"popularity_rank": 2}) == "Popular (#2)"
    text = explain.summarize("popularity", {"popularity_rank": 1, "triggers": [{"itemid": 7, "title": None}]})
    assert text == "Popular (#1); also because you rated item 7"
