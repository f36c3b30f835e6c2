"""codex-operator: run the CodexTrainingJob operator (on kopf) against $KUBECONFIG or from inside a pod.

    codex-operator run [--namespace NS ...] [--metrics-port N] [--default-image IMAGE]
                       [--progress-interval SECONDS] [--progress-via auto|pod-ip|proxy] [--liveness-port N]
                       [--crash-backoff-seconds SECONDS]
                       [--leader-election [--lease-name NAME] [--lease-namespace NS]] [--queue-manages-all-jobs]

Each flag can also come from the environment (CODEX_NAMESPACES comma-separated, CODEX_METRICS_PORT,
CODEX_DEFAULT_IMAGE, CODEX_PROGRESS_INTERVAL, CODEX_PROGRESS_VIA, CODEX_CRASH_BACKOFF_SECONDS, CODEX_LIVENESS_PORT,
CODEX_LEADER_ELECTION=true, CODEX_LEASE_NAME, CODEX_LEASE_NAMESPACE, CODEX_QUEUE_MANAGES_ALL_JOBS=true;
CODEX_POD_NAME names this replica).

With --leader-election several replicas may run: the one holding the Lease acts, the others stand by
(leader.py). Without it, run exactly one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from . import names


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command != "run":
        return 2
    import kopf

    from . import handlers, metrics, registration
    from .builders import Settings

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # one line per handler run is noise at scale
    logging.getLogger("kubernetes_asyncio").setLevel(logging.INFO)  # its debug level prints every response body
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # a line per probe of /healthz is noise
    if args.metrics_port:
        metrics.serve(args.metrics_port)
    options = handlers.Options(
        settings=Settings(default_image=args.default_image, queue_owns_suspend=args.queue_manages_all_jobs),
        progress_interval=args.progress_interval,
        progress_writes_per_second=args.progress_writes_per_second,
        progress_via=args.progress_via,
        queue_owns_suspend=args.queue_manages_all_jobs,
        crash_pause=args.crash_backoff_seconds,
    )
    namespaces = args.namespace or [n for n in _env("CODEX_NAMESPACES").split(",") if n]
    registry = kopf.OperatorRegistry()
    registration.register(handlers.Operator(options), registry, namespaces)
    run = partial(
        kopf.operator,
        registry=registry,
        standalone=True,  # no kopf peering objects: one replica acts (the Lease decides which, when several run)
        clusterwide=True,  # kopf watches nothing (the informers do, in `namespaces`): no namespace of its own
        liveness_endpoint=f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None,
    )
    if not args.leader_election:
        if asyncio.run(_no_crd(namespaces)):
            return 1
        metrics.LEADER.set(1)
        with contextlib.suppress(asyncio.CancelledError):  # as kopf.run does
            asyncio.run(run())
        return 0
    return asyncio.run(_elected(run, args, namespaces))


async def _no_crd(namespaces: list[str]) -> bool:
    """With exact namespaces, the CRD is looked for as the operator starts: without it, say so and stop (the pod
    restarts until the CRD is there) rather than look healthy with nothing to serve."""
    from . import registration

    if registration.watches_patterns(namespaces) or not await registration.crd_missing(namespaces[0]):
        return False
    logging.getLogger("codex_operator").error(registration.NO_CRD)
    return True


async def _elected(
    run: Callable[..., Coroutine[Any, Any, None]], args: argparse.Namespace, namespaces: list[str]
) -> int:
    """Stand by until this replica holds the Lease, then run the operator until it stops (a signal, or a
    crash: the Lease is handed back) or the Lease is lost (the process exits 1 at once: none of its
    handlers may act once a standby can take over; the container restarts as a standby)."""
    from . import leader, metrics
    from .kube import Kube

    log = logging.getLogger("codex_operator")
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:  # kopf puts its own handlers in once it runs; both stop it
        loop.add_signal_handler(sig, stopping.set)
    kube = await Kube.connect()
    elector = leader.Elector(
        kube, args.lease_namespace or leader.default_namespace(), args.lease_name, leader.identity()
    )
    try:
        health = await _standby_health(args.liveness_port) if args.liveness_port else None
        try:
            if not await elector.acquire(stopping):
                return 0
        finally:
            if health is not None:
                await health.cleanup()  # kopf serves /healthz on the same port from now on
        if await _no_crd(namespaces):  # looked for as this replica starts to act, as kopf would
            await elector.release()
            return 1
        metrics.LEADER.set(1)
        kopf_stop = asyncio.Event()
        operator = asyncio.create_task(run(stop_flag=kopf_stop))
        keeper = asyncio.create_task(elector.keep())
        stopper = asyncio.create_task(stopping.wait())  # a signal before kopf's own handlers are in
        await asyncio.wait({operator, keeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not keeper.done():
            kopf_stop.set()
            await asyncio.wait({operator, keeper}, return_when=asyncio.FIRST_COMPLETED)  # still renewing
        if keeper.done():
            why = keeper.exception() if not keeper.cancelled() else None
            log.error("lost the Lease%s: exiting now, so that only the new leader acts", f" ({why!r})" if why else "")
            logging.shutdown()
            os._exit(1)
        keeper.cancel()
        stopper.cancel()
        crashed = (await asyncio.gather(operator, keeper, stopper, return_exceptions=True))[0]
        metrics.LEADER.set(0)
        await elector.release()  # a crash too: a standby takes over at its next try
        if isinstance(crashed, BaseException) and not isinstance(crashed, asyncio.CancelledError):
            log.error("the operator stopped on an error: %r", crashed)
            return 1
        return 0
    finally:
        await kube.close()
        for sig, handler in previous.items():  # as found: asyncio would leave SIGINT at Python's default (a
            loop.remove_signal_handler(sig)  # background job's SIG_IGN lost), in a test or a notebook
            if handler is not None:
                signal.signal(sig, handler)


async def _standby_health(port: int) -> Any:
    """/healthz while standing by: a standby is alive and ready to take over."""
    from aiohttp import web

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"standby": True})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name) or default


def _not_negative(text: str) -> float:
    """A finite number ≥ 0 (argparse's type for a per-second limit or a pause; 0: none)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"'{text}' must be a finite number, 0 or more (0: none)")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="codex-operator", description="Run the CodexTrainingJob operator.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="watch CodexTrainingJobs and run them (like `kopf run`)")
    run.add_argument(
        "--namespace",
        "-n",
        action="append",
        help="a namespace to watch, or a glob such as 'team-*' (repeatable; default: CODEX_NAMESPACES, "
        "comma-separated, else all namespaces)",
    )
    run.add_argument("--metrics-port", type=int, default=int(_env("CODEX_METRICS_PORT", "8000")),
                     help="serve the operator's Prometheus metrics here (0: off; default 8000)")  # fmt: skip
    run.add_argument("--liveness-port", type=int, default=int(_env("CODEX_LIVENESS_PORT", "0")),
                     help="serve kopf's liveness probe at :PORT/healthz (default off)")  # fmt: skip
    run.add_argument("--default-image", default=_env("CODEX_DEFAULT_IMAGE", names.DEFAULT_IMAGE),
                     help=f"trainer image for jobs that name none (default {names.DEFAULT_IMAGE})")  # fmt: skip
    run.add_argument("--progress-interval", type=float, default=float(_env("CODEX_PROGRESS_INTERVAL", "10")),
                     help="seconds between reads of a running job's progress (default 10)")  # fmt: skip
    run.add_argument("--progress-writes-per-second", type=_not_negative,
                     default=_env("CODEX_PROGRESS_WRITES_PER_SECOND", "20"),
                     help="at most this many progress writes into the jobs' status a second, the jobs waiting "
                     "longest first (each is a CodexTrainingJob update for the API server; 0: no limit; "
                     "default 20)")  # fmt: skip
    run.add_argument("--crash-backoff-seconds", type=_not_negative, default=_env("CODEX_CRASH_BACKOFF_SECONDS", "10"),
                     help="after a crash, wait this long before the next attempt, twice as long after each "
                     "further crash, at most 300 s or SECONDS (0: no wait; default 10)")  # fmt: skip
    run.add_argument("--progress-via", choices=["auto", "pod-ip", "proxy"], default=_env("CODEX_PROGRESS_VIA", "auto"),
                     help="reach rank 0's metrics by pod IP (in the cluster) or the API server's pods/proxy "
                     "(outside it); auto picks by where the operator runs")  # fmt: skip
    run.add_argument("--leader-election", action="store_true", default=_env("CODEX_LEADER_ELECTION") in ("1", "true"),
                     help="several replicas: the one holding a Lease acts, the others stand by (default off: "
                     "run exactly one replica; CODEX_LEADER_ELECTION=true)")  # fmt: skip
    run.add_argument("--lease-name", default=_env("CODEX_LEASE_NAME", "codex-operator"),
                     help="the coordination.k8s.io Lease the replicas share (default codex-operator)")  # fmt: skip
    run.add_argument("--lease-namespace", default=_env("CODEX_LEASE_NAMESPACE"),
                     help="its namespace (default: this pod's namespace, else default)")  # fmt: skip
    run.add_argument("--queue-manages-all-jobs", action="store_true",
                     default=_env("CODEX_QUEUE_MANAGES_ALL_JOBS") in ("1", "true"),
                     help="Kueue manages Jobs without a queue label too (its manageJobsWithoutQueueName): never "
                     "change an attempt Job's suspend (CODEX_QUEUE_MANAGES_ALL_JOBS=true)")  # fmt: skip
    run.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    return p


if __name__ == "__main__":
    sys.exit(main())
