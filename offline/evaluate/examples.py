"""Example users for the report: what a person sees, by title, beside the metric tables.

For a few holdout users (the lowest ids, as ``make demo`` shows users 1, 2, 3): the last offline items
they rated (liked ones marked), then the top of their evaluated list, with genres, and a mark on the
items they went on to like in the online holdout. Titles come from the dataset's items (offline files
are the offline side's own data).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data_exchange_center import schema as S
from data_exchange_center.artifacts import atomic_path, read_parquet
from data_exchange_center.item_catalog import build_catalog
from data_exchange_center.paths import ArtifactPaths

N_USERS = 3
N_HISTORY = 5
N_ITEMS = 10


def _label(catalog: pd.DataFrame, item: int) -> str:
    if item not in catalog.index:
        return f"item {item}"
    row = catalog.loc[item]
    year = "" if pd.isna(row[S.TITLE + "_year"]) else f" ({int(row[S.TITLE + '_year'])})"
    return f"{row[S.TITLE]}{year}".replace("|", "\\|")


def example_users_markdown(
    paths: ArtifactPaths,
    user_ids: np.ndarray,
    relevant: list[np.ndarray],
    ranked: list[np.ndarray],
    n_users: int = N_USERS,
) -> list[str]:
    """Markdown lines of the section; ``ranked[i]`` is the evaluated list of ``user_ids[i]``."""
    catalog = build_catalog(read_parquet(paths.items_path, (S.ITEM_ID, S.TITLE, S.GENRES)))
    catalog = catalog.rename(columns={"year": S.TITLE + "_year"}).set_index(S.ITEM_ID)
    seen = read_parquet(paths.user_seen_path, (S.USER_ID, S.ITEMS, S.LABELS)).set_index(S.USER_ID)
    lines = ["", "## Example users", "",
             f"The last {N_HISTORY} offline ratings (♥: liked) and the top {N_ITEMS} of the evaluated list; "
             "✓ marks an item the user liked in the online holdout.", ""]  # fmt: skip
    for pos in np.argsort(user_ids)[:n_users].tolist():
        user = int(user_ids[pos])
        items, labels = (seen.loc[user, S.ITEMS], seen.loc[user, S.LABELS]) if user in seen.index else ([], [])
        history = [_label(catalog, int(i)) + (" ♥" if lab > 0 else "") for i, lab in zip(items, labels, strict=True)]
        lines += [f"### User {user}", "", "Last rated: " + (" · ".join(history[::-1][:N_HISTORY]) or "nothing"), ""]
        lines += ["| # | title | genres | liked later |", "|---|---|---|---|"]
        hits = set(np.asarray(relevant[pos]).tolist())
        for rank, item in enumerate(ranked[pos][:N_ITEMS].tolist(), start=1):
            genres = ", ".join(catalog.loc[item, S.GENRES]) if item in catalog.index else ""
            lines.append(f"| {rank} | {_label(catalog, item)} | {genres} | {'✓' if item in hits else ''} |")
        lines.append("")
    return lines


def append_example_users(
    paths: ArtifactPaths, user_ids: np.ndarray, relevant: list[np.ndarray], ranked: list[np.ndarray]
) -> Path:
    """Add the section to ``reports/report.md`` (rewritten atomically)."""
    text = paths.report_path.read_text() if paths.report_path.exists() else ""
    with atomic_path(paths.report_path) as tmp:
        tmp.write_text(text + "\n".join(example_users_markdown(paths, user_ids, relevant, ranked)) + "\n")
    return paths.report_path
