"""Per-worker priority buffer of waiting requests (a heap with lazy deletion).

Order: ``SchedulingPolicy``'s rule — ``(tier, sort_key)`` lowest first, where ``sort_key`` =
``(key, arrival_time_s, arrival_seq)`` is computed once at ``push`` (a push counter breaks any
remaining tie FIFO, so requests are never compared themselves) (see ``elis.serving.policy``
for why that is exact even with aging). With ``promote_after_s`` a FIFO of enqueue times
finds requests that have waited that long; they form tier 0, served in enqueue order.

Costs: push O(log n), peek/pop amortised O(log n); removal is lazy (an entry is valid while
the request is ``in_buffer`` and its ``buffer_version`` matches).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque

from elis.serving.request import Request


class PriorityBuffer:
    """Waiting requests of one worker.

    Args:
        promote_after_s: promotion threshold (seconds of continuous waiting) or None.
    """

    def __init__(self, promote_after_s: float | None = None) -> None:
        self.promote_after_s = promote_after_s
        self._heap: list[tuple[tuple, int, int, Request]] = []
        self._push_seq = itertools.count()
        self._fifo: deque[tuple[float, int, Request]] = deque()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, request: Request, now_s: float) -> None:
        """Add ``request`` (its ``sort_key`` must be set) with enqueue time ``now_s``."""
        if request.in_buffer:
            raise RuntimeError(f"request {request.request_id!r} is already in the buffer")
        request.buffer_version += 1
        request.in_buffer = True
        request.enqueue_time_s = now_s
        heapq.heappush(self._heap, (request.sort_key, next(self._push_seq), request.buffer_version, request))
        if self.promote_after_s is not None:
            self._fifo.append((now_s, request.buffer_version, request))
        self._size += 1

    @staticmethod
    def _valid(version: int, request: Request) -> bool:
        return request.in_buffer and request.buffer_version == version

    def _clean(self) -> None:
        heap = self._heap
        while heap and not self._valid(heap[0][2], heap[0][3]):
            heapq.heappop(heap)
        fifo = self._fifo
        while fifo and not self._valid(fifo[0][1], fifo[0][2]):
            fifo.popleft()

    def peek(self, now_s: float) -> tuple[int, Request] | None:
        """``(tier, request)`` of the best waiting request at ``now_s``, or None if empty."""
        self._clean()
        if self._fifo and self._fifo[0][0] <= now_s - self.promote_after_s:  # type: ignore[operator]
            return 0, self._fifo[0][2]
        if self._heap:
            return 1, self._heap[0][3]
        return None

    def pop(self, now_s: float) -> Request | None:
        """Remove and return the best waiting request, or None."""
        top = self.peek(now_s)
        if top is None:
            return None
        self.remove(top[1])
        return top[1]

    def remove(self, request: Request) -> None:
        """Remove ``request`` (lazy); error if it is not in the buffer."""
        if not request.in_buffer:
            raise RuntimeError(f"request {request.request_id!r} is not in the buffer")
        request.in_buffer = False
        self._size -= 1

    def requests(self) -> list[Request]:
        """The waiting requests (unordered snapshot)."""
        return [r for _, _, v, r in self._heap if self._valid(v, r)]
