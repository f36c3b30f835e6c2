"""The jobs due a reconcile, and the workers that reconcile them.

A watch event only keeps what it says and queues its job here; a fixed set of workers takes the queued
jobs in the order they came. A job already waiting is not queued twice: its reconcile reads the newest
body when its turn comes, so a burst of events costs one reconcile, and a watch event is let go at
once instead of being held (with its whole decoded object, in kopf's worker) until a reconcile can start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from .watched import Key

log = logging.getLogger("codex_operator")


class WorkQueue:
    def __init__(self, reconcile: Callable[[Key, bool], Awaitable[None]]):
        self.reconcile = reconcile  # (the job, whether to read it afresh)
        self.due: asyncio.Queue[Key] = asyncio.Queue()
        self.waiting: dict[Key, bool] = {}  # queued job -> read it afresh (a child was deleted)
        self.workers: list[asyncio.Task] = []

    def put(self, key: Key, afresh: bool = False) -> None:
        """Reconcile the job soon, once however many times it is put before its turn."""
        if key in self.waiting:
            self.waiting[key] |= afresh
            return
        self.waiting[key] = afresh
        self.due.put_nowait(key)

    async def join(self) -> None:
        """Until every job put so far has been reconciled."""
        await self.due.join()

    def start(self, n: int) -> None:
        """Start n workers (as many as reconciles may be in flight)."""
        self.workers = [asyncio.create_task(self._work(), name=f"codex-operator reconciles {i}") for i in range(n)]

    def stop(self) -> None:
        for task in self.workers:
            task.cancel()

    async def _work(self) -> None:
        while True:
            key = await self.due.get()
            afresh = self.waiting.pop(key, False)
            try:
                await self.reconcile(key, afresh)
            except Exception:
                log.exception("%s/%s: reconcile failed unexpectedly", *key)
            finally:
                self.due.task_done()
