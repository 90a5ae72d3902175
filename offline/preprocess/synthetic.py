"""A synthetic MovieLens in the ML-1M layout, at any size, with realistic structure.

Users have latent tastes built from genre preferences, items have genres, latent factors and a
long-tailed popularity; each user watches items drawn by popularity times taste (without
replacement, Gumbel top-k), rates them by affinity plus noise, in a timeline of increasing
timestamps. Demographics shift genre preferences a little, so they carry signal as in the real data.
Files are written with the exact ``::`` layout of ML-1M so the same reader parses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


@dataclass(frozen=True)
class SyntheticConfig:
    n_users: int = 1000
    n_items: int = 500
    n_ratings: int = 60_000
    n_factors: int = 8
    seed: int = 42


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
    """Per user, ``n_per_user`` distinct items by Gumbel top-k over popularity x taste, in chunks."""
    users, items, ratings = [], [], []
    chunk = max(1, 4_000_000 // config.n_items)
    scale = np.sqrt(config.n_factors)
    for lo in range(0, config.n_users, chunk):
        hi = min(lo + chunk, config.n_users)
        affinity = user_factors[lo:hi] @ item_factors.T / scale  # (chunk, n_items)
        keys = log_popularity + 1.5 * affinity + rng.gumbel(size=affinity.shape)
        order = np.argsort(-keys, axis=1)
        take = np.arange(config.n_items)[None, :] < n_per_user[lo:hi, None]  # (chunk, n_items)
        rows, ranks = np.nonzero(take)
        picked = order[rows, ranks]
        # watch order is random within a user: shuffle ranks so the timeline is not sorted by taste
        shuffle_keys = rng.random(len(rows)) + rows
        perm = np.argsort(shuffle_keys, kind="stable")
        rows, picked = rows[perm], picked[perm]
        aff = affinity[rows, picked]
        z = (aff - aff.mean()) / (aff.std() + 1e-9)
        stars = np.clip(np.rint(3.6 + 0.9 * z + 0.8 * rng.normal(size=len(z))), 1, 5).astype(np.int64)
        users.append(rows + lo)
        items.append(picked)
        ratings.append(stars)
    return np.concatenate(users), np.concatenate(items), np.concatenate(ratings)


def _write_lines(path: Path, users: np.ndarray, items: np.ndarray, stars: np.ndarray, ts: np.ndarray) -> None:
    table = np.column_stack([users, items, stars, ts]).astype(np.int64)
    with atomic_path(path) as tmp:
        np.savetxt(tmp, table, fmt="%d", delimiter="::")


def _write_text(path: Path, lines: list[str], encoding: str = "utf-8") -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding=encoding)
