"""The waiting queue under the two scheduling policies.

Invariants:
- fcfs: requests leave in arrival order, except that preempted requests re-enter at the front.
- priority: requests leave by (priority, arrival_time), lowest first (vLLM's convention);
  a preempted request keeps its place by that key.
"""

from __future__ import annotations

import heapq
from collections import deque

from pagoda.core.request import Request


class RequestQueue:
    def __init__(self, policy: str) -> None:
        if policy not in ("fcfs", "priority"):
            raise ValueError(f"scheduling_policy must be 'fcfs' or 'priority', got {policy!r}")
        self.policy = policy
        self._fifo: deque[Request] = deque()
        self._heap: list[tuple[int, float, int, Request]] = []
        self._counter = 0  # tie-breaker so the heap never compares Request objects

    def add(self, request: Request) -> None:
        if self.policy == "fcfs":
            self._fifo.append(request)
        else:
            self._push(request)

    def add_front(self, request: Request) -> None:
        if self.policy == "fcfs":
            self._fifo.appendleft(request)
        else:
            self._push(request)

    def peek(self) -> Request:
        return self._fifo[0] if self.policy == "fcfs" else self._heap[0][3]

    def pop(self) -> Request:
        return self._fifo.popleft() if self.policy == "fcfs" else heapq.heappop(self._heap)[3]

    def remove(self, request: Request) -> None:
        if self.policy == "fcfs":
            self._fifo.remove(request)
        else:
            self._heap = [item for item in self._heap if item[3] is not request]
            heapq.heapify(self._heap)

    def __len__(self) -> int:
        return len(self._fifo) if self.policy == "fcfs" else len(self._heap)

    def __bool__(self) -> bool:
        return len(self) > 0

    def _push(self, request: Request) -> None:
        self._counter += 1
        heapq.heappush(self._heap, (request.priority, request.arrival_time, self._counter, request))
