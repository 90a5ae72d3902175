"""Column names, dtypes and label semantics shared by every layer."""

from __future__ import annotations

import re

# --- dataset (s0): normalized from any MovieLens layout --------------------------------------
USER_ID = "userid"
ITEM_ID = "itemid"
RATING = "rating"
TIMESTAMP = "timestamp"
TITLE = "title"
GENRES = "genres"  # list<string> on items
GENDER = "gender"
AGE = "age"
OCCUPATION = "occupation"
DEMOGRAPHIC_COLUMNS = (GENDER, AGE, OCCUPATION)

RATINGS_COLUMNS = (USER_ID, ITEM_ID, RATING, TIMESTAMP)
ITEMS_COLUMNS = (ITEM_ID, TITLE, GENRES)
USERS_COLUMNS = (USER_ID,)  # demographics are optional: absent in the CSV family, never invented

# --- preprocess (s1 split) ---------------------------------------------------------------------
LABEL = "label"  # 1 if rating > POSITIVE_RATING_THRESHOLD else 0
SPLIT = "split"
SEQ = "seq"  # 0-based position in the user's time-ordered timeline
POSITIVE_RATING_THRESHOLD = 3.0
SPLIT_TRAIN, SPLIT_TEST, SPLIT_ONLINE = "train", "test", "online"
SPLITS = (SPLIT_TRAIN, SPLIT_TEST, SPLIT_ONLINE)
N_ONLINE_PER_USER = 10
TRAIN_FRACTION = 0.8
SAMPLES_COLUMNS = (USER_ID, ITEM_ID, RATING, TIMESTAMP, LABEL, SEQ, SPLIT)

# --- preprocess (s2 point-in-time terms) ------------------------------------------------------
PIT_WINDOW = 10  # the user's previous N impressions, strictly before the current one
TERM_MIN_CLICKS = 3  # a genre becomes a user term with at least this many clicks in the window
TERMS = "terms"  # list<string>
IMPRESSION_PREFIX = "imp_"
CLICK_PREFIX = "clk_"
GENRE_FLAG_PREFIX = "genre_"
# the user's whole history before an impression (point-in-time, expanding window)
HIST_N = "hist_n"  # number of earlier impressions
HIST_CLICK_RATE = "hist_click_rate"  # smoothed share of earlier impressions that were clicks
HIST_MEAN_RATING = "hist_mean_rating"  # smoothed mean of earlier ratings
HISTORY_COLUMNS = (HIST_N, HIST_CLICK_RATE, HIST_MEAN_RATING)
HISTORY_PRIOR_WEIGHT = 5.0  # pseudo-impressions of the prior below (fixed, so no statistics leak in)
PRIOR_CLICK_RATE = 0.5
PRIOR_MEAN_RATING = 3.5


def genre_slug(genre: str) -> str:
    """A column-safe name for a genre: ``"Children's"`` -> ``"children_s"``, ``"Sci-Fi"`` -> ``"sci_fi"``."""
    slug = re.sub(r"[^0-9a-z]+", "_", genre.lower()).strip("_")
    return slug or "unknown"


def impression_column(genre: str) -> str:
    return IMPRESSION_PREFIX + genre_slug(genre)


def click_column(genre: str) -> str:
    return CLICK_PREFIX + genre_slug(genre)


def genre_flag_column(genre: str) -> str:
    return GENRE_FLAG_PREFIX + genre_slug(genre)


def pit_columns(genres: list[str]) -> list[str]:
    """The point-in-time count columns, impressions then clicks, in genre order."""
    return [impression_column(g) for g in genres] + [click_column(g) for g in genres]


# --- recall artifacts -------------------------------------------------------------------------
# recall/popularity.parquet:     itemid int64, score float32 (positive offline impressions), score desc
# recall/item_neighbors.parquet: itemid int64, neighbor int64, weight float32 (top-N per item, weight desc)
# recall/user_seen.parquet:      userid int64, items list<int64>, labels list<int8>, ratings list<float32>
#                                (the offline impressions in time order)
# recall/{user,item}_vectors.npz: ids int64 (n,), vectors float32 (n, dim); similarity: inner product
# user terms: preprocess/user_profiles.parquet (userid, terms); item terms: preprocess/item_terms.parquet
SCORE = "score"
NEIGHBOR = "neighbor"
WEIGHT = "weight"
ITEMS = "items"
LABELS = "labels"
RATINGS = "ratings"
VECTOR_IDS = "ids"
VECTORS = "vectors"
# recall/user_vectors.npz: the SHA-256 of the user tower (recall/user_tower.onnx) that computed the vectors
VECTOR_TOWER = "tower_sha256"
