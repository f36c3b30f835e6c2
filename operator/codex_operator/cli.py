"""codex-operator: run the CodexTrainingJob operator (kopf) against $KUBECONFIG or from inside a pod.

    codex-operator run [--namespace NS ...] [--metrics-port N] [--default-image IMAGE]
                       [--progress-interval SECONDS] [--progress-via auto|pod-ip|proxy] [--liveness-port N]

Each flag can also come from the environment (CODEX_NAMESPACES comma-separated, CODEX_METRICS_PORT,
CODEX_DEFAULT_IMAGE, CODEX_PROGRESS_INTERVAL, CODEX_PROGRESS_VIA, CODEX_LIVENESS_PORT).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from . import names


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command != "run":
        return 2
    import kopf

    from . import handlers, metrics
    from .builders import Settings

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # one line per handler run is noise at scale
    logging.getLogger("kubernetes_asyncio").setLevel(logging.INFO)  # its debug level prints every response body
    if args.metrics_port:
        metrics.serve(args.metrics_port)
    options = handlers.Options(
        settings=Settings(default_image=args.default_image),
        progress_interval=args.progress_interval,
        progress_via=args.progress_via,
    )
    registry = kopf.OperatorRegistry()
    handlers.register(handlers.Operator(options), registry)
    namespaces = args.namespace or [n for n in _env("CODEX_NAMESPACES").split(",") if n]
    kopf.run(
        registry=registry,
        standalone=True,  # no peering objects: run one replica (the chart's Deployment does)
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None,
    )
    return 0


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name) or default


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
    run.add_argument("--progress-via", choices=["auto", "pod-ip", "proxy"], default=_env("CODEX_PROGRESS_VIA", "auto"),
                     help="reach rank 0's metrics by pod IP (in the cluster) or the API server's pods/proxy "
                     "(outside it); auto picks by where the operator runs")  # fmt: skip
    run.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    return p


if __name__ == "__main__":
    sys.exit(main())
