"""Where every artifact lives, relative to one data directory (``RECSYS_DATA_DIR``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DATA_DIR = PACKAGE_DIR.parent / "data"
DATA_DIR_ENV = "RECSYS_DATA_DIR"


def default_data_dir() -> Path:
    """``$RECSYS_DATA_DIR`` if set, else ``data/`` at the repository root (git-ignored, apart from the code)."""
    return Path(os.environ.get(DATA_DIR_ENV) or REPO_DATA_DIR)


@dataclass(frozen=True)
class ArtifactPaths:
    """All artifact paths under one data directory. Stages take one of these, never build paths."""

    data_dir: Path

    @classmethod
    def from_env(cls, data_dir: str | Path | None = None) -> ArtifactPaths:
        return cls(Path(data_dir) if data_dir else default_data_dir())

    # --- s0: the dataset, normalized ---------------------------------------------------------
    @property
    def dataset_dir(self) -> Path:
        return self.data_dir / "dataset"

    @property
    def ratings_path(self) -> Path:
        return self.dataset_dir / "ratings.parquet"

    @property
    def event_seqs_path(self) -> Path:
        """``userid``, ``itemid``, ``seq``: the ratings that came from the event log (``fetch --events``) with
        their store sequence numbers (empty without events); the publish derives each user's base watermark."""
        return self.dataset_dir / "event_seqs.parquet"

    @property
    def items_path(self) -> Path:
        return self.dataset_dir / "items.parquet"

    @property
    def users_path(self) -> Path:
        return self.dataset_dir / "users.parquet"

    # --- preprocess --------------------------------------------------------------------------
    @property
    def preprocess_dir(self) -> Path:
        return self.data_dir / "preprocess"

    @property
    def samples_path(self) -> Path:
        return self.preprocess_dir / "samples.parquet"

    @property
    def pit_features_path(self) -> Path:
        return self.preprocess_dir / "pit_features.parquet"

    @property
    def user_profiles_path(self) -> Path:
        return self.preprocess_dir / "user_profiles.parquet"

    @property
    def item_terms_path(self) -> Path:
        return self.preprocess_dir / "item_terms.parquet"

    # --- recall ------------------------------------------------------------------------------
    @property
    def recall_dir(self) -> Path:
        return self.data_dir / "recall"

    @property
    def popularity_path(self) -> Path:
        return self.recall_dir / "popularity.parquet"

    @property
    def user_vectors_path(self) -> Path:
        return self.recall_dir / "user_vectors.npz"

    @property
    def item_vectors_path(self) -> Path:
        return self.recall_dir / "item_vectors.npz"

    @property
    def vector_model_dir(self) -> Path:
        """The vector-recall model (offline/recall/next_item.py): weights, model args, user-side ONNX."""
        return self.recall_dir / "vector_model"

    @property
    def user_tower_onnx_path(self) -> Path:
        """The vector model's user side, computed at request time (``model_signature.USER_TOWER_*``)."""
        return self.vector_model_dir / "user_tower.onnx"

    @property
    def user_tower_args_path(self) -> Path:
        """``window``, ``dim`` and how the user side's inputs are encoded (vocabulary: item_vectors.npz ids)."""
        return self.vector_model_dir / "model_args.json"

    @property
    def user_tower_reference_path(self) -> Path:
        """PyTorch user vectors of the first users (``userid``, ``vector``) for the offline == online check."""
        return self.vector_model_dir / "reference_vectors.parquet"

    @property
    def item_neighbors_path(self) -> Path:
        return self.recall_dir / "item_neighbors.parquet"

    @property
    def i2i_params_path(self) -> Path:
        """Item-to-item trigger parameters selected on validation; written by recall/3 only
        (``data_exchange_center.chain.TriggerPolicy``)."""
        return self.recall_dir / "i2i_params.json"

    @property
    def validation_neighbors_path(self) -> Path:
        """Item-to-item neighbours fitted on the training split only (for selections on validation)."""
        return self.recall_dir / "validation_item_neighbors.parquet"

    @property
    def user_seen_path(self) -> Path:
        return self.recall_dir / "user_seen.parquet"

    # --- rank --------------------------------------------------------------------------------
    @property
    def rank_dir(self) -> Path:
        return self.data_dir / "rank"

    @property
    def feature_spec_path(self) -> Path:
        return self.rank_dir / "feature_spec.json"

    @property
    def user_features_path(self) -> Path:
        return self.rank_dir / "user_features.parquet"

    @property
    def item_features_path(self) -> Path:
        return self.rank_dir / "item_features.parquet"

    @property
    def rank_train_path(self) -> Path:
        return self.rank_dir / "train.parquet"

    @property
    def rank_test_path(self) -> Path:
        return self.rank_dir / "test.parquet"

    @property
    def model_dir(self) -> Path:
        return self.rank_dir / "model"

    @property
    def model_weights_path(self) -> Path:
        return self.model_dir / "model.pt"

    @property
    def model_args_path(self) -> Path:
        return self.model_dir / "model_args.json"

    @property
    def onnx_path(self) -> Path:
        return self.model_dir / "model.onnx"

    @property
    def reference_scores_path(self) -> Path:
        """PyTorch scores of the first test rows (``row``, ``score``), for the offline == online check."""
        return self.model_dir / "reference_scores.parquet"

    @property
    def ranking_policy_path(self) -> Path:
        """How the final score combines the candidate evidence and the ranker, selected on validation;
        written by evaluate/1 only (``data_exchange_center.chain.RankingPolicy``)."""
        return self.rank_dir / "ranking_policy.json"

    @property
    def chain_params_paths(self) -> tuple[Path, ...]:
        """Every file that holds chain parameters selected offline (a published version copies them)."""
        return (self.i2i_params_path, self.ranking_policy_path)

    # --- offline to online -------------------------------------------------------------------
    @property
    def feature_repo_dir(self) -> Path:
        return self.data_dir / "feature_repo"

    @property
    def model_repository_dir(self) -> Path:
        return self.data_dir / "model_repository"

    @property
    def online_dir(self) -> Path:
        """Embedded-profile published state (versioned in-process stores) and version pointers."""
        return self.data_dir / "online"

    # --- reports -----------------------------------------------------------------------------
    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"

    @property
    def metrics_path(self) -> Path:
        return self.reports_dir / "metrics.json"

    @property
    def report_path(self) -> Path:
        return self.reports_dir / "report.md"
