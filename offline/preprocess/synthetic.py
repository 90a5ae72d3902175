"""A synthetic MovieLens in the ML-1M layout, at any size, with realistic structure.

Users have latent tastes built from genre preferences, items have genres, latent factors and a
long-tailed popularity; each user watches items drawn by popularity times taste (without
replacement, Gumbel top-k), rates them by affinity plus noise, in a timeline of increasing
timestamps. Demographics shift genre preferences a little, so they carry signal as in the real data.
Files are written with the exact ``::`` layout of ML-1M so the same reader parses them.

Scale: a large catalogue scores a candidate pool per user instead of every item, and ratings are
written in chunks by Arrow, so time and memory grow with the number of ratings. The ML-32M shape
(32M ratings, 200,948 users, 87,585 items) took 66 s of CPU and 3.0 GiB peak here (4.7 min of wall
time on a busy 2-core machine).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from data_exchange_center.artifacts import atomic_path

ML1M_GENRES = (
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
AGES = np.array([1, 18, 25, 35, 45, 50, 56])
N_OCCUPATIONS = 21
MIN_RATINGS_PER_USER = 20
# Up to this many users x items, every user scores every item (exact); beyond it, a candidate pool per user.
DENSE_MAX_CELLS = 200_000_000
OVERSAMPLE = 3.0  # candidate draws per rating in the pool
UNIFORM_SHARE = 0.25  # share of pool draws that are uniform over the catalog (the rest follow popularity)
SPARSE_CHUNK_CANDIDATES = 4_000_000  # pool draws per chunk of users: bounds the memory
WRITE_CHUNK_ROWS = 2_000_000


@dataclass(frozen=True)
class SyntheticConfig:
    n_users: int = 1000
    n_items: int = 500
    n_ratings: int = 60_000
    n_factors: int = 8
    seed: int = 42
    # up to this many users x items every user scores every item; beyond, a candidate pool per user
    dense_max_cells: int = DENSE_MAX_CELLS


def generate_synthetic(config: SyntheticConfig, out_dir: Path) -> Path:
    """Write ``ratings.dat``, ``movies.dat`` and ``users.dat`` in the ML-1M layout into ``out_dir``."""
    if config.n_users < 1 or config.n_items < 2:
        raise ValueError("synthetic data needs at least 1 user and 2 items")
    rng = np.random.default_rng(config.seed)
    n_genres = len(ML1M_GENRES)
    # items: 1-3 genres, latent factors near their genres' centroids, Zipf-like popularity
    genre_centroids = rng.normal(size=(n_genres, config.n_factors))
    n_item_genres = rng.choice([1, 2, 3], size=config.n_items, p=[0.5, 0.35, 0.15])
    genre_weights = rng.dirichlet(np.full(n_genres, 0.6))
    item_genres = np.zeros((config.n_items, n_genres), dtype=bool)
    for k in (1, 2, 3):  # a loop over 3 sizes, vectorized over items
        rows = np.flatnonzero(n_item_genres == k)
        keys = rng.gumbel(size=(len(rows), n_genres)) + np.log(genre_weights)
        top = np.argsort(-keys, axis=1)[:, :k]
        item_genres[rows[:, None], top] = True
    item_factors = item_genres @ genre_centroids / item_genres.sum(1, keepdims=True)
    item_factors += 0.5 * rng.normal(size=item_factors.shape)
    popularity_rank = rng.permutation(config.n_items) + 1
    log_popularity = -1.0 * np.log(popularity_rank)
    # users: demographics, taste = genre preferences (shifted by gender and age) + noise
    gender = rng.choice(np.array(["F", "M"]), size=config.n_users, p=[0.28, 0.72])
    age = rng.choice(AGES, size=config.n_users)
    occupation = rng.integers(0, N_OCCUPATIONS, size=config.n_users)
    demo_shift = (
        np.where(gender == "F", 0.4, -0.4)[:, None] * genre_centroids[13] + (age[:, None] / 56.0) * genre_centroids[7]
    )
    user_genre_pref = rng.dirichlet(np.full(n_genres, 0.3), size=config.n_users)
    user_factors = (
        user_genre_pref @ genre_centroids + 0.5 * demo_shift + 0.5 * rng.normal(size=(config.n_users, config.n_factors))
    )
    # how many ratings each user gives: long-tailed, at least MIN_RATINGS_PER_USER where possible
    n_per_user = _ratings_per_user(config, rng)
    user_ids = np.arange(1, config.n_users + 1)
    item_ids = np.arange(1, config.n_items + 1)
    users_col, items_col, ratings_col = _sample_ratings(
        config, rng, user_factors, item_factors, log_popularity, n_per_user
    )
    # timelines: each user starts at a random time and rates one item every 1-600 seconds
    starts = rng.integers(956_703_932, 1_046_454_590, size=config.n_users)
    gaps = rng.integers(1, 600, size=len(users_col))
    offsets = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[np.cumsum(n_per_user) - n_per_user], n_per_user)
    timestamps = starts[users_col] + offsets
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_lines(out_dir / "ratings.dat", user_ids[users_col], item_ids[items_col], ratings_col, timestamps)
    genre_names = np.array(ML1M_GENRES, dtype=object)
    movies = [
        f"{item_ids[i]}::Synthetic Movie {item_ids[i]} ({1950 + i % 50})::{'|'.join(genre_names[item_genres[i]])}"
        for i in range(config.n_items)
    ]
    _write_text(out_dir / "movies.dat", movies, encoding="latin-1")
    zips = rng.integers(10000, 99999, size=config.n_users)
    users = [f"{u}::{g}::{a}::{o}::{z}" for u, g, a, o, z in zip(user_ids, gender, age, occupation, zips, strict=True)]
    _write_text(out_dir / "users.dat", users)
    return out_dir


def _ratings_per_user(config: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    weights = rng.lognormal(mean=0.0, sigma=1.0, size=config.n_users)
    floor = min(MIN_RATINGS_PER_USER, config.n_items, max(1, config.n_ratings // config.n_users))
    extra = max(config.n_ratings - floor * config.n_users, 0)
    counts = floor + np.floor(extra * weights / weights.sum()).astype(np.int64)
    return np.minimum(counts, config.n_items)


def _sample_ratings(
    config: SyntheticConfig,
    rng: np.random.Generator,
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    log_popularity: np.ndarray,
    n_per_user: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per user, ``n_per_user`` distinct items drawn by popularity x taste; rows grouped by user in order.

    A small catalogue (users x items up to ``config.dense_max_cells``) scores every item for every user (exact
    Gumbel top-k). A large one scores only a sampled candidate pool per user (``_sample_sparse``), so
    the work grows with the number of ratings, not with users x items.
    """
    if config.n_users * config.n_items <= config.dense_max_cells:
        return _sample_dense(config, rng, user_factors, item_factors, log_popularity, n_per_user)
    return _sample_sparse(config, rng, user_factors, item_factors, log_popularity, n_per_user)


def _sample_dense(
    config: SyntheticConfig,
    rng: np.random.Generator,
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    log_popularity: np.ndarray,
    n_per_user: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gumbel top-k over every item, ``user_factors.shape[0]`` users in chunks of about 4M cells."""
    n_users, n_items = len(user_factors), len(item_factors)
    users, items, ratings = [], [], []
    chunk = max(1, 4_000_000 // n_items)
    scale = np.sqrt(config.n_factors)
    for lo in range(0, n_users, chunk):
        hi = min(lo + chunk, n_users)
        affinity = user_factors[lo:hi] @ item_factors.T / scale  # (chunk, n_items)
        keys = log_popularity + 1.5 * affinity + rng.gumbel(size=affinity.shape)
        order = np.argsort(-keys, axis=1)
        take = np.arange(n_items)[None, :] < n_per_user[lo:hi, None]  # (chunk, n_items)
        rows, ranks = np.nonzero(take)
        picked = order[rows, ranks]
        # watch order is random within a user: shuffle ranks so the timeline is not sorted by taste
        shuffle_keys = rng.random(len(rows)) + rows
        perm = np.argsort(shuffle_keys, kind="stable")
        rows, picked = rows[perm], picked[perm]
        users.append(rows + lo)
        items.append(picked)
        ratings.append(_stars(rng, affinity[rows, picked]))
    return np.concatenate(users), np.concatenate(items), np.concatenate(ratings)


def _sample_sparse(
    config: SyntheticConfig,
    rng: np.random.Generator,
    user_factors: np.ndarray,
    item_factors: np.ndarray,
    log_popularity: np.ndarray,
    n_per_user: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gumbel top-k over a candidate pool per user: about ``OVERSAMPLE`` x its count, drawn with
    replacement from popularity mixed with uniform (so the tail is reachable), importance-corrected.

    Users in chunks of about ``SPARSE_CHUNK_CANDIDATES`` candidates bound the memory; a user whose pool
    has fewer distinct items than its count (rare: heavy users) is drawn again over every item.
    """
    n_items = len(item_factors)
    popularity = np.exp(log_popularity - log_popularity.max())
    popularity /= popularity.sum()
    proposal = (1 - UNIFORM_SHARE) * popularity + UNIFORM_SHARE / n_items
    item_cdf = np.cumsum(popularity)
    # log target - log proposal: the keys follow popularity x taste although the pool over-represents the tail
    item_bias = (np.log(popularity) - np.log(proposal)).astype(np.float32)
    item_f32 = item_factors.astype(np.float32) / np.float32(np.sqrt(config.n_factors))
    user_f32 = user_factors.astype(np.float32)
    n_candidates = np.minimum(np.ceil(OVERSAMPLE * n_per_user).astype(np.int64) + 16, 4 * n_items)
    bounds = np.searchsorted(np.cumsum(n_candidates), np.arange(0, n_candidates.sum(), SPARSE_CHUNK_CANDIDATES))
    users, items, stars = [], [], []
    short: list[np.ndarray] = []
    for lo, hi in zip(bounds, [*bounds[1:], len(n_per_user)], strict=True):
        if hi <= lo:
            continue
        rows, picked, affinity, missing = _pick_from_pool(
            rng, user_f32[lo:hi], item_f32, item_bias, item_cdf, n_per_user[lo:hi], n_candidates[lo:hi]
        )
        users.append(rows + lo)
        items.append(picked)
        stars.append(_stars(rng, affinity))
        short.append(missing + lo)
    redo = np.concatenate(short)
    if len(redo):  # heavy users: exact draw over the whole catalog
        r_users, r_items, r_stars = _sample_dense(
            config, rng, user_factors[redo], item_factors, log_popularity, n_per_user[redo]
        )
        users.append(redo[r_users])
        items.append(r_items)
        stars.append(r_stars)
    users_col = np.concatenate(users)
    order = np.argsort(users_col, kind="stable")  # group by user; each user's own order is kept
    return users_col[order], np.concatenate(items)[order], np.concatenate(stars)[order]


def _pick_from_pool(
    rng: np.random.Generator,
    user_f32: np.ndarray,
    item_f32: np.ndarray,
    item_bias: np.ndarray,
    item_cdf: np.ndarray,
    n_per_user: np.ndarray,
    n_candidates: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One chunk of users: (row, item, affinity) of the picks in random order per row, and the rows
    whose pool was too small (left out of the picks)."""
    n_items = len(item_f32)
    rows = np.repeat(np.arange(len(user_f32)), n_candidates)  # (n_pool,)
    uniform = rng.random(len(rows)) < UNIFORM_SHARE
    by_popularity = np.searchsorted(item_cdf, rng.random(len(rows)) * item_cdf[-1])
    candidates = np.where(uniform, rng.integers(0, n_items, len(rows)), np.minimum(by_popularity, n_items - 1))
    pairs = rows * n_items + candidates
    pairs.sort()
    pairs = pairs[np.concatenate([[True], pairs[1:] != pairs[:-1]])]  # distinct (row, item), sorted by row
    rows, candidates = np.divmod(pairs, n_items)
    affinity = np.einsum("nf,nf->n", user_f32[rows], item_f32[candidates])  # (n_distinct,)
    keys = item_bias[candidates] + 1.5 * affinity + rng.gumbel(size=len(rows)).astype(np.float32)
    by_key = np.argsort(-keys)
    order = by_key[np.argsort(rows[by_key], kind="stable")]  # by row, then by descending key
    rows, candidates, affinity = rows[order], candidates[order], affinity[order]
    first = np.searchsorted(rows, np.arange(len(user_f32)))
    rank = np.arange(len(rows)) - first[rows]
    n_distinct = np.bincount(rows, minlength=len(user_f32))
    missing = np.flatnonzero(n_distinct < n_per_user)
    keep = (rank < n_per_user[rows]) & (n_distinct[rows] >= n_per_user[rows])
    rows, candidates, affinity = rows[keep], candidates[keep], affinity[keep]
    shuffle = np.argsort(rng.random(len(rows)) + rows, kind="stable")  # random watch order within a row
    return rows[shuffle], candidates[shuffle], affinity[shuffle].astype(np.float64), missing


def _stars(rng: np.random.Generator, affinity: np.ndarray) -> np.ndarray:
    """1-5 stars: affinity standardized over the batch, plus noise, around a mean of 3.6."""
    z = (affinity - affinity.mean()) / (affinity.std() + 1e-9)
    return np.clip(np.rint(3.6 + 0.9 * z + 0.8 * rng.normal(size=len(z))), 1, 5).astype(np.int64)


def _write_lines(path: Path, users: np.ndarray, items: np.ndarray, stars: np.ndarray, ts: np.ndarray) -> None:
    """``user::item::stars::timestamp`` lines, written by Arrow's CSV writer in chunks of rows (Arrow
    takes a one-byte delimiter: it writes 0x01, which no number contains, and each chunk's bytes are
    then rewritten with ``::``)."""
    options = pa_csv.WriteOptions(include_header=False, delimiter="\x01")
    with atomic_path(path) as tmp, tmp.open("wb") as out:
        for lo in range(0, len(users), WRITE_CHUNK_ROWS):
            part = slice(lo, lo + WRITE_CHUNK_ROWS)
            columns = {"u": users[part], "i": items[part], "r": stars[part], "t": ts[part]}
            table = pa.table({name: np.asarray(values, dtype=np.int64) for name, values in columns.items()})
            buffer = io.BytesIO()
            pa_csv.write_csv(table, buffer, options)
            out.write(buffer.getvalue().replace(b"\x01", b"::"))


def _write_text(path: Path, lines: list[str], encoding: str = "utf-8") -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding=encoding)
