"""Pure pieces of the online service: breakers, budgets, snapshots, encoders, stores, the ES adapter."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import numpy as np
import pandas as pd
import pytest

from data_exchange_center import chain
from data_exchange_center import es_layout as E
from data_exchange_center import schema as S
from data_exchange_center.item_index import ItemIndex
from online.backends.base import BackendError, NotLoaded
from online.backends.embedded_profiles import load_user_table
from online.backends.es_index import EsIndex
from online.backends.feature_tables import EncodedTable, RowEncoder, default_row
from online.backends.versions import Refreshing
from online.service.observability import JsonFormatter, request_id_from
from online.service.resilience import CircuitBreaker, Deadline, Guard
from online.service.validation import parse_rec_request
from tests.fixtures_artifacts import TinyArtifacts, write_tiny_artifacts

pytestmark = pytest.mark.unit


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyArtifacts:
    return write_tiny_artifacts(tmp_path_factory.mktemp("tiny"))


# --- circuit breaker and budgets ------------------------------------------------------------------------
def test_the_breaker_opens_after_n_failures_and_lets_one_trial_through_after_reset() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("redis", failures=3, reset_s=5.0, clock=clock)
    for _ in range(2):
        breaker.record_failure()
    assert breaker.allow() and breaker.state == "closed"
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow()
    clock.now += 5.0
    assert breaker.state == "half_open"
    assert breaker.allow() and not breaker.allow()  # one trial at a time
    breaker.record_failure()  # the trial failed: open for another reset_s
    assert not breaker.allow()
    clock.now += 5.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()


def test_a_success_resets_the_consecutive_count() -> None:
    breaker = CircuitBreaker("x", failures=2, reset_s=1.0)
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state == "closed"


def test_the_guard_gives_each_call_the_smaller_budget_and_wraps_failures() -> None:
    errors: list[str] = []
    guard = Guard(CircuitBreaker("scorer", 2, 60.0), budget_s=0.05, on_error=errors.append)
    clock = FakeClock()
    deadline = Deadline(0.03, clock=clock)
    assert guard.call(deadline, lambda t: t) == pytest.approx(0.03)
    with pytest.raises(BackendError, match="scorer: ValueError: boom"):
        guard.call(deadline, lambda t: (_ for _ in ()).throw(ValueError("boom")))
    clock.now += 1.0  # the request's budget is spent: no call at all
    called: list[float] = []
    with pytest.raises(BackendError, match="no time left"):
        guard.call(deadline, called.append)
    assert called == [] and errors == ["scorer"]


def test_roles_on_one_server_do_not_each_wait_for_it_within_a_request() -> None:
    errors: list[str] = []
    profile = Guard(CircuitBreaker("profile", 5, 60.0), 0.05, errors.append, server="redis://r:6379/0")
    features = Guard(CircuitBreaker("features", 5, 60.0), 0.05, errors.append, server="redis://r:6379/0")
    scorer = Guard(CircuitBreaker("scorer", 5, 60.0), 0.05, errors.append, server="triton:8001")
    calls: list[str] = []

    def timing_out(t: float) -> None:
        calls.append("profile")
        raise TimeoutError("read timed out")

    request = Deadline(0.2)
    with pytest.raises(BackendError, match="TimeoutError"):
        profile.call(request, timing_out)
    with pytest.raises(BackendError, match="failed earlier in this request"):
        features.call(request, lambda t: calls.append("features"))
    assert scorer.call(request, lambda t: "scored") == "scored"  # another server
    assert calls == ["profile"] and errors == ["profile"] and features.breaker.state == "closed"
    assert features.call(Deadline(0.2), lambda t: "row") == "row"  # the next request tries the server again
    shared = [f"{g.name}={g.server}" for g in (profile, features)]
    assert shared == ["profile=redis://r:6379/0", "features=redis://r:6379/0"]


def test_the_service_gives_each_guard_the_server_of_its_adapter(tmp_path: Any) -> None:
    from data_exchange_center.settings import load_settings
    from online.backends.feast_embedded import EmbeddedFeatureStore
    from online.service.service import RecService

    servers = {"redis_url": "redis://r:6379/0", "triton_url": "t:8001"}
    compose = load_settings({"profile": "compose", "index_backend": "local", "data_dir": tmp_path,
                             "log_level": "WARNING", **servers}, environ={})  # fmt: skip
    service = RecService(compose)
    try:
        servers = {name: guard.server for name, guard in service.guards.items()}
        assert servers == {"profile": "redis://r:6379/0", "item_index": None, "features": "redis://r:6379/0",
                           "scorer": "t:8001"}  # fmt: skip
        assert service.live.guard.server == "redis://r:6379/0"  # the event log
    finally:
        service.close()
    overridden = RecService(compose, {"features": EmbeddedFeatureStore(compose)})  # in process: no server
    try:
        assert overridden.guards["features"].server is None
    finally:
        overridden.close()


def test_the_guard_lets_not_loaded_through_and_refuses_calls_while_open() -> None:
    guard = Guard(CircuitBreaker("features", 1, 60.0), budget_s=1.0, on_error=lambda _: None)
    with pytest.raises(NotLoaded):
        guard.call(Deadline(1.0), lambda t: (_ for _ in ()).throw(NotLoaded("nothing yet")))
    with pytest.raises(BackendError):
        guard.call(Deadline(1.0), lambda t: 1 / 0)
    with pytest.raises(BackendError, match="circuit breaker open"):
        guard.call(Deadline(1.0), lambda t: 1)


# --- request validation ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "userid", "size"),
    [(b'{"userid": 0}', 0, 50), (b'{"userid": 7, "size": null}', 7, 50), (b'{"userid": 9223372036854775807, "size": 3}',
                                                                           9223372036854775807, 3)],
)  # fmt: skip
def test_valid_bodies(raw: bytes, userid: int, size: int) -> None:
    request = parse_rec_request(raw, 50, 200)
    assert (request.userid, request.size) == (userid, size)


# --- snapshots ------------------------------------------------------------------------------------------
def wait_until(predicate: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_refreshing_loads_in_the_background_swaps_and_keeps_the_old_on_failure() -> None:
    published = {"version": "v1"}
    release = threading.Event()

    def load(version: str) -> dict[str, str]:
        if version == "bad":
            raise ValueError("corrupt")
        if version == "v2":
            release.wait(5)
        return {"version": version}

    refreshing: Refreshing[dict[str, str]] = Refreshing("t", lambda: published["version"], load, check_interval_s=0)
    with pytest.raises(NotLoaded):
        refreshing.get()
    refreshing.maybe_refresh()
    wait_until(lambda: refreshing.loaded)
    assert refreshing.get() == {"version": "v1"}
    published["version"] = "v2"
    refreshing.maybe_refresh()
    assert refreshing.get() == {"version": "v1"}  # still loading: the old snapshot serves, nobody waits
    release.set()
    wait_until(lambda: refreshing.get()["version"] == "v2")
    published["version"] = "bad"
    refreshing.maybe_refresh()
    wait_until(lambda: refreshing.last_error is not None)
    assert refreshing.get() == {"version": "v2"} and "corrupt" in str(refreshing.last_error)


def test_refreshing_checks_at_most_every_interval() -> None:
    probes: list[int] = []

    def probe() -> str:
        probes.append(1)
        return "v"

    refreshing: Refreshing[str] = Refreshing("t", probe, str, check_interval_s=60)
    for _ in range(50):
        refreshing.maybe_refresh()
    assert len(probes) == 1


# --- feature encoding -----------------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["user", "item"])
def test_the_row_encoder_equals_the_spec_on_every_row(tiny: TinyArtifacts, source: str) -> None:
    path = tiny.paths.user_features_path if source == "user" else tiny.paths.item_features_path
    table = pd.read_parquet(path)
    want_sparse, want_dense = tiny.spec.encode(table, source)  # type: ignore[arg-type]
    encoder = RowEncoder(tiny.spec, source)  # type: ignore[arg-type]
    for i, row in enumerate(table.to_dict(orient="records")):
        sparse, dense = encoder.encode(row)
        np.testing.assert_array_equal(sparse[0], want_sparse[i])
        np.testing.assert_array_equal(dense[0], want_dense[i])
    empty_sparse, empty_dense = encoder.encode({})
    default_sparse, default_dense = default_row(tiny.spec, source)  # type: ignore[arg-type]
    np.testing.assert_array_equal(empty_sparse, default_sparse)
    np.testing.assert_array_equal(empty_dense, default_dense)


def test_encoded_tables_look_up_by_id_with_defaults_for_unknown_ids(tiny: TinyArtifacts) -> None:
    items = pd.read_parquet(tiny.paths.item_features_path)
    table = EncodedTable.from_frame(tiny.spec, "item", items.iloc[::-1], S.ITEM_ID)
    want_sparse, want_dense = tiny.spec.encode_items(items)
    ids = np.array([items[S.ITEM_ID][3], 999_999, items[S.ITEM_ID][0]])
    sparse, dense = table.rows(ids)
    np.testing.assert_array_equal(sparse[[0, 2]], want_sparse[[3, 0]])
    np.testing.assert_array_equal(dense[[0, 2]], want_dense[[3, 0]])
    np.testing.assert_array_equal(sparse[1], table.default[0][0])
    assert table.row(999_999) is None and table.sparse[0, -1] == 1  # unchanged by the look-up


# --- the embedded profile store -------------------------------------------------------------------------
def test_the_user_table_equals_the_reference_reader(tiny: TinyArtifacts) -> None:
    from offline_to_online.recall import s1_user_to_redis
    from offline_to_online.recall.embedded_users import load_version

    data_dir = tiny.paths.data_dir
    assert s1_user_to_redis.main(["--data-dir", str(data_dir), "--profile", "embedded", "--quiet"]) == 0
    store_dir = data_dir / "online" / "users"
    version = (store_dir / "CURRENT").read_text().strip()
    table = load_user_table(store_dir / version, version)
    for userid, record in load_version(store_dir / version).items():
        state = table.lookup(userid)
        assert state is not None and state.terms == record.terms
        np.testing.assert_array_equal(state.seen, record.seen)
        np.testing.assert_array_equal(state.seen_labels, record.seen_labels)
        assert (state.vector is None) == (record.vector is None)
        if record.vector is not None:
            np.testing.assert_array_equal(state.vector, record.vector)
    assert table.lookup(-1) is None and table.lookup(10**12) is None


# --- the Elasticsearch adapter, on this project's EsApi interface ----------------------------------------
class IndexBackedEsApi:
    """An ``EsApi`` that answers the es_layout bodies from an in-process ``ItemIndex`` and records them."""

    def __init__(self, index: ItemIndex) -> None:
        self.index = index
        self.bodies: list[dict[str, Any]] = []

    def search(self, index: str, body: dict[str, Any], timeout_s: float) -> list[dict[str, Any]]:
        self.bodies.append(body)
        excluded = np.array([int(i) for c in self._must_not(body) for i in c["ids"]["values"]], np.int64)
        if "knn" in body:
            query = np.array(body["knn"]["query_vector"], np.float32)
            items, scores = self.index.search_vector(query, body["knn"]["k"], excluded)
            return [{"_source": {"itemid": int(i)}, "_score": float(ip + 1 if ip >= 0 else 1 / (1 - ip))}
                    for i, ip in zip(items, scores, strict=True)]  # fmt: skip
        should = body["query"]["bool"].get("should")
        if should:
            terms = [c["constant_score"]["filter"]["term"]["terms"] for c in should]
            items, scores = self.index.search_terms(terms, body["size"], excluded)
        else:
            items, scores = self.index.search_popular(body["size"], excluded)
        return [{"_source": {"itemid": int(i), "popularity": float(s)}} for i, s in zip(items, scores, strict=True)]

    @staticmethod
    def _must_not(body: dict[str, Any]) -> list[dict[str, Any]]:
        if "knn" in body:
            return list(body["knn"].get("filter", {}).get("bool", {}).get("must_not", []))
        return list(body["query"]["bool"]["must_not"])

    def mget(self, index: str, body: dict[str, Any], timeout_s: float) -> list[dict[str, Any]]:
        self.bodies.append(body)
        ids = np.array([int(i) for i in body["ids"]], np.int64)
        nbr, weights = self.index.neighbors_of(ids)
        return [{"found": bool((n >= 0).any()), "_source": {"neighbors": n[n >= 0].tolist(),
                 "neighbor_weights": w[n >= 0].tolist()}} for n, w in zip(nbr, weights, strict=True)]  # fmt: skip

    def alias_target(self, alias: str, timeout_s: float) -> str | None:
        return f"{alias}-v1"

    def index_meta(self, index: str, timeout_s: float) -> dict[str, Any]:
        return E.index_meta("v1", {"max_triggers": 7, "like_weight": 0.5, "prior_weight": 0.02})


def test_the_es_adapter_sends_the_layout_bodies_and_gives_the_in_process_answers(tiny: TinyArtifacts) -> None:
    local = ItemIndex.load(tiny.paths)
    api = IndexBackedEsApi(local)
    es = EsIndex(api, "recsys_items-v1", 0.05)
    exclude = tiny.itemids[:3]
    assert [r.tolist() for r in es.search_popular(5, exclude)] == [r.tolist() for r in local.search_popular(5, exclude)]
    assert api.bodies[-1] == E.popularity_query(5, exclude.tolist())
    terms = ["Drama", "Comedy"]
    got, want = es.search_terms(terms, 7, exclude), local.search_terms(terms, 7, exclude)
    assert got[0].tolist() == want[0].tolist() and api.bodies[-1] == E.term_recall_query(terms, 7, exclude.tolist())
    query = np.load(tiny.paths.user_vectors_path)["vectors"][0]
    got, want = es.search_vector(query, 6, exclude), local.search_vector(query, 6, exclude)
    assert got[0].tolist() == want[0].tolist()
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-5)
    assert api.bodies[-1] == E.knn_query(query.tolist(), 6, exclude_ids=exclude.tolist())
    triggers = np.array([tiny.itemids[4], 123_456, tiny.itemids[9]])
    user = chain.UserState([], None, triggers, np.array([1, 0, 1], np.int8))
    es_i2i = chain.i2i_scores(*es.neighbors_of(triggers), chain.trigger_weights(user.seen_labels))
    local_i2i = chain.i2i_scores(*local.neighbors_of(triggers), chain.trigger_weights(user.seen_labels))
    np.testing.assert_array_equal(es_i2i[0], local_i2i[0])
    np.testing.assert_allclose(es_i2i[1], local_i2i[1], rtol=1e-6)
    assert api.bodies[-1] == E.neighbors_mget(triggers.tolist())


# --- logs -----------------------------------------------------------------------------------------------
def test_json_log_lines_carry_the_extra_fields() -> None:
    record = logging.LogRecord("recsys.online.http", logging.INFO, __file__, 1, "request", None, None)
    record.request_id, record.status = "abc", 200
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "request" and entry["request_id"] == "abc" and entry["status"] == 200
    assert entry["level"] == "INFO" and entry["ts"].endswith("Z")


@pytest.mark.parametrize(("header", "kept"), [("abc-1.2:3_x", True), ("", False), ("a b", False), ("x" * 129, False)])
def test_request_ids(header: str, kept: bool) -> None:
    assert (request_id_from(header) == header) is kept


# --- overload: rate limits, shedding ----------------------------------------------------------------
def test_the_rate_limiter_allows_a_burst_then_refills_at_its_rate() -> None:
    from online.service.rate_limit import RateLimiter

    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=2.0, burst=3, clock=clock)
    assert [limiter.retry_after("a") for _ in range(4)] == [0, 0, 0, 1]
    assert limiter.retry_after("b") == 0  # buckets are per client
    clock.now += 0.5  # one token back
    assert limiter.retry_after("a") == 0 and limiter.retry_after("a") == 1
    slow = RateLimiter(rate_per_s=0.1, burst=1, clock=clock)
    assert slow.retry_after("c") == 0 and slow.retry_after("c") == 10  # whole seconds until a token


@pytest.mark.parametrize(
    ("data", "whole"),
    [
        (b'POST /ml/rec HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n{"userid":1', False),
        (b'POST /ml/rec HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n{"userid":1}', True),
        (b'POST /ml/rec HTTP/1.1\r\ncontent-length: 12\r\n\r\n{"userid":1}GET / HTTP/1.1\r\n\r\n', False),
        (b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (b"GET /ready HTTP/1.1\r\nHost: x\r\n", False),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", False),
    ],
)
def test_a_shed_request_keeps_its_connection_only_when_it_was_read_whole(data: bytes, whole: bool) -> None:
    from online.main.shedding_worker import is_one_whole_request

    assert is_one_whole_request(data) is whole


def test_the_shed_response_is_a_json_503_with_retry_after() -> None:
    from online.main.shedding_worker import shed_response

    raw = shed_response(keep_alive=False)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in head and b"Connection: close" in head
    assert int(head.split(b"Content-Length: ")[1]) == len(body)
    assert json.loads(body)["error"]["code"] == "overloaded"
    assert b"Connection" not in shed_response(keep_alive=True).partition(b"\r\n\r\n")[0]


def test_the_breaker_reports_opening_and_closing() -> None:
    clock, states = FakeClock(), []
    breaker = CircuitBreaker("redis", failures=2, reset_s=1.0, clock=clock, on_change=states.append)
    breaker.record_failure()
    breaker.record_success()
    assert states == []  # never opened
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_failure()  # still open: no second report
    clock.now += 1.0
    assert breaker.allow()
    breaker.record_success()
    assert states == [True, False]


def test_without_a_model_score_a_ranker_final_policy_falls_back_to_the_recall_evidence() -> None:
    from online.service.recommender import Recommender, _Request

    published = chain.RankingPolicy(ranker_final=1, prior_weight=0.01)
    scored = _Request(1, 10, Deadline(0.2), versions={"model": "ml_rec/3"})
    assert Recommender.policy_of(scored, published) == published
    unscored = _Request(1, 10, Deadline(0.2), versions={"model": None})  # no scorer answered: like = 1
    fallback = Recommender.policy_of(unscored, published)
    assert fallback.ranker_final == 0 and fallback.like_weight == 0.0 and fallback.prior_weight == 0.01
    blend = chain.RankingPolicy()
    assert Recommender.policy_of(unscored, blend) == blend


def test_the_feast_redis_decoder_returns_what_feasts_own_conversion_returns() -> None:
    from feast.protos.feast.types.Value_pb2 import DoubleList, Int64List, Null, StringList, Value
    from feast.type_map import feast_value_type_to_python_type

    from online.backends.feast_redis import FeastRedisView

    values = [Value(double_val=2.5), Value(double_val=float("nan")), Value(float_val=0.1), Value(int64_val=7),
              Value(int32_val=-3), Value(string_val="M"), Value(bool_val=True), Value(bytes_val=b"x"), Value(),
              Value(null_val=Null.NULL), Value(unix_timestamp_val=1_700_000_000),
              Value(double_list_val=DoubleList(val=[1.0, 2.0])), Value(int64_list_val=Int64List(val=[3])),
              Value(string_list_val=StringList(val=["a", "b"]))]  # fmt: skip
    names = [f"f{i}" for i in range(len(values) + 1)]
    view = FeastRedisView("userid", names, [b""] * len(names), lambda entity: b"")
    got = view.decode([v.SerializeToString() for v in values] + [None])  # the last field is absent
    want = {name: feast_value_type_to_python_type(v) for name, v in zip(names, values, strict=False)}
    assert list(got) == list(want)
    for name, value in want.items():
        assert type(got[name]) is type(value), name
        assert got[name] == value or (value != value and got[name] != got[name]), name  # NaN is NaN


def test_a_worker_defers_to_a_less_loaded_sibling_but_never_beyond_max_defer() -> None:
    import os

    from online.main.accept_balance import MAX_DEFER_S, PAUSE_S, SLACK, AcceptBalancer, ConnectionTable

    table = ConnectionTable(slots=4)
    sibling = table.claim(os.getppid())  # a live process other than this one
    assert sibling is not None
    table.publish(sibling, 3)
    me = AcceptBalancer(table, os.getpid())
    assert not me.should_defer(3 + SLACK, now=100.0)  # within the slack: accept
    assert me.should_defer(4 + SLACK, now=100.0) and me.paused(100.0) and not me.paused(100.0 + PAUSE_S)
    assert me.should_defer(4 + SLACK, now=100.0 + MAX_DEFER_S / 2)  # the same connection still waits
    assert not me.should_defer(4 + SLACK, now=100.0 + MAX_DEFER_S)  # the sibling did not take it: take it
    table.publish(sibling, 4)  # the sibling took one: the next waiting connection gets its own wait
    assert me.should_defer(6 + SLACK, now=100.0 + MAX_DEFER_S + 0.001)
    table.release(sibling, os.getppid())
    assert not me.should_defer(100, now=200.0)  # no sibling: accept
    me.close()
    assert table.claim(os.getpid()) == 0  # released slots are reused


def test_a_dead_workers_slot_is_taken_over_and_not_waited_for() -> None:
    import os
    import subprocess

    from online.main.accept_balance import AcceptBalancer, ConnectionTable

    dead = subprocess.Popen(["true"])
    dead.wait()
    table = ConnectionTable(slots=2)
    me = AcceptBalancer(table, os.getpid())
    assert me.slot == 0 and table.claim(dead.pid) == 1
    table.publish(1, 0)
    assert not me.should_defer(50, now=10.0)  # a dead sibling holds nothing: nothing to wait for
    assert table.claim(os.getppid()) == 1  # its slot is taken over
