"""Per-worker priority buffer of waiting requests (a heap with lazy deletion).

Order: ``SchedulingPolicy``'s rule — ``(tier, sort_key)`` lowest first, where ``sort_key`` =
``(key, arrival_time_s, arrival_seq)`` is computed once at ``push`` (a push counter breaks any
remaining tie FIFO, so requests are never compared themselves) (see ``elis.serving.policy``
for why that is exact even with aging). With ``promote_after_s`` a second heap finds the
requests promoted to tier 0: with ``promote_by='wait'`` those that have waited that long
continuously in the buffer (keyed by enqueue time, served in enqueue order); with
``promote_by='age'`` those whose time since ARRIVAL exceeds it (keyed by arrival, served
oldest first: FCFS among the old, whatever the key).

Costs: push O(log n), peek/pop amortised O(log n); removal is lazy (an entry is valid while
the request is ``in_buffer`` and its ``buffer_version`` matches).
"""

from __future__ import annotations

import heapq
import itertools

from elis.serving.request import Request


PROMOTE_BY: tuple[str, ...] = ("wait", "age")


class PriorityBuffer:
    """Waiting requests of one worker.

    Args:
        promote_after_s: promotion threshold (seconds) or None.
        promote_by: 'wait' (continuous time in the buffer) | 'age' (time since arrival).

    Raises:
        ValueError: an unknown ``promote_by``.
    """

    def __init__(self, promote_after_s: float | None = None, promote_by: str = "wait") -> None:
        if promote_by not in PROMOTE_BY:
            raise ValueError(f"sched.promote_by={promote_by!r} is not one of {list(PROMOTE_BY)}")
        self.promote_after_s = promote_after_s
        self.promote_by = promote_by
        self._heap: list[tuple[tuple, int, int, Request]] = []
        self._push_seq = itertools.count()
        self._promo: list[tuple[float, int, int, Request]] = []  # (basis time, tie, version, request)
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
            if self.promote_by == "age":
                entry = (request.arrival_time_s, request.arrival_seq, request.buffer_version, request)
            else:
                entry = (now_s, next(self._push_seq), request.buffer_version, request)
            heapq.heappush(self._promo, entry)
        self._size += 1

    @staticmethod
    def _valid(version: int, request: Request) -> bool:
        return request.in_buffer and request.buffer_version == version

    def _clean(self) -> None:
        heap = self._heap
        while heap and not self._valid(heap[0][2], heap[0][3]):
            heapq.heappop(heap)
        promo = self._promo
        while promo and not self._valid(promo[0][2], promo[0][3]):
            heapq.heappop(promo)

    def peek(self, now_s: float) -> tuple[int, Request] | None:
        """``(tier, request)`` of the best waiting request at ``now_s``, or None if empty."""
        self._clean()
        if self._promo and self._promo[0][0] <= now_s - self.promote_after_s:  # type: ignore[operator]
            return 0, self._promo[0][3]
        if self._heap:
            return 1, self._heap[0][3]
        return None

    def is_promoted(self, request: Request, now_s: float) -> bool:
        """Whether a RUNNING ``request`` would be tier 0 at ``now_s`` (only ``promote_by='age'``:
        continuous waiting ends when a request runs)."""
        return (self.promote_by == "age" and self.promote_after_s is not None
                and request.arrival_time_s <= now_s - self.promote_after_s)

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
