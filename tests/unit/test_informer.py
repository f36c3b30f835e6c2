"""The informers that watch the jobs and the operator's children (codex_operator/informer.py), against a
scripted API server: what the operator is told when a watch ends, when its version is too old, when the server
refuses, and which namespaces it hears of."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from aiohttp import web
from fake_api import answering
from kopf._cogs.structs.references import match_namespace

from codex_operator import informer, names
from codex_operator.kube import Kube

JOBS = informer.CHILDREN[0]
_real_sleep = asyncio.sleep
PATH = "/apis/batch/v1/namespaces/team-a/jobs"


def job(name: str, uid: str, version: int, ns: str = "team-a") -> dict[str, Any]:
    meta = {"name": name, "namespace": ns, "uid": uid, "resourceVersion": str(version)}
    return {"metadata": meta | {"labels": {names.LABEL_JOB: name.rsplit("-", 1)[0]}}, "status": {}}


def line(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


class Script:
    """Answers each request with the next scripted answer of its kind (list or watch), recording each."""

    def __init__(self, lists: list[Any], watches: list[Any]):
        self.lists, self.watches = lists, watches
        self.asked: list[tuple[str, dict[str, str], str]] = []  # (list|watch, query, Accept)
        self.done = asyncio.Event()

    async def answer(self, request: web.Request) -> web.StreamResponse:
        watch = request.query.get("watch") == "true"
        self.asked.append(("watch" if watch else "list", dict(request.query), request.headers.get("Accept", "")))
        answers = self.watches if watch else self.lists
        if not answers:  # the script is over: hold the request until the informer is stopped
            self.done.set()
            while request.transport is not None and not request.transport.is_closing():
                await _real_sleep(0.05)
            return web.Response()
        said = answers.pop(0)
        if isinstance(said, int):  # an HTTP status
            return web.json_response({"kind": "Status", "code": said, "message": f"said {said}"}, status=said)
        if not watch:
            return web.json_response(said)
        resp = web.StreamResponse()
        await resp.prepare(request)
        for chunk in said:  # split lines across writes, as TCP may
            await resp.write(chunk)
        await resp.write_eof()
        return resp


def run(script: Script, source: informer.Source = JOBS, path: str = PATH, patterns: tuple[str, ...] = ()) -> list:
    got: list[tuple[str, str]] = []

    async def main(kube: Kube) -> None:
        inf = informer.Informer(kube.api, source, path, lambda t, o: got.append((t, o["metadata"]["name"])), patterns)
        task = asyncio.create_task(inf.run())
        await asyncio.wait_for(script.done.wait(), 20)
        task.cancel()
        assert all(o["kind"] == source.kind for o in inf.known.values())

    asyncio.run(answering(script.answer, main))
    return got


def test_an_informer_lists_page_by_page_then_watches_on_from_the_newest_version_it_saw():
    a, b, c = job("x-a1", "u1", 5), job("y-a1", "u2", 6), job("z-a1", "u3", 9)
    watch = line("MODIFIED", job("x-a1", "u1", 11)) + line("BOOKMARK", {"metadata": {"resourceVersion": "15"}})
    script = Script(
        [
            {"items": [a], "metadata": {"continue": "page2", "resourceVersion": "10"}},
            {"items": [b], "metadata": {"resourceVersion": "10"}},
        ],
        [[watch[:7], watch[7:40], watch[40:]], [line("ADDED", c), line("DELETED", job("y-a1", "u2", 16))]],
    )
    got = run(script)
    assert got == [("ADDED", "x-a1"), ("ADDED", "y-a1"), ("MODIFIED", "x-a1"), ("ADDED", "z-a1"), ("DELETED", "y-a1")]
    lists = [q for k, q, _ in script.asked if k == "list"]
    assert [q.get("continue") for q in lists] == [None, "page2"]
    assert all(q["labelSelector"] == names.LABEL_JOB for _, q, _ in script.asked)
    versions = [q["resourceVersion"] for k, q, _ in script.asked if k == "watch"]
    assert versions == ["10", "15", "16"]  # from the LIST; after the server ended a watch, from its bookmark
    assert all(q["allowWatchBookmarks"] == "true" for k, q, _ in script.asked if k == "watch")


def test_a_version_too_old_lists_again_and_says_deleted_for_what_went_unseen():
    a, b = job("x-a1", "u1", 5), job("y-a1", "u2", 6)
    gone = {"kind": "Status", "code": 410, "message": "too old resource version: 10 (400)"}
    script = Script(
        [
            {"items": [a, b], "metadata": {"resourceVersion": "10"}},
            {"items": [job("y-a1", "u2", 30)], "metadata": {"resourceVersion": "40"}},  # x-a1 went meanwhile
            {"items": [job("y-a1", "u2", 30)], "metadata": {"resourceVersion": "50"}},
        ],
        [[line("ERROR", gone)], 410],  # 410 as an ERROR event, then as the watch's own status
    )
    got = run(script)
    assert got == [
        ("ADDED", "x-a1"),
        ("ADDED", "y-a1"),
        ("MODIFIED", "y-a1"),
        ("DELETED", "x-a1"),
        ("MODIFIED", "y-a1"),
    ]
    assert [k for k, _, _ in script.asked] == ["list", "watch", "list", "watch", "list", "watch"]


def test_a_pod_deleted_while_no_watch_was_open_leaves_the_timers_pods_and_rank_0_comes_from_the_watch():
    from codex_operator import watched

    def pod(name: str, uid: str, version: int) -> dict[str, Any]:
        attempt, index = name.rsplit("-", 2)[0], name.rsplit("-", 2)[1]
        labels = {names.LABEL_JOB: attempt.rsplit("-", 1)[0], watched.POD_JOB: attempt, watched.POD_INDEX: index}
        meta = {"name": name, "namespace": "team-a", "uid": uid, "resourceVersion": str(version), "labels": labels}
        return {"metadata": meta, "spec": {"containers": [{"name": "trainer"}]}, "status": {"phase": "Running"}}

    script = Script(
        [
            {"items": [pod("x-a1-0-p", "u1", 5), pod("x-a1-1-p", "u2", 6)], "metadata": {"resourceVersion": "10"}},
            {"items": [pod("x-a1-1-p", "u2", 6)], "metadata": {"resourceVersion": "40"}},  # rank 0 went meanwhile
        ],
        [410],
    )
    pods = watched.Pods()
    source = next(s for s in informer.CHILDREN if s.kind == "Pod")

    async def main(kube: Kube) -> None:
        inf = informer.Informer(kube.api, source, "/api/v1/namespaces/team-a/pods", pods.feed)
        task = asyncio.create_task(inf.run())
        await asyncio.wait_for(inf.listed.wait(), 20)
        assert sorted(p["metadata"]["name"] for p in pods.get(("team-a", "x-a1"), {}).values()) == [
            "x-a1-0-p",
            "x-a1-1-p",
        ]
        assert all("spec" not in p for p in pods[("team-a", "x-a1")].values())  # a few fields each, not the pod
        await asyncio.wait_for(script.done.wait(), 20)
        task.cancel()

    asyncio.run(answering(script.answer, main))
    assert sorted(p["metadata"]["name"] for p in pods.get(("team-a", "x-a1"), {}).values()) == ["x-a1-1-p"]


def test_an_event_the_operator_cannot_take_is_logged_and_the_watch_goes_on(caplog):
    """Before, kopf isolated a failing handler; an exception out of `deliver` would end the informer's task, and
    with it every later event of every job, with /healthz still OK."""
    a, b = job("x-a1", "u1", 5), job("y-a1", "u2", 6)
    script = Script([{"items": [a], "metadata": {"resourceVersion": "10"}}], [[line("ADDED", b)]])
    got: list[str] = []

    def deliver(kind: str, obj: dict[str, Any]) -> None:
        if obj["metadata"]["name"] == "x-a1":
            raise KeyError("status")
        got.append(obj["metadata"]["name"])

    async def main(kube: Kube) -> None:
        task = asyncio.create_task(informer.Informer(kube.api, JOBS, PATH, deliver).run())
        await asyncio.wait_for(script.done.wait(), 20)
        task.cancel()

    with caplog.at_level(logging.ERROR, "codex_operator"):
        asyncio.run(answering(script.answer, main))
    assert got == ["y-a1"]
    (said,) = [r.getMessage() for r in caplog.records]
    assert said == "Job team-a/x-a1: its ADDED event could not be taken"


def test_a_refusal_is_logged_with_the_servers_words_and_tried_again(caplog, monkeypatch):
    monkeypatch.setattr(informer.random, "uniform", lambda a, b: 0.0)
    monkeypatch.setattr(informer.asyncio, "sleep", _fast_sleep)
    script = Script([403, {"items": [], "metadata": {"resourceVersion": "3"}}], [500, []])
    with caplog.at_level(logging.WARNING, "codex_operator"):
        assert run(script) == []
    said = [r.getMessage() for r in caplog.records]
    assert said[0] == f"watching {PATH} failed (HTTP 403: said 403); trying again in 1 s"
    assert said[1] == f"watching {PATH} failed (HTTP 500: said 500); trying again in 1 s"
    assert [k for k, _, _ in script.asked] == ["list", "list", "watch", "watch", "watch"]


async def _fast_sleep(delay: float, *args: Any) -> Any:
    return await _real_sleep(min(delay, 0.01), *args)


def test_job_files_and_services_are_watched_as_metadata_only():
    cm = {"metadata": {"name": "x-a1-config", "namespace": "team-a", "uid": "c1", "labels": {names.LABEL_JOB: "x"}}}
    script = Script([{"items": [cm], "metadata": {"resourceVersion": "1"}}], [[line("DELETED", cm)]])
    got = run(script, informer.CHILDREN[1], "/api/v1/namespaces/team-a/configmaps")
    assert got == [("ADDED", "x-a1-config"), ("DELETED", "x-a1-config")]
    accepts = [accept for _, _, accept in script.asked]  # a LIST, then watches
    assert accepts[0] == informer.METADATA_LIST and set(accepts[1:]) == {informer.METADATA_ONLY}


def test_with_namespace_patterns_the_clusters_children_are_watched_and_only_matching_ones_delivered():
    assert informer.collections(JOBS, ["team-a", "team-b"]) == [
        "/apis/batch/v1/namespaces/team-a/jobs",
        "/apis/batch/v1/namespaces/team-b/jobs",
    ]
    assert informer.collections(JOBS, []) == informer.collections(JOBS, ["team-*"]) == ["/apis/batch/v1/jobs"]
    items = [job("x-a1", "u1", 1, "team-a"), job("y-a1", "u2", 2, "other"), job("z-a1", "u3", 3, "team-pr-1")]
    script = Script([{"items": items, "metadata": {"resourceVersion": "3"}}], [[]])
    got = run(script, path="/apis/batch/v1/jobs", patterns=("team-*, !*-pr-*",))
    assert got == [("ADDED", "x-a1")]


def test_the_jobs_are_watched_whole_with_no_label_and_delivered_as_the_reconcile_reads_them(caplog, monkeypatch):
    """The jobs' informer (kopf's watch before): every CodexTrainingJob, matched to the namespace patterns here;
    a LIST's items name no kind or apiVersion, which the reconcile reads, so they are filled in."""
    monkeypatch.setattr(informer.random, "uniform", lambda a, b: 0.0)
    monkeypatch.setattr(informer.asyncio, "sleep", _fast_sleep)
    path = f"/apis/{names.GROUP}/{names.VERSION}/{names.PLURAL}"
    assert informer.collections(informer.JOBS, ["team-*"]) == [path]
    assert informer.collections(informer.JOBS, ["team-a"]) == [
        f"/apis/{names.GROUP}/{names.VERSION}/namespaces/team-a/{names.PLURAL}"
    ]

    def ctj(name: str, ns: str, version: int) -> dict[str, Any]:
        return {"metadata": {"name": name, "namespace": ns, "uid": f"u-{name}", "resourceVersion": str(version)},
                "spec": {"model": {"name": "m"}}}  # fmt: skip

    added = ctj("later", "team-b", 4) | {"kind": names.KIND, "apiVersion": f"{names.GROUP}/{names.VERSION}"}
    listed = {"items": [ctj("first", "team-a", 1), ctj("elsewhere", "other", 2)], "metadata": {"resourceVersion": "3"}}
    script = Script(
        [404, listed],
        [[line("ADDED", added), line("DELETED", ctj("first", "team-a", 5))]],
    )
    got: list[dict[str, Any]] = []

    async def main(kube: Kube) -> None:
        inf = informer.Informer(kube.api, informer.JOBS, path, lambda t, o: got.append({"type": t, **o}), ["team-*"])
        task = asyncio.create_task(inf.run())
        await asyncio.wait_for(script.done.wait(), 20)
        task.cancel()

    with caplog.at_level(logging.WARNING, "codex_operator"):
        asyncio.run(answering(script.answer, main))
    assert [(g["type"], g["metadata"]["name"]) for g in got] == [
        ("ADDED", "first"), ("ADDED", "later"), ("DELETED", "first")]  # fmt: skip
    assert {(g["kind"], g["apiVersion"]) for g in got} == {(names.KIND, f"{names.GROUP}/{names.VERSION}")}
    assert got[0]["spec"] == {"model": {"name": "m"}}  # the whole job, not a skeleton
    assert all("labelSelector" not in q for _, q, _ in script.asked)
    (said,) = [r.getMessage() for r in caplog.records]
    assert said == (
        f"watching {path} failed (HTTP 404: said 404; is the CodexTrainingJob CRD installed? kubectl apply -f"
        f" crds/{names.CRD_NAME}.yaml); trying again in 1 s"
    )


@pytest.mark.parametrize(
    "pattern", ["team-*", "!kube-*", "team-*, !*-pr-*", "!*-pr-*, *pr-123", "team-a", "a?c", "x,y", "*"]
)
def test_namespace_patterns_mean_what_they_mean_to_kopf(pattern):
    for ns in ["team-a", "team-pr-123", "team-pr-4", "kube-system", "abc", "x", "y", "other-pr-123"]:
        assert informer.namespace_matches(ns, [pattern]) == match_namespace(ns, pattern), (ns, pattern)
