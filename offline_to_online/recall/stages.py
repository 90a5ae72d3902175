"""The recall publish stages as functions (the numbered scripts beside this module are their commands)."""

from __future__ import annotations

import elastic_transport

from data_exchange_center.online_layout import new_version, users_store_dir
from data_exchange_center.settings import Settings
from offline_to_online.common import BackendUnavailable, redact_url, served_by
from offline_to_online.recall.embedded_items import (
    EmbeddedItemsReport,
    activate_item_version,
    discard_item_version,
    publish_items_embedded,
    stage_item_version,
)
from offline_to_online.recall.embedded_users import EmbeddedPublishReport, publish_users_embedded
from offline_to_online.recall.es_client import ES_HINT, ElasticsearchApi, connect_es
from offline_to_online.recall.es_items import MIN_KNN_AGREEMENT, EsPublishReport, publish_items_to_es
from offline_to_online.recall.item_source import chain_parameters, load_item_source
from offline_to_online.recall.redis_users import (
    BATCH_SIZE,
    RedisPublishReport,
    connect_redis,
    publish_users_to_redis,
)
from offline_to_online.recall.user_source import load_user_source


def user_to_redis(
    settings: Settings, batch_size: int = BATCH_SIZE, progress: bool = True, connect_attempts: int = 5
) -> RedisPublishReport | EmbeddedPublishReport:
    """Check the user artifacts, then publish them to the profile's store; returns what was published."""
    source = load_user_source(settings.paths)  # checked before anything is written
    if not served_by(settings, "profiles", "redis", "s1_user_to_redis", "publishing the in-process store"):
        return publish_users_embedded(users_store_dir(settings.paths), source)
    client = connect_redis(settings.redis_url, attempts=connect_attempts)
    return publish_users_to_redis(client, source, settings.redis_namespace, batch_size=batch_size, progress=progress)


def item_to_es(
    settings: Settings, progress: bool = True, connect_attempts: int = 5, min_knn_agreement: float = MIN_KNN_AGREEMENT
) -> EsPublishReport | EmbeddedItemsReport:
    """Check the item artifacts, then publish them to the profile's item index."""
    load_item_source(settings.paths)  # checked before anything is written
    chain = chain_parameters(settings.paths)
    if not served_by(settings, "index", "elasticsearch", "s2_item_to_es", "publishing the in-process version only"):
        return publish_items_embedded(settings.paths, chain)
    api = ElasticsearchApi(connect_es(settings, attempts=connect_attempts))
    version = new_version()
    _, source = stage_item_version(settings.paths, chain, version)  # the fallback's copy, not yet live
    try:
        report = publish_items_to_es(
            api, source, settings.es_index_alias, version=version, chain=chain, progress=progress,
            min_knn_agreement=min_knn_agreement,
        )  # fmt: skip
    except (elastic_transport.ConnectionError, elastic_transport.ConnectionTimeout) as exc:
        discard_item_version(settings.paths, version)
        raise BackendUnavailable(
            "Elasticsearch", redact_url(settings.es_url), exc, f"the publish stopped, the alias is unchanged; {ES_HINT}"
        ) from None
    except BaseException:
        discard_item_version(settings.paths, version)
        raise
    activate_item_version(settings.paths, version)
    return report
