"""Rollback of published components on the in-process stores, the Triton repositories and Elasticsearch's alias.

What these tests prove: each component goes back to the version before the live one, or to a named
one, and forward again; a target that is missing or damaged is refused before any pointer moves; a
model rollback pins the version in both repositories (what Triton and the in-process scorer serve)
and the next publish unpins it and keeps the pinned version as its previous one; an interrupted
rollback (journal left, pointers half switched) is finished by the next run; Elasticsearch's alias and
the in-process fallback move together. Real servers and SIGKILL are in ``tests/integration/test_rollback.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from data_exchange_center import online_layout as L
from data_exchange_center.artifacts import ArtifactError, write_json
from data_exchange_center.settings import Settings, load_settings
from offline_to_online import s4_rollback
from offline_to_online.rank.stages import model_to_triton
from offline_to_online.recall.embedded_items import publish_items_embedded, stage_item_version
from offline_to_online.recall.es_items import publish_items_to_es
from offline_to_online.recall.item_source import chain_parameters
from offline_to_online.recall.stages import user_to_redis
from offline_to_online.rollback import (
    RollbackError,
    check_item_folder,
    es_pointer,
    file_store_pointer,
    journal_path,
    rollback,
    switch_all,
    triton_pointer,
)
from tests.fixtures_artifacts import write_tiny_artifacts
from tests.unit.test_es_items import FakeEsApi

pytestmark = pytest.mark.unit


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    write_tiny_artifacts(tmp_path)
    return load_settings({"data_dir": tmp_path, "profile": "embedded"}, environ={})


def test_users_go_back_and_forth_between_published_versions(settings: Settings) -> None:
    first, second = (user_to_redis(settings, progress=False).version for _ in range(2))
    store = L.users_store_dir(settings.paths)
    report = rollback(settings, "users")
    assert report.target == first and report.before == {"embedded users": second}
    assert L.read_current_version(store) == first
    with pytest.raises(RollbackError, match=f"no version before {first}"):
        rollback(settings, "users")
    assert rollback(settings, "users", to=second).target == second and L.read_current_version(store) == second
    assert L.list_versions(store) == [first, second]  # a rollback deletes nothing
    assert not journal_path(settings, "users").exists()


def test_a_damaged_item_version_is_refused_before_anything_switches(settings: Settings) -> None:
    chain = chain_parameters(settings.paths)
    first, second = (publish_items_embedded(settings.paths, chain).version for _ in range(2))
    store = L.items_store_dir(settings.paths)
    (store / first / L.POPULARITY_FILE).write_bytes(b"damaged")
    with pytest.raises(ArtifactError, match="popularity.parquet does not match"):
        rollback(settings, "items")
    assert L.read_current_version(store) == second
    with pytest.raises(RollbackError, match="has no complete version 'nope'"):
        rollback(settings, "items", to="nope")


def test_the_command_exits_2_with_one_line_when_there_is_nothing_to_go_back_to(
    settings: Settings, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    user_to_redis(settings, progress=False)
    args = ["--component", "users", "--data-dir", str(settings.data_dir), "--profile", "embedded"]
    with caplog.at_level(logging.ERROR):
        assert s4_rollback.main(args) == 2
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR][0].startswith("s4_rollback_users")
    assert s4_rollback.main([*args, "--list"]) == 0
    assert '"versions"' in capsys.readouterr().out


def test_a_model_rollback_pins_both_repositories_until_the_next_publish(settings: Settings) -> None:
    repos = [settings.paths.model_repository_dir, L.python_model_repository_dir(settings.paths)]
    assert [model_to_triton(settings).version for _ in range(2)] == [1, 2]
    report = rollback(settings, "model")
    assert report.target == "1" and report.switched == ["triton model_repository", "triton model_repository_python"]
    for repo in repos:
        assert L.served_model_version(repo) == 1 and L.model_versions(repo) == [1, 2]
        assert "specific: { versions: [ 1 ] }" in (repo / "ml_rec" / "config.pbtxt").read_text()
    assert L.latest_model_path(repos[0]) == repos[0] / "ml_rec" / "1" / "model.onnx"  # the in-process scorer's
    rollback(settings, "model", to="2")  # forward again: the highest version unpins
    assert all("latest: { num_versions: 1 }" in (r / "ml_rec" / "config.pbtxt").read_text() for r in repos)
    rollback(settings, "model")
    assert model_to_triton(settings).version == 3  # a publish unpins and keeps the version served before it
    for repo in repos:
        assert L.served_model_version(repo) == 3 and L.model_versions(repo) == [1, 3]


def test_an_interrupted_rollback_is_finished_by_the_next_run(settings: Settings) -> None:
    for _ in range(3):
        model_to_triton(settings)  # versions 2 and 3 stay
    repos = [settings.paths.model_repository_dir, L.python_model_repository_dir(settings.paths)]
    # what a rollback to 2 killed after its first switch leaves: the journal, one repository switched
    write_json({"component": "model", "target": "2", "from": "3"}, journal_path(settings, "model"))
    triton_pointer(repos[0]).switch("2")
    assert [L.served_model_version(r) for r in repos] == [2, 3]
    report = rollback(settings, "model")
    assert report.resumed and report.target == "2" and report.switched == ["triton model_repository_python"]
    assert [L.served_model_version(r) for r in repos] == [2, 2] and not journal_path(settings, "model").exists()
    assert rollback(settings, "model", to="3").target == "3"  # then any further rollback works as usual


def test_the_elasticsearch_alias_and_the_fallback_move_together(settings: Settings) -> None:
    api, alias = FakeEsApi(), "items"
    chain = chain_parameters(settings.paths)
    versions = []
    for _ in range(2):  # what s2_item_to_es --profile compose does: stage, index, switch alias, activate
        version = L.new_version()
        _, source = stage_item_version(settings.paths, chain, version)
        publish_items_to_es(api, source, alias, version=version, chain=chain, progress=False)
        L.write_current_version(L.items_store_dir(settings.paths), version)
        versions.append(version)
    pointers = [
        es_pointer(api, alias),
        file_store_pointer("embedded items", L.items_store_dir(settings.paths), check_item_folder),
    ]
    assert [p.current() for p in pointers] == [versions[1], versions[1]]
    switched = switch_all("items", pointers, versions[0], journal_path(settings, "items"))
    assert switched == ["elasticsearch alias", "embedded items"]
    assert api.aliases[alias] == {f"{alias}-{versions[0]}".lower()} and pointers[1].current() == versions[0]
    api.delete_index(f"{alias}-{versions[1]}".lower())
    with pytest.raises(ArtifactError, match="no Elasticsearch index"):  # checked before the fallback moves
        switch_all("items", pointers, versions[1], journal_path(settings, "items"))
    assert pointers[1].current() == versions[0]
