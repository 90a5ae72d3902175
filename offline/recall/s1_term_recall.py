"""Stage recall/1: the popularity fallback, the users' seen-item filters, and the genre-term channel.

Reads preprocess/samples.parquet, preprocess/user_profiles.parquet (user terms: genres with at least 3
clicks among the last 10 offline impressions) and preprocess/item_terms.parquet. Writes
recall/popularity.parquet and recall/user_seen.parquet. The term channel itself is a query at serving
time (items carrying the user's genres, most matching genres first, then popularity); it and the
popularity baseline are evaluated on the online holdout by offline/evaluate/s1_topk_report.py, with
every other channel, in one pass. ``--evaluate`` evaluates the two here too.
"""

from __future__ import annotations

import logging
import sys

from data_exchange_center import schema as S
from data_exchange_center.artifacts import read_parquet, update_metrics, write_metadata, write_parquet
from data_exchange_center.item_index import ItemIndex
from data_exchange_center.paths import ArtifactPaths
from offline.common.dataset import dataset_name
from offline.common.holdout import TOPK, Holdout, evaluate_recommender
from offline.common.spark import DEFAULT_ENGINE, add_engine_argument, spark_session
from offline.common.stage import run_stage, stage_parser
from offline.common.user_states import UserStates, channel_recommender
from offline.recall.tables import popularity_table, user_seen_table
from offline.recall.term_recall_spark import term_recall_tables_spark

log = logging.getLogger(__name__)


def term_recall(
    paths: ArtifactPaths, evaluate: bool = False, engine: str = DEFAULT_ENGINE
) -> dict[str, dict[str, float]]:
    if engine == "spark":
        with spark_session("s1_term_recall") as spark:
            n_popular, n_seen = term_recall_tables_spark(spark, paths)
    else:
        samples = read_parquet(paths.samples_path, S.SAMPLES_COLUMNS)
        popularity, seen = popularity_table(samples), user_seen_table(samples)
        write_parquet(popularity, paths.popularity_path)
        write_parquet(seen, paths.user_seen_path)
        n_popular, n_seen = len(popularity), len(seen)
    n_with_terms = int((read_parquet(paths.user_profiles_path, (S.TERMS,))[S.TERMS].map(len) > 0).sum())
    log.info(
        "%d items by popularity, seen lists of %d users, %d users with genre terms",
        n_popular,
        n_seen,
        n_with_terms,
    )
    outputs = {"n_popular_items": n_popular, "n_users": n_seen, "n_users_with_terms": n_with_terms}
    if not evaluate:
        write_metadata(
            paths.recall_dir,
            "s1_term_recall",
            outputs,
            dataset=dataset_name(paths),
            config={"term_min_clicks": S.TERM_MIN_CLICKS},
        )
        return {}
    index = ItemIndex.load(paths, with_vectors=False, with_neighbors=False)
    users = UserStates(paths, with_vectors=False)
    holdout = Holdout.from_samples(read_parquet(paths.samples_path, S.SAMPLES_COLUMNS))
    results = {
        channel: evaluate_recommender(holdout, channel_recommender(index, users, channel, TOPK), desc=channel)
        for channel in ("popularity", "term")
    }
    for channel, metrics in results.items():
        log.info("%s@%d on the online holdout: %s", channel, TOPK, metrics)
    write_metadata(
        paths.recall_dir,
        "s1_term_recall",
        {**outputs, **results},
        config={"term_min_clicks": S.TERM_MIN_CLICKS},
        dataset=dataset_name(paths),
    )
    update_metrics(paths.metrics_path, {"topk": {"k": TOPK, **results}})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__ or "")
    parser.add_argument("--evaluate", action="store_true", help="also evaluate popularity and terms on the holdout")
    add_engine_argument(parser)
    args = parser.parse_args(argv)
    return run_stage("s1_term_recall", args, lambda paths: term_recall(paths, args.evaluate, args.engine))


if __name__ == "__main__":
    sys.exit(main())
