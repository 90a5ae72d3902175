"""Dataset readers: every layout, ids as given, and clear errors for bad input."""

from __future__ import annotations

import contextlib
import hashlib
import io
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from data_exchange_center import schema as S
from data_exchange_center.paths import ArtifactPaths
from offline.common.stage import DataError
from offline.preprocess.datasets import LAYOUT_100K, LAYOUT_CSV, LAYOUT_DAT, read_dataset
from offline.preprocess.fetch import GROUPLENS_URL, fetch_dataset
from offline.preprocess.synthetic import SyntheticConfig, generate_synthetic

pytestmark = pytest.mark.unit


def write_dat(folder: Path, ratings: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text(ratings)
    (folder / "movies.dat").write_text(
        "10::Heat: The Movie (1995)::Action|Crime\n2000::B (1990)::Comedy\n", encoding="latin-1"
    )
    (folder / "users.dat").write_text("5::F::25::3::12345\n99999::M::1::0::00000\n")
    return folder


def test_dat_layout_keeps_sparse_ids_and_titles_with_colons(tmp_path: Path) -> None:
    raw = write_dat(tmp_path, "99999::2000::4::978300760\n5::10::2::978300761\n")
    data = read_dataset(raw, LAYOUT_DAT)
    assert data.ratings[S.USER_ID].tolist() == [99999, 5]
    assert data.ratings[S.ITEM_ID].tolist() == [2000, 10]
    assert data.items.set_index(S.ITEM_ID).loc[10, S.TITLE] == "Heat: The Movie (1995)"
    assert data.items.set_index(S.ITEM_ID).loc[10, S.GENRES] == ["Action", "Crime"]
    assert set(S.DEMOGRAPHIC_COLUMNS) <= set(data.users.columns)


@pytest.mark.parametrize(
    ("ratings", "message"),
    [
        ("5::10::4::978300760\n5::10::4\n", r"ratings.dat:2: malformed line"),
        ("5::10::4::978300760\n5::x::4::978300761\n", r"ratings.dat:2: expected a number, got 'x'"),
        ("5::77::4::978300760\n", r"not in the item file"),
        ("6::10::4::978300760\n", r"not in the user file"),
    ],
)
def test_bad_ratings_name_file_and_line(tmp_path: Path, ratings: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        read_dataset(write_dat(tmp_path, ratings), LAYOUT_DAT)


def test_missing_raw_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing raw file .*ratings.dat"):
        read_dataset(tmp_path, LAYOUT_DAT)


def test_ml100k_layout(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("1\t50\t5\t881250949\n2\t50\t2\t881250950\n")
    flags = "|".join(["0", "1"] + ["0"] * 17)  # unknown=0, Action=1
    (tmp_path / "u.item").write_text(f"50|Star Wars (1977)|01-Jan-1977||http://x|{flags}\n", encoding="latin-1")
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    data = read_dataset(tmp_path, LAYOUT_100K)
    assert data.items[S.GENRES].tolist() == [["Action"]]
    assert data.users[S.OCCUPATION].tolist() == ["technician", "other"]
    assert data.ratings[S.RATING].tolist() == [5.0, 2.0]


def test_csv_family_has_no_demographics(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n3,1,4.5,964982703\n3,2,3.0,964982704\n")
    (tmp_path / "movies.csv").write_text(
        'movieId,title,genres\n1,"Toy Story, The (1995)",Adventure|Animation\n2,X (2000),(no genres listed)\n'
    )
    data = read_dataset(tmp_path, LAYOUT_CSV)
    assert list(data.users.columns) == [S.USER_ID]
    assert data.items[S.GENRES].tolist() == [["Adventure", "Animation"], []]
    assert data.items[S.TITLE].iloc[0] == "Toy Story, The (1995)"


def test_unknown_dataset_name(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown dataset 'ml-2m'"):
        fetch_dataset("ml-2m", ArtifactPaths(tmp_path))


def test_synthetic_dataset_is_reproducible_and_structured(tmp_path: Path) -> None:
    config = SyntheticConfig(n_users=200, n_items=150, n_ratings=8000, seed=3)
    a = read_dataset(generate_synthetic(config, tmp_path / "a"), LAYOUT_DAT)
    b = read_dataset(generate_synthetic(config, tmp_path / "b"), LAYOUT_DAT)
    pd.testing.assert_frame_equal(a.ratings, b.ratings)
    counts = a.ratings.groupby(S.USER_ID).size()
    assert counts.min() >= 20  # every user has enough history for the split
    popularity = a.ratings[S.ITEM_ID].value_counts()
    assert popularity.iloc[0] > 3 * popularity.median()  # long-tailed (uniform gives about 1.3)
    assert a.ratings[S.RATING].between(1, 5).all() and a.ratings[S.RATING].nunique() == 5
    assert (a.ratings.groupby(S.USER_ID)[S.TIMESTAMP].diff().dropna() > 0).all()


def no_network(url: str) -> Any:
    raise OSError("network unreachable")


def serving(files: dict[str, bytes]) -> Callable[[str], Any]:
    """An opener (the fetch stage's own ``UrlOpener`` interface) that serves ``files`` by URL."""

    def opener(url: str) -> Any:
        if url not in files:
            raise OSError(f"404 {url}")
        return contextlib.closing(io.BytesIO(files[url]))

    return opener


def zipped_latest_small() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("ml-latest-small/ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,100\n1,20,2.5,101\n")
        archive.writestr(
            "ml-latest-small/movies.csv", "movieId,title,genres\n10,Heat (1995),Action|Crime\n20,B (1990),Comedy\n"
        )
    return buffer.getvalue()


def test_fetch_falls_back_to_synthetic_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECSYS_RAW_DIR", raising=False)
    paths = ArtifactPaths(tmp_path)
    with pytest.raises(DataError, match="cannot download .* --raw-dir"):
        fetch_dataset("ml-1m", paths, opener=no_network)
    small = SyntheticConfig(n_users=50, n_items=40, n_ratings=1500)
    fetch_dataset("ml-1m", paths, synthetic=small, fallback_to_synthetic=True, opener=no_network)
    assert len(pd.read_parquet(paths.ratings_path)) > 1000


def test_a_download_is_verified_unpacked_and_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECSYS_RAW_DIR", raising=False)
    archive = zipped_latest_small()
    url = GROUPLENS_URL.format(name="ml-latest-small")
    opener = serving({url: archive, url + ".md5": f"{hashlib.md5(archive).hexdigest()}  ml-latest-small.zip".encode()})
    dataset = fetch_dataset("ml-latest-small", ArtifactPaths(tmp_path), opener=opener)
    assert (
        dataset.ratings[S.ITEM_ID].tolist() == [10, 20]
        and (tmp_path / "raw" / "ml-latest-small" / ".verified").exists()
    )
    # verified once: a second fetch reads the unpacked copy without the network
    assert len(fetch_dataset("ml-latest-small", ArtifactPaths(tmp_path), opener=no_network).ratings) == 2


def test_a_download_with_a_wrong_checksum_is_refused_and_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RECSYS_RAW_DIR", raising=False)
    url = GROUPLENS_URL.format(name="ml-latest-small")
    opener = serving({url: zipped_latest_small(), url + ".md5": b"0" * 32})
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch_dataset("ml-latest-small", ArtifactPaths(tmp_path), opener=opener)
    assert not (tmp_path / "raw" / "ml-latest-small.zip").exists()


@pytest.mark.parametrize("dense_max_cells", [10**9, 0], ids=["dense", "candidate-pool"])
def test_synthetic_sampling_paths_give_the_same_structure(tmp_path: Path, dense_max_cells: int) -> None:
    """Both samplers: exact counts per user, distinct items per user, a long tail, taste-driven stars."""
    config = SyntheticConfig(n_users=400, n_items=300, n_ratings=30_000, seed=5, dense_max_cells=dense_max_cells)
    ratings = read_dataset(generate_synthetic(config, tmp_path), LAYOUT_DAT).ratings
    counts = ratings.groupby(S.USER_ID).size()
    assert len(counts) == config.n_users and counts.min() >= 20
    assert 0.9 * config.n_ratings <= len(ratings) <= config.n_ratings  # heavy users are capped at the catalogue
    assert not ratings.duplicated([S.USER_ID, S.ITEM_ID]).any()
    assert (ratings.groupby(S.USER_ID)[S.TIMESTAMP].diff().dropna() > 0).all()  # each timeline increases
    popularity = ratings[S.ITEM_ID].value_counts()
    assert popularity.iloc[0] > 3 * popularity.median()
    assert popularity.index.nunique() > 0.9 * config.n_items  # the tail is reached too
    assert 3.3 < ratings[S.RATING].mean() < 3.9 and set(ratings[S.RATING].unique()) == {1, 2, 3, 4, 5}


def test_synthetic_candidate_pool_follows_popularity_like_the_exact_draw(tmp_path: Path) -> None:
    shares = []
    for dense_max_cells in (10**9, 0):
        config = SyntheticConfig(n_users=400, n_items=300, n_ratings=30_000, seed=5, dense_max_cells=dense_max_cells)
        ratings = read_dataset(generate_synthetic(config, tmp_path / str(dense_max_cells)), LAYOUT_DAT).ratings
        popularity = ratings[S.ITEM_ID].value_counts()
        shares.append(popularity.iloc[:30].sum() / len(ratings))  # the top 10% of items' share of ratings
    assert abs(shares[0] - shares[1]) < 0.1, shares
