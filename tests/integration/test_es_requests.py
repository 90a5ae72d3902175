"""The HTTP requests that the real elasticsearch-py client sends for our Elasticsearch calls.

No Elasticsearch server runs here, so a small HTTP server in the test records what the official client
puts on the wire (method, path, query string, body) and answers like Elasticsearch 8 does for the few
APIs involved; for ``_mget`` it applies the server's body rule (only ``docs`` or ``ids`` at the top
level, else HTTP 400 ``unknown key [...] for a START_ARRAY, expected [docs] or [ids]``).

What these tests prove: the neighbour look-up of the online adapter reaches the server as
``GET /{index}/_mget?_source=...`` with ``{"ids": [...]}`` (the body the server accepts), while the
previous shape is refused by the same rule; the force-merge of the publish runs on its own timeout,
longer than the one its other requests share.
"""

from __future__ import annotations

import inspect
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import elastic_transport
import pytest
from elasticsearch import BadRequestError, Elasticsearch

from data_exchange_center import es_layout as E
from data_exchange_center.settings import load_settings
from offline_to_online.recall.es_client import ElasticsearchApi as PublishApi
from online.backends.es_index import ElasticsearchApi as OnlineApi

pytestmark = pytest.mark.integration
MGET_BODY_KEYS = {"docs", "ids"}  # what the server's multi-get parser accepts at the top level


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any


@dataclass
class FakeCluster:
    """What the stub server answers and what it saw."""

    requests: list[Recorded] = field(default_factory=list)
    merge_delay_s: float = 0.0
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)


def handler_for(cluster: FakeCluster) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Elastic-Product", "Elasticsearch")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            cluster.requests.append(Recorded(self.command, url.path, parse_qs(url.query), body))
            if url.path == "/":
                self._answer(200, {"version": {"number": "8.19.2"}, "tagline": "You Know, for Search"})
            elif url.path.endswith("/_mget"):
                self._mget(body)
            elif url.path.endswith("/_forcemerge"):
                time.sleep(cluster.merge_delay_s)
                self._answer(200, {"_shards": {"total": 1, "successful": 1, "failed": 0}})
            else:
                self._answer(200, {"acknowledged": True, "_shards": {"total": 1, "successful": 1, "failed": 0}})

        def _mget(self, body: dict[str, Any] | None) -> None:
            unknown = sorted(set(body or {}) - MGET_BODY_KEYS)
            if unknown:
                reason = f"unknown key [{unknown[0]}] for a START_ARRAY, expected [docs] or [ids]."
                error = {"type": "parsing_exception", "reason": reason}
                self._answer(400, {"error": {"root_cause": [error], **error}, "status": 400})
                return
            ids = [str(i) for i in (body or {}).get("ids", [])]
            docs = [{"_id": i, "found": False} if i not in cluster.docs
                    else {"_id": i, "found": True, "_source": cluster.docs[i]} for i in ids]  # fmt: skip
            self._answer(200, {"docs": docs})

        do_GET = do_POST = do_PUT = do_DELETE = _handle  # noqa: N815

    return Handler


@pytest.fixture
def cluster() -> Iterator[tuple[FakeCluster, str]]:
    state = FakeCluster()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_mget_keyword_arguments_are_parameters_of_the_client() -> None:
    parameters = inspect.signature(Elasticsearch.mget).parameters
    assert set(E.neighbors_mget([1, 2])) <= set(parameters), "es_layout.neighbors_mget names no client parameter"


def test_the_neighbour_lookup_sends_ids_in_the_body_and_source_in_the_query(
    cluster: tuple[FakeCluster, str],
) -> None:
    state, url = cluster
    state.docs["5"] = {"itemid": 5, "neighbors": [8], "neighbor_weights": [0.5]}
    api = OnlineApi(load_settings({"es_url": url, "profile": "compose"}, environ={}))
    docs = api.mget("items-v1", E.neighbors_mget([5, 8]), timeout_s=2.0)
    assert [d["found"] for d in docs] == [True, False] and docs[0]["_source"]["neighbors"] == [8]
    (request,) = [r for r in state.requests if r.path.endswith("/_mget")]
    assert request.path == "/items-v1/_mget"
    assert set(request.body) <= MGET_BODY_KEYS and request.body == {"ids": ["5", "8"]}
    assert request.query["_source"] == ["itemid,neighbors,neighbor_weights"]


def test_the_previous_mget_body_is_refused_by_the_servers_rule(cluster: tuple[FakeCluster, str]) -> None:
    _, url = cluster
    client = Elasticsearch(url)
    old_body = {"ids": ["5"], "_source": ["itemid", "neighbors", "neighbor_weights"]}
    with pytest.raises(BadRequestError, match=r"unknown key \[_source\]"):
        client.mget(index="items-v1", body=old_body)


def test_the_force_merge_has_its_own_timeout(cluster: tuple[FakeCluster, str]) -> None:
    state, url = cluster
    state.merge_delay_s = 1.5  # a merge slower than every other request's timeout
    client = Elasticsearch(url, request_timeout=0.5, max_retries=0)
    PublishApi(client, forcemerge_timeout_s=5.0).refresh_and_merge("items-v2")  # does not time out
    merges = [r for r in state.requests if r.path.endswith("/_forcemerge")]
    assert len(merges) == 1 and merges[0].query["max_num_segments"] == ["1"]
    assert merges[0].query["wait_for_completion"] == ["true"]
    with pytest.raises(elastic_transport.ConnectionTimeout):  # the control: the shared 0.5 s would abort it
        PublishApi(client, forcemerge_timeout_s=0.5).refresh_and_merge("items-v2")
