"""Publish the user recall profiles to the embedded store: a versioned folder and a CURRENT pointer.

The layout is in ``data_exchange_center/online_layout.py`` and ``ONLINE_STORE_FORMAT.md``. A version is
written into a temporary folder, read back and compared with its source, renamed into place, and only
then does ``CURRENT`` switch to it. Every other version is then removed except the one that was live
before (``previous``): a server that read CURRENT just before the switch can still load the version it
was told about, and a rollback (``offline_to_online/s4_rollback.py``) can go back to it.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from data_exchange_center import online_layout as L
from data_exchange_center import schema as S
from data_exchange_center.artifacts import read_json, read_npz, write_json
from data_exchange_center.redis_layout import UserProfileRecord
from offline_to_online.common import PublishVerificationError, make_readable
from offline_to_online.recall.redis_users import compare_records, sample_positions
from offline_to_online.recall.user_source import UserSource

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"


@dataclass
class EmbeddedPublishReport:
    version: str
    previous: str | None
    n_users: int
    n_verified: int
    version_dir: Path
    deleted: list[str] = field(default_factory=list)


def publish_users_embedded(store_dir: Path, source: UserSource, *, version: str | None = None) -> EmbeddedPublishReport:
    """Write ``source`` as a new version folder, verify it, switch CURRENT, prune old versions."""
    version = version or L.new_version()
    previous = L.read_current_version(store_dir)
    remove_temporary_folders(store_dir)
    tmp_dir = store_dir / f"{TMP_PREFIX}{version}"
    tmp_dir.mkdir(parents=True)
    try:
        write_version(tmp_dir, source, version)
        n_verified = verify_version(tmp_dir, source)
        tmp_dir.rename(store_dir / version)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    L.write_current_version(store_dir, version)
    deleted = prune_versions(store_dir, version, previous)
    log.info(
        "embedded users: version %s live (was %s), %d users, %d read back",
        version,
        previous,
        source.n_users,
        n_verified,
    )
    return EmbeddedPublishReport(version, previous, source.n_users, n_verified, store_dir / version, deleted)


def users_table(source: UserSource) -> pa.Table:
    """userid int64, terms list<string>, seen list<int64>, seen_labels list<int8>, seen_ratings
    list<float32>, base_event_seq int64, one row per user."""
    base = source.base_event_seqs if source.base_event_seqs is not None else np.zeros(source.n_users, np.int64)
    return pa.table(
        {
            S.USER_ID: pa.array(source.userids, pa.int64()),
            S.TERMS: pa.array(source.terms, pa.list_(pa.string())),
            L.SEEN: pa.array(source.seen, pa.list_(pa.int64())),
            L.SEEN_LABELS: pa.array(source.seen_labels, pa.list_(pa.int8())),
            L.SEEN_RATINGS: pa.array(source.seen_ratings, pa.list_(pa.float32())),
            L.BASE_EVENT_SEQ: pa.array(base, pa.int64()),
        }
    )


def write_version(folder: Path, source: UserSource, version: str) -> None:
    pq.write_table(users_table(source), folder / L.USERS_TABLE_FILE)
    has_vector = source.vector_rows >= 0
    with (folder / L.USERS_VECTORS_FILE).open("wb") as fh:
        np.savez(
            fh,
            **{S.VECTOR_IDS: source.userids[has_vector], S.VECTORS: source.vectors[source.vector_rows[has_vector]]},
        )
    manifest = {
        "version": version,
        "n_users": source.n_users,
        "n_vectors": int(has_vector.sum()),
        "vector_dim": source.vector_dim,
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "vector_tower": source.vector_tower,  # the tower that computed the vectors (None: not known)
    }
    make_readable(write_json(manifest, folder / L.MANIFEST_FILE))


def load_version(folder: Path) -> dict[int, UserProfileRecord]:
    """Every user of a version folder (the reference reader of this layout)."""
    table = pd.read_parquet(folder / L.USERS_TABLE_FILE)
    arrays = read_npz(folder / L.USERS_VECTORS_FILE, (S.VECTOR_IDS, S.VECTORS))
    vectors = dict(zip(arrays[S.VECTOR_IDS].tolist(), arrays[S.VECTORS], strict=True))
    records = {}
    base = table[L.BASE_EVENT_SEQ] if L.BASE_EVENT_SEQ in table else pd.Series(0, index=table.index)
    ratings = table[L.SEEN_RATINGS] if L.SEEN_RATINGS in table else pd.Series(None, index=table.index)
    for userid, terms, seen, labels, user_ratings, base_seq in zip(
        table[S.USER_ID].tolist(), table[S.TERMS], table[L.SEEN], table[L.SEEN_LABELS], ratings, base.tolist(),
        strict=True,
    ):
        records[userid] = UserProfileRecord(
            userid=userid,
            terms=[str(t) for t in terms],
            vector=vectors.get(userid),
            seen=np.asarray(seen, dtype=np.int64),
            seen_labels=np.asarray(labels, dtype=np.int8),
            seen_ratings=None if user_ratings is None else np.asarray(user_ratings, dtype=np.float32),
            base_event_seq=int(base_seq),
        )
    return records


def verify_version(folder: Path, source: UserSource, n_sample: int = 1000) -> int:
    """The folder holds exactly the source's users, and a sample decodes equal to the source."""
    manifest = read_json(folder / L.MANIFEST_FILE)
    records = load_version(folder)
    if len(records) != source.n_users or manifest["n_users"] != source.n_users:
        raise PublishVerificationError(f"{folder}: {len(records)} users read back, {source.n_users} written")
    sample = sample_positions(source.n_users, n_sample)
    for position in sample:
        expected = source.record(int(position))
        problem = compare_records(expected, records.get(expected.userid))
        if problem:
            raise PublishVerificationError(f"{folder}, user {expected.userid}: {problem}")
    return len(sample)


def prune_versions(store_dir: Path, current: str, previous: str | None) -> list[str]:
    """Delete every version but ``current`` and ``previous`` (the one live before it: a rollback target).

    Also removes versions that never went live (a publish killed after staging its folder)."""
    doomed = [v for v in L.list_versions(store_dir) if v not in (current, previous)]
    for version in doomed:
        shutil.rmtree(store_dir / version, ignore_errors=True)
    return doomed


def remove_temporary_folders(store_dir: Path) -> None:
    """Remove what an interrupted run left (never a live version: those have no dot prefix)."""
    if store_dir.is_dir():
        for leftover in store_dir.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(leftover, ignore_errors=True)
