"""Each benchmark's output: a table on stdout, `bench/results/<name>.json` and, when it has a
plot, `bench/results/<name>.png` (matplotlib, from the `bench` dependency group)."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.common import RESULTS, loadavg


@dataclass
class Target:
    name: str
    measured: float
    target: float
    # "min": measured must be at least target; "max": at most.
    kind: str
    unit: str = ""

    @property
    def met(self) -> bool:
        if math.isnan(self.measured):
            return False
        return self.measured >= self.target if self.kind == "min" else self.measured <= self.target

    def line(self) -> str:
        op = ">=" if self.kind == "min" else "<="
        mark = "MET" if self.met else "MISSED"
        target = f"{op} {self.target:g}{self.unit}"
        return f"{self.name}: {self.measured:,.2f}{self.unit} (target {target}) {mark}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "measured": round(self.measured, 3),
            "target": self.target,
            "kind": self.kind,
            "unit": self.unit,
            "met": self.met,
        }


@dataclass
class Report:
    name: str
    size: str
    load_start: list[float] = field(default_factory=loadavg)
    started: float = field(default_factory=time.time)
    columns: list[str] = field(default_factory=list)
    rows: list[Sequence[Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    # Lines printed under the table (and kept in the JSON): figures that are not rows.
    notes: list[str] = field(default_factory=list)
    plot: Callable[[Any], None] | None = None
    figure_size: tuple[float, float] = (10, 4.5)

    def target(self, name: str, measured: float, target: float, kind: str, unit: str = "") -> None:
        self.targets.append(Target(name, measured, target, kind, unit))

    def table(self) -> str:
        cells = [[_cell(v) for v in row] for row in self.rows]
        widths = [
            max(len(c), *(len(r[i]) for r in cells)) if cells else len(c)
            for i, c in enumerate(self.columns)
        ]
        lines = ["  ".join(c.rjust(w) for c, w in zip(self.columns, widths, strict=True))]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
        return "\n".join(lines)

    def finish(self) -> dict[str, Any]:
        load_end = loadavg()
        RESULTS.mkdir(parents=True, exist_ok=True)
        print(f"\n== {self.name} ({self.size}) ==")
        if self.rows:
            print(self.table())
        for note in self.notes:
            print("  " + note)
        for t in self.targets:
            print("  " + t.line())
        print(f"  load average: start {self.load_start}, end {load_end}")
        document = {
            "benchmark": self.name,
            "size": self.size,
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "seconds": round(time.time() - self.started, 1),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "loadavg_start": self.load_start,
            "loadavg_end": load_end,
            "targets": [t.as_dict() for t in self.targets],
            "table": {"columns": self.columns, "rows": [list(r) for r in self.rows]},
            "notes": self.notes,
            **self.data,
        }
        (RESULTS / f"{self.name}.json").write_text(json.dumps(document, indent=2) + "\n")
        if self.plot is not None:
            try:
                import matplotlib

                matplotlib.use("Agg")
                import matplotlib.pyplot as plt

                figure = plt.figure(figsize=self.figure_size)
                self.plot(figure)
                figure.suptitle(
                    f"{self.name} ({self.size}, load {self.load_start[0]}→{load_end[0]})"
                )
                figure.tight_layout()
                figure.savefig(RESULTS / f"{self.name}.png", dpi=110)
                plt.close(figure)
            except ImportError:
                print("  (no plot: matplotlib is in the bench group: uv sync --group bench)")
        print(f"  wrote {RESULTS / (self.name + '.json')}")
        return document


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
