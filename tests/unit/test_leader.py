"""Which replica acts: the Lease decision, judged by the standby's own clock, and the Elector against a
fake API server (two replicas, a partition, a deleted Lease, dropped connections)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from test_operator_kube import serving

from codex_operator.leader import Elector, Seen, Timing, decide

T = Timing(duration=15)


def lease(holder: str | None, renew: str = "t0", duration: int = 15) -> dict:
    return {"spec": {"holderIdentity": holder, "renewTime": renew, "leaseDurationSeconds": duration}}


def test_our_own_lease_is_renewed():
    assert decide(lease("a"), "a", Seen(), 0, T) == "renew"


def test_a_lease_handed_back_is_taken_at_once():
    assert decide(lease(None), "b", Seen(), 0, T) == "take"
    assert decide(lease(""), "b", Seen(), 0, T) == "take"


def test_a_renewed_lease_is_never_taken_however_old_its_timestamps_look():
    seen = Seen()
    for i, now in enumerate([0, 10, 20, 30, 40, 50]):
        assert decide(lease("a", renew=f"t{i}"), "b", seen, now, T) == "wait"


def test_an_unrenewed_lease_is_taken_only_after_a_whole_duration_on_the_standbys_clock():
    seen = Seen()
    assert decide(lease("a"), "b", seen, 100, T) == "wait"  # first sight starts the clock
    assert decide(lease("a"), "b", seen, 114, T) == "wait"
    assert decide(lease("a"), "b", seen, 116, T) == "take"


def test_the_holders_own_duration_counts():
    seen = Seen()
    assert decide(lease("a", duration=60), "b", seen, 0, T) == "wait"
    assert decide(lease("a", duration=60), "b", seen, 30, T) == "wait"
    assert decide(lease("a", duration=60), "b", seen, 61, T) == "take"


def test_a_missing_lease_is_never_recreated_by_its_holder_and_by_a_standby_only_after_a_duration():
    seen = Seen()
    assert decide(None, "a", Seen(), 0, T, holding=True) == "wait"  # lost: it stops acting
    assert decide(None, "b", seen, 100, T) == "wait"  # deleted by hand under a holder, maybe
    assert decide(None, "b", seen, 114, T) == "wait"
    assert decide(None, "b", seen, 116, T) == "create"


# ---- the Elector against a fake API server that keeps one Lease as the real one does: a resourceVersion
# that a replace must match (409 otherwise), 409 on creating one that exists, 404 when there is none

FAST = Timing(duration=2, renew=0.25, deadline=1, retry=0.1, request=0.5)  # margins for a loaded machine


class FakeLeases:
    def __init__(self) -> None:
        self.lease: dict | None = None
        self.version = 0
        self.hang = False  # answer nothing (a partitioned API server) until `healed` is set
        self.healed: asyncio.Event | None = None
        self.drop = False  # close the connection without an answer

    async def answer(self, request: web.Request) -> web.StreamResponse:
        if self.hang:
            self.healed = self.healed or asyncio.Event()
            await self.healed.wait()
        if self.drop:
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if request.method == "GET":
            return web.json_response(self.lease) if self.lease else web.json_response({"code": 404}, status=404)
        body = await request.json()
        if request.method == "POST" and self.lease:
            return web.json_response({"code": 409}, status=409)
        if request.method == "PUT" and (not self.lease or body["metadata"].get("resourceVersion") != self._rv()):
            return web.json_response({"code": 409}, status=409)
        self.version += 1
        self.lease = body | {"metadata": body["metadata"] | {"resourceVersion": self._rv()}}
        return web.json_response(self.lease)

    def _rv(self) -> str:
        return str(self.version)

    def holder(self) -> str | None:
        return (self.lease or {}).get("spec", {}).get("holderIdentity")


def elect(fake: FakeLeases, scenario) -> Any:
    return serving(fake.answer, lambda kube: scenario(lambda me: Elector(kube, "ns", "lease", me, FAST)))


def test_one_replica_leads_the_other_waits_and_takes_over_when_it_is_handed_back():
    fake = FakeLeases()

    async def scenario(elector):
        a, b = elector("a"), elector("b")
        never = asyncio.Event()
        assert await asyncio.wait_for(a.acquire(never), 5)  # none yet: created after a duration (standby rule)
        assert fake.holder() == "a"
        waiting = asyncio.create_task(b.acquire(never))
        keeping = asyncio.create_task(a.keep())
        await asyncio.sleep(2 * FAST.duration)  # a renews: b never takes it, however long it waits
        assert not waiting.done() and not keeping.done() and fake.holder() == "a"
        keeping.cancel()
        await a.release()
        assert await asyncio.wait_for(waiting, 1) and fake.holder() == "b"  # within a retry or two

    elect(fake, scenario)


def test_a_holder_cut_off_from_the_api_server_gives_up_before_a_standby_could_take_over():
    fake = FakeLeases()

    async def scenario(elector):
        a = elector("a")
        await asyncio.wait_for(a.acquire(asyncio.Event()), 5)
        keeping = asyncio.create_task(a.keep())
        await asyncio.sleep(0.5)
        fake.hang = True
        start = asyncio.get_running_loop().time()
        await asyncio.wait_for(keeping, 5)  # returns: leadership lost
        assert asyncio.get_running_loop().time() - start < FAST.duration  # before any standby may act
        assert fake.healed is not None
        fake.healed.set()

    elect(fake, scenario)


def test_a_lease_deleted_under_its_holder_ends_its_leadership_before_a_standby_may_create_one():
    """kubectl delete lease, or helm uninstall while the old pod still stops: the holder gives up at its next
    renewal and recreates nothing; a standby creates the Lease only after a whole duration, so there is
    never a moment with two acting."""
    fake = FakeLeases()

    async def scenario(elector):
        a, b = elector("a"), elector("b")
        await asyncio.wait_for(a.acquire(asyncio.Event()), 5)
        keeping = asyncio.create_task(a.keep())
        waiting = asyncio.create_task(b.acquire(asyncio.Event()))
        await asyncio.sleep(0.3)
        fake.lease = None  # kubectl delete lease
        start = asyncio.get_running_loop().time()
        await asyncio.wait_for(keeping, 5)  # leadership lost
        assert asyncio.get_running_loop().time() - start < FAST.duration and fake.lease is None
        assert await asyncio.wait_for(waiting, 5) and fake.holder() == "b"  # after a whole duration

    elect(fake, scenario)


def test_dropped_connections_neither_crash_a_standby_nor_make_it_lead():
    fake = FakeLeases()
    fake.drop = True

    async def scenario(elector):
        stop = asyncio.Event()
        waiting = asyncio.create_task(elector("b").acquire(stop))
        await asyncio.sleep(1)
        assert not waiting.done()  # still standing by, no traceback
        stop.set()
        assert await asyncio.wait_for(waiting, 2) is False

    elect(fake, scenario)


def test_the_elected_replica_runs_the_operator_until_a_signal_then_hands_the_lease_back(monkeypatch):
    """`codex-operator run --leader-election`: /healthz answers while standing by, the Lease is taken, the
    operator runs, and SIGTERM stops it and hands the Lease back for a standby to take at once."""
    import signal
    import socket

    from codex_operator import cli
    from codex_operator.kube import Kube

    fake = FakeLeases()
    fake.lease = {"metadata": {"name": "lease", "namespace": "ns", "resourceVersion": "0"}} | lease(None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def scenario(kube: Kube) -> None:
        async def connect() -> Kube:
            return kube

        async def keep_open() -> None:
            return None  # the scenario closes the client itself

        monkeypatch.setattr(Kube, "connect", staticmethod(connect))
        monkeypatch.setattr(kube, "close", keep_open)
        running = asyncio.Event()

        async def operator(stop_flag: asyncio.Event) -> None:
            running.set()
            await stop_flag.wait()

        args = cli._parser().parse_args(
            ["run", "--leader-election", "--lease-name=lease", "--lease-namespace=ns", f"--liveness-port={port}"]
        )
        elected = asyncio.create_task(cli._elected(operator, args, []))
        await asyncio.wait_for(running.wait(), 10)
        assert fake.holder()
        signal.raise_signal(signal.SIGTERM)
        assert await asyncio.wait_for(elected, 10) == 0
        assert not fake.holder()

    serving(fake.answer, scenario)


def test_a_replica_elected_with_no_crd_to_serve_hands_the_lease_back_and_exits_1(monkeypatch):
    """With exact namespaces kopf looks for the CRD as it starts, which for a standby is when it takes the Lease:
    the CRD is looked for then, and its absence stops the replica (its pod restarts) instead of serving nothing."""
    from codex_operator import cli, registration
    from codex_operator.kube import Kube

    fake = FakeLeases()
    fake.lease = {"metadata": {"name": "lease", "namespace": "ns", "resourceVersion": "0"}} | lease(None)

    async def scenario(kube: Kube) -> None:
        async def connect() -> Kube:
            return kube

        async def keep_open() -> None:
            return None  # the scenario closes the client itself

        async def missing(namespace: str) -> bool:
            assert fake.holder()  # looked for once this replica holds the Lease
            return True

        async def operator(stop_flag: asyncio.Event) -> None:
            raise AssertionError("the operator ran without its CRD")

        monkeypatch.setattr(Kube, "connect", staticmethod(connect))
        monkeypatch.setattr(kube, "close", keep_open)
        monkeypatch.setattr(registration, "crd_missing", missing)
        args = cli._parser().parse_args(["run", "--leader-election", "--lease-name=lease", "--lease-namespace=ns"])
        assert await asyncio.wait_for(cli._elected(operator, args, ["team-a"]), 10) == 1
        assert not fake.holder()  # handed back: another replica may try at once

    serving(fake.answer, scenario)
