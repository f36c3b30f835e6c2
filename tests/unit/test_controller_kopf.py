"""What kopf hands the controller (the jobs' events, the informers' children's) and how the command line
runs kopf with it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from controller_harness import KEY, NAME, NS, Cluster, manifest, scenario

from codex_operator import names
from codex_operator.kube import Kube

# ---------------------------------------------------------------- kopf's side: what it hands the controller


def test_kopf_hands_the_jobs_events_and_the_informers_the_childrens_to_the_controller(monkeypatch):
    import kopf

    from codex_operator import handlers, registration

    async def until(check: Callable[[], Any], what: str) -> None:
        for _ in range(200):
            if check():
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"never: {what}")

    async def test(c: Cluster) -> None:
        registry = kopf.OperatorRegistry()
        registration.register(c.op, registry, [NS])
        kube = c.op.kube

        async def connect() -> Kube:
            assert kube is not None
            return kube

        monkeypatch.setattr(handlers.Kube, "connect", staticmethod(connect))
        startup, cleanup, _login = (h.fn for h in registry._activities.get_all_handlers())
        settings = kopf.OperatorSettings()
        earlier = c.api.put(names.PLURAL, manifest(name="earlier"))  # a job and its attempt from before a restart
        owner = [{"uid": earlier["metadata"]["uid"]}]
        labels = {names.LABEL_JOB: "earlier"}
        c.api.put("jobs", {"metadata": {"name": "earlier-a1", "labels": labels, "ownerReferences": owner}, "spec": {}})
        pod_lists = c.api_calls("list", "Pod")
        await startup(settings=settings)
        assert settings.scanning.disabled  # exact namespaces: kopf lists none (a namespaced install may not)
        # no change handler (on.create, on.update, on.field): kopf keeps no diff-base, so copies no object
        assert not list(registry._changing.get_all_handlers())
        assert isinstance(settings.persistence.diffbase_storage, registration.NoDiffBase)
        # kopf watches the jobs only; the children are the informers', only those labelled with a job's name
        watchers = {h.id: h.fn for h in registry._watching.get_all_handlers()}
        assert [i.rsplit(".", 1)[-1] for i in watchers] == ["job_event"]
        assert not list(registry._indexing.get_all_handlers())
        await until(lambda: len(c.api.watches) == 4, "a watch of each kind of child, and of their pods")
        assert {w["labelSelector"] for w in c.api.watches} == {names.LABEL_JOB}
        assert [s.attempt.name for s in c.op.index.values_of((NS, "earlier"))] == ["earlier-a1"]  # listed first
        pod_labels = labels | {
            "batch.kubernetes.io/job-name": "earlier-a1",
            "batch.kubernetes.io/job-completion-index": "0",
        }
        a1 = [{"uid": c.api.get("jobs", NS, "earlier-a1")["metadata"]["uid"]}]
        c.api.put("pods", {"metadata": {"name": "earlier-a1-0-x", "labels": pod_labels, "managedFields": [{}] * 50,
                                        "ownerReferences": a1},
                           "spec": {"containers": [{"name": "trainer", "image": "x" * 1000}]},
                           "status": {"phase": "Running", "podIP": "10.0.0.7"}})  # fmt: skip
        await until(lambda: c.op.pods.get((NS, "earlier-a1")), "rank 0 from the pods' watch, with no LIST")
        assert c.op._rank0(earlier) == (
            c.api.get("pods", NS, "earlier-a1-0-x")["metadata"]["uid"],
            "earlier-a1-0-x",
            "10.0.0.7",
        )
        assert (
            "spec" not in c.op.pods.of(NS, "earlier-a1", a1[0]["uid"])[0]
            and c.api_calls("list", "Pod") == pod_lists + 1
        )  # its informer's
        job = c.api.put(names.PLURAL, manifest("numNodes=2"))
        c.api.drain()
        await next(iter(watchers.values()))(event={"type": "ADDED", "object": job})
        await until(lambda: c.attempt(1) is not None, "attempt 1 created by a worker")
        await asyncio.wait_for(c.op.queue.join(), 10)
        assert c.status()["phase"] == "Pending"
        await until(lambda: list(c.op.index.values_of(KEY)), "the attempt Job in the index, from its watch")
        (seen,) = c.op.index.values_of(KEY)
        assert seen.attempt.name == f"{NAME}-a1" and seen.owned_by(job["metadata"]["uid"])
        c.op.jobs[KEY].pending.made.clear()  # from now on the operator knows a1 from the index alone
        c.api.delete("services", NS, f"{NAME}-workers")  # seen on the (metadata-only) watch of Services
        await until(lambda: c.api.get("services", NS, f"{NAME}-workers") is not None, "the Service re-created")
        await asyncio.wait_for(c.op.queue.join(), 10)
        assert c.attempt(2) is None and c.status()["attempt"] == 1
        ticker = c.op.ticker
        assert ticker is not None
        c.op.kube = None  # cleanup closes the client: the scenario closes it itself
        await cleanup()
        await asyncio.sleep(0)
        assert ticker.cancelled() and all(task.cancelled() for task in c.op.queue.workers)
        assert c.op.children is not None and all(t.done() for t in c.op.children.tasks)

    scenario(test)


def test_a_start_with_named_namespaces_and_no_crd_stops_saying_what_to_install(monkeypatch, caplog):
    """With exact namespaces kopf looks for the CRD only at start: without it, it would serve nothing and say
    only a WARNING, while the pod looks healthy. The start is refused instead, naming what to install."""
    import kopf

    from codex_operator import cli, registration

    async def test(c: Cluster) -> None:
        kube = c.op.kube
        assert kube is not None
        close = kube.close
        kube.close = lambda: asyncio.sleep(0)  # type: ignore[method-assign]  # the scenario closes it itself

        async def connect() -> Kube:
            return kube

        monkeypatch.setattr(registration.Kube, "connect", staticmethod(connect))
        monkeypatch.setattr(registration, "CRD_PAUSE", 0.0)
        assert not await registration.crd_missing(NS)
        gone = "the server could not find the requested resource"
        c.api.refuse("GET", names.PLURAL, 404, gone, times=registration.CRD_TRIES - 1)
        assert not await registration.crd_missing(NS)  # installed a moment ago, by the same helm install
        c.api.refuse("GET", names.PLURAL, 404, gone, times=None)
        assert await registration.crd_missing(NS)
        c.api.rules[:] = []
        c.api.refuse("GET", names.PLURAL, 503, "the server is starting", times=None)
        assert not await registration.crd_missing(NS)  # cannot tell: kopf's retries take it from there
        kube.close = close  # type: ignore[method-assign]

    scenario(test)

    async def missing(namespace: str) -> bool:
        return namespace == "team-a"

    started: list[Any] = []
    monkeypatch.setattr(registration, "crd_missing", missing)

    async def operator(**kwargs: Any) -> None:
        started.append(kwargs)

    monkeypatch.setattr(kopf, "operator", operator)
    assert cli.main(["run", "--metrics-port=0", "-n", "team-a"]) == 1 and not started
    (line,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert "CodexTrainingJob CRD is not installed" in line.message
    assert f"kubectl apply -f crds/{names.CRD_NAME}.yaml" in line.message
    assert cli.main(["run", "--metrics-port=0", "-n", "team-b"]) == 0 and started  # served: kopf runs


def test_the_command_line_runs_kopf_with_the_controller_it_describes(monkeypatch):
    import kopf

    from codex_operator import cli, handlers, registration

    ran: dict[str, Any] = {}

    async def operator(**kwargs: Any) -> None:
        ran.update(kwargs)

    made: list[handlers.Operator] = []
    monkeypatch.setattr(kopf, "operator", operator)
    # a pattern, or all namespaces: kopf watches for the CRD itself, and serves it once it is installed
    monkeypatch.setattr(registration, "crd_missing", lambda namespace: pytest.fail("the CRD looked for"))
    real = handlers.Operator
    monkeypatch.setattr(handlers, "Operator", lambda options: made.append(real(options)) or made[-1])
    argv = ["run", "--metrics-port=0", "-n", "team-*", "--queue-manages-all-jobs", "--progress-interval=3"]
    assert cli.main(argv) == 0
    assert ran["namespaces"] == ["team-*"] and not ran["clusterwide"] and ran["standalone"]
    (op,) = made
    assert op.options.queue_owns_suspend and op.options.progress_interval == 3
    monkeypatch.setenv("CODEX_NAMESPACES", "")
    assert cli.main(["run", "--metrics-port=0"]) == 0 and ran["clusterwide"]


def test_kopf_scans_the_cluster_only_where_there_is_something_to_discover():
    from codex_operator.registration import kopf_scans

    assert kopf_scans([]) and kopf_scans(["team-*"]) and kopf_scans(["a", "b*"])
    assert not kopf_scans(["team-a"]) and not kopf_scans(["team-a", "team-b"])
