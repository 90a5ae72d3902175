"""Ranking features: the feature specification and the per-impression feature tables.

Every feature column belongs to one of two sources, joined on ids:

- user: ``userid``, the demographics of ``users.parquet`` where the dataset has them (categorical); the
  point-in-time genre counts ``imp_*``/``clk_*``, history statistics ``hist_*`` and recent-window rates
  (dense, standardized); the per-genre affinities of ``user_history`` (dense, in [0, 1], passed through);
- item: ``itemid`` (categorical) and the ``genre_<slug>`` multi-hot flags (dense, passed through).

Training rows take the point-in-time user features of each impression (computed strictly before it);
the serving user table takes the same columns at the position right after the user's last offline
impression (the online user profile). Vocabularies and normalization statistics come from the training
split only, so no test row can change the specification.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from data_exchange_center import chain
from data_exchange_center import schema as S
from data_exchange_center.artifacts import ArtifactError
from data_exchange_center.feature_spec import CategoricalField, DenseField, FeatureSpec, Source
from data_exchange_center.user_history import all_affinity_columns, window_columns
from offline.preprocess.pit_features import list_genres, online_profile_positions
from offline.rank.user_history import UserHistory

KEY_COLUMNS = (S.USER_ID, S.ITEM_ID, S.LABEL, S.SEQ)  # identify a train/test row; ids double as features


@dataclass(frozen=True)
class RankingTables:
    """What ranking stage 1 writes: the specification and four feature tables."""

    spec: FeatureSpec
    user_features: pd.DataFrame  # one row per profiled user: the serving user features
    item_features: pd.DataFrame  # one row per catalogue item
    train: pd.DataFrame  # one row per train impression: KEY_COLUMNS + raw user and item feature columns
    test: pd.DataFrame  # the same for test impressions


# --- source tables ---------------------------------------------------------------------------------
def pit_input_columns(genres: list[str]) -> list[str]:
    """The preprocess point-in-time columns ranking reads: genre counts, then history statistics."""
    return S.pit_columns(genres) + list(S.HISTORY_COLUMNS)


def standardized_user_columns(genres: list[str]) -> list[str]:
    """User dense columns standardized with training statistics."""
    return pit_input_columns(genres) + window_columns()


def user_dense_columns(genres: list[str]) -> list[str]:
    """All user dense columns in model order: standardized ones, then the genre affinities."""
    return standardized_user_columns(genres) + all_affinity_columns(genres)


def demographic_columns(users: pd.DataFrame) -> list[str]:
    """The demographic columns this dataset has (none for the CSV family: absent, not invented)."""
    return [c for c in S.DEMOGRAPHIC_COLUMNS if c in users.columns]


def build_item_features(items: pd.DataFrame, genres: list[str]) -> pd.DataFrame:
    """``itemid`` + one int8 ``genre_<slug>`` flag per genre; one row per item, catalogue order."""
    _require_unique(items[S.ITEM_ID], "items.parquet", "item")
    exploded = items[[S.ITEM_ID, S.GENRES]].explode(S.GENRES).dropna()
    rows = pd.Index(items[S.ITEM_ID]).get_indexer(exploded[S.ITEM_ID])
    positions = pd.Index(genres).get_indexer(exploded[S.GENRES])
    flags = np.zeros((len(items), len(genres)), dtype=np.int8)  # (n_items, n_genres)
    flags[rows, positions] = 1
    out = pd.DataFrame(flags, columns=[S.genre_flag_column(g) for g in genres])
    out.insert(0, S.ITEM_ID, items[S.ITEM_ID].to_numpy())
    return out


def build_user_features(
    samples: pd.DataFrame, history: UserHistory, users: pd.DataFrame, profiles: pd.DataFrame, genres: list[str]
) -> pd.DataFrame:
    """The serving user features: ``userid``, demographics, then the dense columns of the online profile
    (the point-in-time features at the position right after each user's last offline impression)."""
    _require_unique(users[S.USER_ID], "users.parquet", "user")
    _require_unique(profiles[S.USER_ID], "user_profiles.parquet", "user")
    user_ids, first_row, positions = online_profile_positions(samples)
    profile_rows = pd.Index(profiles[S.USER_ID]).get_indexer(user_ids)
    if (profile_rows < 0).any() or len(profiles) != len(user_ids):
        raise ArtifactError(
            f"user_profiles.parquet has {len(profiles)} users, samples.parquet {len(user_ids)} "
            f"({int((profile_rows < 0).sum())} without a profile): re-run offline/preprocess/s2_term_trans.py"
        )
    window_counts = profiles.iloc[profile_rows].reset_index(drop=True)
    return user_features_at(history, users, window_counts, first_row, positions, genres)


def user_features_at(
    history: UserHistory,
    users: pd.DataFrame,
    window_counts: pd.DataFrame,
    first_row: np.ndarray,
    positions: np.ndarray,
    genres: list[str],
) -> pd.DataFrame:
    """User feature rows for hypothetical impressions at ``positions`` (one per user): ``userid``,
    demographics, then the dense columns; ``window_counts`` holds the preprocess point-in-time columns
    (with ``userid``) at those positions. Serving uses the position after the offline period; the
    validation setup of the evaluation uses the position after the training split."""
    check_history_position(history, first_row, positions, window_counts)
    extra = history.features_at(first_row, positions, window_counts, genres)
    out = pd.concat([window_counts[[S.USER_ID, *pit_input_columns(genres)]], extra], axis=1)
    return join_demographics(out, users, "user_profiles.parquet", at=1)


def check_history_position(
    history: UserHistory, first_row: np.ndarray, positions: np.ndarray, window_counts: pd.DataFrame
) -> None:
    """Refuse point-in-time rows whose history length disagrees with the samples at those positions."""
    n_history = history.events[positions, 0] - history.events[first_row, 0]
    if not np.array_equal(n_history, window_counts[S.HIST_N].to_numpy(dtype=np.float64)):
        raise ArtifactError(
            "the point-in-time features do not match samples.parquet (hist_n differs): they come from "
            "different runs; re-run offline/preprocess/s2_term_trans.py"
        )


def join_demographics(rows: pd.DataFrame, users: pd.DataFrame, what: str, at: int) -> pd.DataFrame:
    """Insert the dataset's demographic columns at column position ``at`` (in place); every user must be known."""
    demographics = demographic_columns(users)
    if not demographics:
        return rows
    _require_unique(users[S.USER_ID], "users.parquet", "user")
    positions = pd.Index(users[S.USER_ID]).get_indexer(rows[S.USER_ID])
    if (positions < 0).any():
        unknown = np.unique(rows[S.USER_ID].to_numpy()[positions < 0])
        raise ArtifactError(
            f"{len(unknown)} users of {what} are missing from users.parquet (e.g. {unknown[:5].tolist()}): "
            "the dataset and the preprocess artifacts come from different runs; re-run the preprocess stages"
        )
    for offset, column in enumerate(demographics, start=at):
        rows.insert(offset, column, users[column].to_numpy()[positions])
    return rows


def build_impression_rows(
    samples: pd.DataFrame,
    pit: pd.DataFrame,
    history: UserHistory,
    users: pd.DataFrame,
    item_features: pd.DataFrame,
    item_rows: np.ndarray,
    genres: list[str],
    split: str,
) -> pd.DataFrame:
    """Rows of one split: key columns, demographics, user dense columns, item genre flags.

    ``item_rows`` maps every sample to its row of ``item_features``."""
    positions = np.flatnonzero((samples[S.SPLIT] == split).to_numpy())
    rows = samples[list(KEY_COLUMNS)].iloc[positions].reset_index(drop=True)
    rows = join_demographics(rows, users, f"the {split} split", at=len(KEY_COLUMNS))
    window_counts = pit[pit_input_columns(genres)].iloc[positions].reset_index(drop=True)
    first_row = positions - samples[S.SEQ].to_numpy()[positions]
    extra = history.features_at(first_row, positions, window_counts, genres)
    flags = item_features.drop(columns=S.ITEM_ID).iloc[item_rows[positions]].reset_index(drop=True)
    with pd.option_context("mode.copy_on_write", True):  # keep the parts' blocks: no second copy of the rows
        return pd.concat([rows, window_counts, extra, flags], axis=1)


def sample_item_rows(samples: pd.DataFrame, item_features: pd.DataFrame) -> np.ndarray:
    """Each sample's row in ``item_features``; every rated item must be in the catalogue."""
    item_rows = pd.Index(item_features[S.ITEM_ID]).get_indexer(samples[S.ITEM_ID])
    if (item_rows < 0).any():
        unknown = np.unique(samples[S.ITEM_ID].to_numpy()[item_rows < 0])
        raise ArtifactError(
            f"{len(unknown)} rated items are missing from items.parquet (e.g. {unknown[:5].tolist()}): "
            "re-run the preprocess stages on one dataset"
        )
    return item_rows


# --- the specification -----------------------------------------------------------------------------
def categorical_field(name: str, source: Source, train_values: pd.Series) -> CategoricalField:
    """A field whose vocabulary is the sorted distinct training values (index 0 stays 'unknown')."""
    vocab = np.sort(train_values.dropna().unique())
    return CategoricalField(name=name, source=source, vocab=vocab.tolist())


def dense_field(name: str, source: Source, train_values: pd.Series, normalize: bool) -> DenseField:
    """A dense field; standardized with the training mean and (population) standard deviation."""
    if not normalize:
        return DenseField(name=name, source=source, normalize=False)
    values = train_values.to_numpy(dtype=np.float64)
    std = float(values.std())
    return DenseField(name=name, source=source, mean=float(values.mean()), std=std if std > 0 else 1.0)


def build_feature_spec(
    train: pd.DataFrame | ParquetColumns, users: pd.DataFrame, genres: list[str], dataset: str
) -> FeatureSpec:
    """The feature specification from training rows: user fields first, then item fields, then the
    candidate's recall evidence (computed per request, ``chain.candidate_evidence``)."""
    user_categorical = [S.USER_ID, *demographic_columns(users)]
    categorical = [categorical_field(c, "user", train[c]) for c in user_categorical]
    categorical.append(categorical_field(S.ITEM_ID, "item", train[S.ITEM_ID]))
    dense = [dense_field(c, "user", train[c], normalize=True) for c in standardized_user_columns(genres)]
    dense += [dense_field(c, "user", train[c], normalize=False) for c in all_affinity_columns(genres)]
    dense += [dense_field(S.genre_flag_column(g), "item", train[S.genre_flag_column(g)], False) for g in genres]
    dense += [DenseField(name, "candidate", normalize=False) for name in chain.EVIDENCE_FIELDS]  # each in [0, 1]
    return FeatureSpec(dataset=dataset, categorical=categorical, dense=dense, genres=list(genres))


# --- the whole transformation ----------------------------------------------------------------------
@dataclass(frozen=True)
class BlockRows:
    """The rows of one block of whole users (``user_blocks``): every feature is a function of one user's
    timeline, so the blocks' rows concatenated are the whole table's."""

    train: pd.DataFrame
    test: pd.DataFrame
    user_features: pd.DataFrame


def build_block_rows(
    samples: pd.DataFrame,
    pit: pd.DataFrame,
    profiles: pd.DataFrame,
    users: pd.DataFrame,
    item_features: pd.DataFrame,
    genres: list[str],
) -> BlockRows:
    """Train, test and serving rows of the users of ``samples`` (whole users; ``pit`` row-aligned, ``profiles``
    exactly those users)."""
    item_rows = sample_item_rows(samples, item_features)
    flags = item_features.drop(columns=S.ITEM_ID).to_numpy()[item_rows]  # (n_samples, n_genres)
    history = UserHistory.from_samples(samples, flags)
    del flags
    check_history_position(history, np.arange(len(samples)) - samples[S.SEQ].to_numpy(), np.arange(len(samples)), pit)
    train, test = (
        build_impression_rows(samples, pit, history, users, item_features, item_rows, genres, split)
        for split in (S.SPLIT_TRAIN, S.SPLIT_TEST)
    )
    return BlockRows(train, test, build_user_features(samples, history, users, profiles, genres))


def build_ranking_tables(
    samples: pd.DataFrame,
    pit: pd.DataFrame,
    profiles: pd.DataFrame,
    users: pd.DataFrame,
    items: pd.DataFrame,
    dataset: str,
) -> RankingTables:
    """All ranking features from the preprocess artifacts in memory (the stage streams them by blocks of
    users, ``offline/rank/s1_feature_engi.py``); refuses inputs that do not fit together."""
    genres = list_genres(items)
    check_inputs(samples, len(pit), list(pit.columns), profiles, genres)
    item_features = build_item_features(items, genres)
    rows = build_block_rows(samples, pit, profiles, users, item_features, genres)
    spec = build_feature_spec(rows.train, users, genres, dataset)
    return RankingTables(spec, rows.user_features, item_features, rows.train, rows.test)


def block_profiles(profiles: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``profiles`` of the users of ``samples`` (a block of whole users)."""
    return profiles[profiles[S.USER_ID].isin(samples[S.USER_ID].unique())]


class ParquetColumns:
    """The columns of a Parquet table, each read on access (``columns[name]`` is a Series): the feature
    specification's statistics from a training table larger than memory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __getitem__(self, column: str) -> pd.Series:
        return pq.read_table(self.path, columns=[column]).to_pandas()[column]


def check_inputs(
    samples: pd.DataFrame, n_pit_rows: int, pit_columns: list[str], profiles: pd.DataFrame, genres: list[str]
) -> None:
    """Raise ``ArtifactError`` unless the preprocess artifacts fit each other and the catalogue."""
    if n_pit_rows != len(samples):
        raise ArtifactError(
            f"pit_features.parquet has {n_pit_rows} rows but samples.parquet has {len(samples)}: they must be "
            "row-aligned; re-run offline/preprocess/s2_term_trans.py"
        )
    expected = pit_input_columns(genres)
    for name, columns in (("pit_features.parquet", pit_columns), ("user_profiles.parquet", list(profiles.columns))):
        missing = [c for c in expected if c not in columns]
        if missing:
            raise ArtifactError(
                f"{name} lacks {missing[:6]} (expected from the catalogue's genres {genres}): the preprocess "
                "artifacts and items.parquet come from different runs; re-run offline/preprocess/s2_term_trans.py"
            )
    n_users = int(samples[S.USER_ID].nunique())
    if len(profiles) != n_users:
        raise ArtifactError(
            f"user_profiles.parquet has {len(profiles)} users, samples.parquet {n_users}: "
            "re-run offline/preprocess/s2_term_trans.py"
        )
    for split in (S.SPLIT_TRAIN, S.SPLIT_TEST):
        if not (samples[S.SPLIT] == split).any():
            raise ArtifactError(f"samples.parquet has no {split} rows: re-run offline/preprocess/s1_data_split.py")


def _require_unique(ids: pd.Series, file_name: str, what: str) -> None:
    duplicated = ids[ids.duplicated()]
    if len(duplicated):
        raise ArtifactError(
            f"{file_name} has {len(duplicated)} duplicate {what} ids (e.g. {duplicated.head(5).tolist()}): "
            "re-run the stage that wrote it"
        )
