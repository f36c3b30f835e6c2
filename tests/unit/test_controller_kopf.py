"""What kopf runs of the controller (start-up, clean-up; the informers hand it the jobs' and the children's
events) and how the command line runs kopf with it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from controller_harness import KEY, NAME, NS, Cluster, manifest, scenario

from codex_operator import names
from codex_operator.kube import Kube

# ---------------------------------------------------------------- kopf's side: start-up and clean-up


def test_kopf_starts_the_informers_that_hand_the_jobs_and_their_childrens_events_to_the_controller(monkeypatch):
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
        assert settings.scanning.disabled  # kopf watches nothing, so has no CRD or namespace to discover
        for handlers_of in (registry._watching, registry._changing, registry._indexing, registry._spawning):
            assert not list(handlers_of.get_all_handlers())  # no per-object worker, diff-base, index or finalizer
        # the operator's informers: the jobs (all of them), and each kind of child labelled with a job's name
        await until(lambda: len(c.api.watches) == 5, "a watch of the jobs, of each kind of child and of their pods")
        assert sorted(w.get("labelSelector", "") for w in c.api.watches) == ["", *[names.LABEL_JOB] * 4]
        assert [w["labelSelector"] for w in c.api.watches if w.get("labelSelector")] == [names.LABEL_JOB] * 4
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
        # the job from before the restart, listed by the jobs' informer: reconciled with the attempt it has
        await until(lambda: (c.api.get(names.PLURAL, NS, "earlier") or {}).get("status"), "the earlier job's status")
        assert c.api.get("jobs", NS, "earlier-a2") is None
        job = c.api.put(names.PLURAL, manifest("numNodes=2"))  # a new job, seen on the jobs' watch
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
        assert c.op.watches is not None and all(t.done() for t in c.op.watches.tasks)

    scenario(test)


def test_a_start_with_named_namespaces_and_no_crd_stops_saying_what_to_install(monkeypatch, caplog):
    """With exact namespaces and no CRD the operator would serve nothing, its pod healthy, its only word a
    WARNING at each of the informer's tries. The start is refused instead, naming what to install."""
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
        assert not await registration.crd_missing(NS)  # cannot tell: the informers' retries take it from there
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
    # a pattern, or all namespaces: the jobs' informer tries again until the CRD is installed
    monkeypatch.setattr(registration, "crd_missing", lambda namespace: pytest.fail("the CRD looked for"))
    real = handlers.Operator
    monkeypatch.setattr(handlers, "Operator", lambda options: made.append(real(options)) or made[-1])
    argv = ["run", "--metrics-port=0", "-n", "team-*", "--queue-manages-all-jobs", "--progress-interval=3"]
    assert cli.main(argv) == 0
    assert ran["clusterwide"] and not ran.get("namespaces") and ran["standalone"]  # kopf watches nothing
    (op,) = made
    assert op.options.queue_owns_suspend and op.options.progress_interval == 3
    monkeypatch.setenv("CODEX_NAMESPACES", "")
    assert cli.main(["run", "--metrics-port=0"]) == 0 and ran["clusterwide"]


def test_the_cluster_is_watched_only_for_all_namespaces_or_patterns():
    from codex_operator.registration import watches_patterns

    assert watches_patterns([]) and watches_patterns(["team-*"]) and watches_patterns(["a", "b*"])
    assert not watches_patterns(["team-a"]) and not watches_patterns(["team-a", "team-b"])


def test_an_earlier_jobs_deletion_seen_after_the_new_one_of_that_name_leaves_the_new_one_known():
    """A LIST after a 410 delivers the new job (deleted and applied again meanwhile), then says DELETED for the
    old UID it lacks: that must not drop the new job's state (its lock, its pending attempt), or two reconciles
    of it could run at once (found by a review)."""

    async def test(c: Cluster) -> None:
        from codex_operator import informer

        old = c.api.put(names.PLURAL, manifest())
        gone = informer.skeleton(old)
        c.api.delete(names.PLURAL, NS, NAME)
        c.api.drain()
        new = manifest()
        new["metadata"]["uid"] = "uid-of-the-new-one"
        new = c.api.put(names.PLURAL, new)
        c.op.take_job_watched("ADDED", new)
        c.op.take_job_watched("DELETED", gone)
        assert KEY in c.op.jobs and (c.op.jobs[KEY].body or {})["metadata"]["uid"] == "uid-of-the-new-one"
        c.op.take_job_watched("DELETED", informer.skeleton(new))
        assert KEY not in c.op.jobs

    scenario(test)
