"""A bound on the bytes that concurrent tasks hold at once, shared first come, first served.

The collector holds a request body's bytes from before it reads the body to Kafka's
acknowledgement: what a body costs in memory meanwhile grows with its size (a 4 MB batch of empty calls is ~1.4M dicts,
~300 MB with their refusals), so bounding the bytes bounds the memory of concurrent huge batches.
"""

from __future__ import annotations

import asyncio
from collections import deque


class ByteBudget:
    """Up to `bound_bytes` held at once; a holder larger than the bound holds all of it alone.

    Waiters are served in order of arrival: small requests must not keep a large one waiting for ever.
    """

    def __init__(self, bound_bytes: int) -> None:
        self.bound_bytes = bound_bytes
        self.held_bytes = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def acquire(self, size_bytes: int) -> int:
        """Hold `size_bytes` of the budget (at most all of it), waiting for them if need be; the
        bytes held, to `release`. Cancel the wait (e.g. with asyncio.timeout) to give up: nothing is held then."""
        size_bytes = min(size_bytes, self.bound_bytes)
        await self._acquire(size_bytes)
        return size_bytes

    def release(self, size_bytes: int) -> None:
        self.held_bytes -= size_bytes
        self._wake()

    def trim(self, held_bytes: int, size_bytes: int) -> int:
        """Of `held_bytes` held (for a size known only as a bound), give back those beyond
        `size_bytes`, the size now known; the bytes still held, to `release`."""
        kept = min(held_bytes, size_bytes)
        self.release(held_bytes - kept)
        return kept

    async def _acquire(self, size_bytes: int) -> None:
        if not self._waiting and self._fits(size_bytes):
            self.held_bytes += size_bytes
            return
        turn = asyncio.get_running_loop().create_future()
        entry = (size_bytes, turn)
        self._waiting.append(entry)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # granted as the wait was cancelled: give it back
                self.held_bytes -= size_bytes
            elif entry in self._waiting:
                self._waiting.remove(entry)
            self._wake()  # those behind may fit now
            raise

    def _fits(self, size_bytes: int) -> bool:
        return self.held_bytes + size_bytes <= self.bound_bytes

    def _wake(self) -> None:
        while self._waiting and (self._waiting[0][1].done() or self._fits(self._waiting[0][0])):
            size_bytes, turn = self._waiting.popleft()
            if not turn.done():  # a cancelled waiter, not yet gone, is skipped
                self.held_bytes += size_bytes
                turn.set_result(None)
