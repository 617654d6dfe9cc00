"""Draw locust's history CSV as a PNG: latency percentiles against throughput, with failures.

    python -m loadtest.plot .squall/load/run   (reads run_stats_history.csv, writes run.png)
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path


def main(prefix: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in csv.DictReader(open(f"{prefix}_stats_history.csv")) if r["Name"] == "Aggregated"]
    rows = [r for r in rows if r["Requests/s"] not in ("", "0", "0.000000")]
    rps = [float(r["Requests/s"]) for r in rows]
    failures = [float(r["Failures/s"]) for r in rows]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for pct, style in (("50%", "o-"), ("95%", "s--"), ("99%", "^:")):
        points = sorted((x, float(r[pct])) for x, r in zip(rps, rows) if r[pct] not in ("", "N/A"))
        ax.plot([p[0] for p in points], [p[1] for p in points], style, markersize=3, label=f"p{pct[:-1]} latency")
    ax.set_xlabel("throughput (requests/s, all scenarios)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax2 = ax.twinx()
    ax2.scatter(rps, failures, color="red", s=8, label="failures/s")
    ax2.set_ylabel("failures/s", color="red")
    lines, labels = ax.get_legend_handles_labels()
    l2, lab2 = ax2.get_legend_handles_labels()
    ax.legend(lines + l2, labels + lab2, loc="upper left")
    ax.set_title("Squall under locust: latency percentiles against throughput")
    out = Path(f"{prefix}.png")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"plot written to {out}")
    return out


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".squall/load/run")
