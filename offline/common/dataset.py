"""What every offline stage needs to know about the dataset it runs on."""

from __future__ import annotations

from data_exchange_center.artifacts import read_json
from data_exchange_center.paths import ArtifactPaths


def dataset_name(paths: ArtifactPaths) -> str:
    """The dataset name recorded by stage 0 (``dataset/metadata.json``)."""
    meta = read_json(paths.dataset_dir / "metadata.json")
    return str(meta["s0_fetch_data"]["dataset"])
