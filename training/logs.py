"""Loss curves: CSV rows while training (appended, so a resumed run continues the same file), a JSON
copy and a PNG plot (matplotlib, Agg) at the end."""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path


class LossLog:
    def __init__(self, directory: str | Path, name: str = "loss", enabled: bool = True):
        self.dir = Path(directory)
        self.csv = self.dir / f"{name}.csv"
        self.json = self.dir / f"{name}.json"
        self.png = self.dir / f"{name}.png"
        self.enabled = enabled
        self.fields: list[str] | None = None

    def truncate_after(self, step: int) -> None:
        """Drop rows past ``step`` (a resumed run re-logs the steps after its checkpoint)."""
        if not self.enabled or not self.csv.is_file():
            return
        rows = self.rows()
        keep = [r for r in rows if r["step"] <= step]
        if len(keep) != len(rows):
            self._rewrite(keep)

    def _rewrite(self, rows: list[dict]) -> None:
        tmp = self.csv.with_name(f".{self.csv.name}.tmp{os.getpid()}")
        fields = list(rows[0].keys()) if rows else (self.fields or ["step"])
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.csv)

    def append(self, row: dict) -> None:
        if not self.enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        new = not self.csv.is_file()
        if self.fields is None:
            self.fields = list(row.keys()) if new else self._header()
        with open(self.csv, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)

    def _header(self) -> list[str]:
        with open(self.csv, newline="") as f:
            return next(csv.reader(f))

    def rows(self) -> list[dict]:
        if not self.csv.is_file():
            return []
        with open(self.csv, newline="") as f:
            out = []
            for r in csv.DictReader(f):
                out.append({k: (int(v) if k == "step" else float(v)) for k, v in r.items() if v not in (None, "")})
            return out

    def finish(self, title: str = "", series: tuple[str, ...] = ("loss",)) -> None:
        """Write the JSON copy and the PNG (log-scale y when the values are all positive)."""
        if not self.enabled:
            return
        rows = self.rows()
        tmp = self.json.with_name(f".{self.json.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(rows))
        os.replace(tmp, self.json)
        plot_curves(rows, self.png, title=title, series=series)


def plot_curves(rows: list[dict], path: Path, title: str = "", series: tuple[str, ...] = ("loss",)) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    positive = True
    for name in series:
        pts = [(r["step"], r[name]) for r in rows if name in r and math.isfinite(r[name])]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, label=name, linewidth=1.2)
            positive &= min(ys) > 0
    if positive and rows:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
