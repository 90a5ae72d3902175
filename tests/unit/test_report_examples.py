"""The report's example users: history and recommendations by title, holdout hits marked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_exchange_center import schema as S
from data_exchange_center.artifacts import write_parquet
from data_exchange_center.paths import ArtifactPaths
from offline.evaluate.examples import append_example_users

pytestmark = pytest.mark.unit


def test_example_users_by_title(tmp_path: Path) -> None:
    paths = ArtifactPaths.from_env(tmp_path)
    items = pd.DataFrame({S.ITEM_ID: [1, 2, 3, 4], S.TITLE: ["Alien (1979)", "Aliens (1986)", "A|B (2000)", "Heat"],
                          S.GENRES: [["Horror", "Sci-Fi"], ["Action"], ["Comedy"], ["Crime"]]})  # fmt: skip
    write_parquet(items, paths.items_path)
    seen = pd.DataFrame({S.USER_ID: [7, 9], S.ITEMS: [[1, 3], [2]], S.LABELS: [[1, 0], [0]]})
    write_parquet(seen, paths.user_seen_path)
    paths.report_path.parent.mkdir(parents=True)
    paths.report_path.write_text("# Pipeline report\n")
    append_example_users(paths, np.array([9, 7, 11]), [np.array([4]), np.array([2]), np.array([])],
                         [np.array([4, 1]), np.array([2, 4]), np.array([1])])  # fmt: skip
    text = paths.report_path.read_text()
    assert text.startswith("# Pipeline report\n")
    assert text.index("### User 7") < text.index("### User 9") < text.index("### User 11")
    assert "Last rated: A\\|B (2000) · Alien (1979) ♥" in text  # latest first, liked marked, | escaped
    assert "| 1 | Aliens (1986) | Action | ✓ |" in text  # user 7 liked item 2 in the holdout
    assert "| 2 | Heat | Crime |  |" in text
    assert "### User 11\n\nLast rated: nothing" in text
