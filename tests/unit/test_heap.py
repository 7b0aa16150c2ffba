"""core.heap.settle: start-up's objects frozen, thresholds raised, cycles still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from core import heap


@pytest.fixture
def restored() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


class _Node:
    def __init__(self) -> None:
        self.peer: _Node | None = None


def test_settle_freezes_and_raises_thresholds(restored: None) -> None:
    alive = _Node()
    heap.settle()
    assert gc.get_threshold() == heap.THRESHOLDS
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0
    alive.peer = _Node()  # a frozen object stays usable
    assert alive.peer.peer is None


def test_cycles_made_after_settle_are_still_collected(restored: None) -> None:
    heap.settle()
    a, b = _Node(), _Node()
    a.peer, b.peer = b, a
    gone = weakref.ref(a)
    del a, b
    assert gone() is not None  # a cycle: reference counting alone never frees it
    held: list[_Node] = []  # container allocations that stay alive, as records in flight do
    while gone() is not None and len(held) < 10 * heap.THRESHOLDS[0]:
        held += [_Node() for _ in range(1000)]
    assert gone() is None, "a young-generation pass never ran"
