"""What the runner hands each benchmark."""

from __future__ import annotations

from dataclasses import dataclass

from bench.datagen import Graph
from web.container import Services
from web.settings import Settings


@dataclass
class Context:
    size: str
    settings: Settings
    services: Services
    graph: Graph
    # Seconds per measured step (one concurrency level, one path).
    step: float
    web_processes: int
