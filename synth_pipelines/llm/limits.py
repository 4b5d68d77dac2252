"""Per-model admission control: bounded concurrency plus requests- and tokens-per-minute buckets."""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    """Continuous-refill bucket of ``capacity`` units per minute. ``acquire`` waits until ``units`` fit."""

    def __init__(self, per_minute: float):
        self.capacity = float(per_minute)
        self.tokens = float(per_minute)
        self.rate = float(per_minute) / 60.0
        self.updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self, units: float = 1.0) -> float:
        """Take ``units`` (capped at capacity: one huge request must not wait forever).

        Returns the seconds waited.
        """
        units = min(units, self.capacity)
        waited = 0.0
        async with self._lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= units:
                    self.tokens -= units
                    return waited
                delay = (units - self.tokens) / self.rate
                waited += delay
                await asyncio.sleep(delay)


class ModelLimiter:
    """Everything that gates a call to one model. Created inside the client's event loop."""

    def __init__(self, max_concurrency: int, rpm: int | None, tpm: int | None):
        self.semaphore = asyncio.Semaphore(max_concurrency)
        self.requests = TokenBucket(rpm) if rpm else None
        self.tokens = TokenBucket(tpm) if tpm else None

    async def admit(self, estimated_tokens: int) -> None:
        if self.requests is not None:
            await self.requests.acquire(1)
        if self.tokens is not None:
            await self.tokens.acquire(estimated_tokens)
