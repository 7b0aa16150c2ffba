"""Drain stage (placeholder while the disk buffer lands)."""
from __future__ import annotations
from typing import Any


class Drain:
    def __init__(self, settings: Any, buffer: Any, sink: Any, supervisor: Any, metrics: Any) -> None:
        self.settings = settings

    async def run_once(self) -> None:
        return None
