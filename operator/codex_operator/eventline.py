"""The job's Events, posted in the background a few at a time.

The reconcile and the timer ask for an Event and go on: kopf's own `kopf.event` works only inside its
handlers, and a job's start must not wait for its story to be told. In a burst the Events number in the
hundreds; waiting for the API client's connections they would be ahead of every job's creates (1,000
jobs at once: ConfigMap creates waited up to 8 s behind 350 Event posts), so at most EVENTS_AT_ONCE are
in flight and the rest wait here, in a line of their own. A failed post is logged, never fatal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("codex_operator")

EVENTS_AT_ONCE = 4

Send = Callable[[dict[str, Any], str, str, str], Awaitable[None]]  # (the job, type, reason, message)


class EventLine:
    def __init__(self, send: Send, at_once: int = EVENTS_AT_ONCE):
        self.send = send
        self.gate = asyncio.Semaphore(at_once)
        self.waiting: set[asyncio.Task] = set()

    def post(self, body: dict[str, Any], kind: str, reason: str, message: str) -> None:
        """Post an Event on the job soon; returns at once."""
        meta = body["metadata"]
        about = {"metadata": {k: meta.get(k) for k in ("name", "namespace", "uid")}}  # not the whole job, held
        task = asyncio.get_running_loop().create_task(self._post(about, kind, reason, message))
        self.waiting.add(task)
        task.add_done_callback(self.waiting.discard)

    async def posted(self) -> None:
        """Until every Event asked for so far has been posted (or failed)."""
        while self.waiting:
            await asyncio.gather(*self.waiting)

    async def _post(self, body: dict[str, Any], kind: str, reason: str, message: str) -> None:
        meta = body["metadata"]
        try:
            async with self.gate:
                await self.send(body, kind, reason, message)
        except Exception as e:
            log.warning("could not post the Event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], e)
