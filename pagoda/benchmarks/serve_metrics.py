"""Serving-benchmark metrics: per-request timings → vLLM's result block, JSON and sweep plot.

Invariants:
- `calculate_metrics` is pure: the same request results and duration give the same numbers.
- Times are kept in seconds inside `RequestResult` and reported in milliseconds, as vLLM does.
- Failed requests count only in `failed`; every other figure is over successful requests.
- TPOT of a request is (E2E − TTFT) / (output tokens − 1) and is defined only with ≥ 2 tokens;
  ITL is every gap between consecutive streamed chunks (a chunk may carry several tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

METRICS = ("ttft", "tpot", "itl", "e2el")
METRIC_TITLES = {
    "ttft": ("Time to First Token", "TTFT"),
    "tpot": ("Time per Output Token (excl. 1st token)", "TPOT"),
    "itl": ("Inter-token Latency", "ITL"),
    "e2el": ("End-to-end Latency", "E2EL"),
}


@dataclass
class RequestResult:
    """What the client saw of one request."""

    success: bool = False
    prompt_len: int = 0
    output_tokens: int = 0
    ttft: float = 0.0  # seconds from sending to the first streamed token
    latency: float = 0.0  # seconds from sending to the end of the stream
    itl: list[float] = field(default_factory=list)  # gaps between streamed chunks
    start_time: float = 0.0
    generated_text: str = ""
    error: str = ""


def _stats(name: str, values_s: list[float], percentiles: tuple[float, ...]) -> dict[str, float]:
    arr = np.asarray(values_s, dtype=float) * 1e3 if values_s else np.zeros(1)
    out = {
        f"mean_{name}_ms": float(arr.mean()),
        f"median_{name}_ms": float(np.median(arr)),
        f"std_{name}_ms": float(arr.std()),
    }
    for p in percentiles:
        out[f"p{_pname(p)}_{name}_ms"] = float(np.percentile(arr, p))
    return out


def _pname(p: float) -> str:
    return str(int(p)) if float(p).is_integer() else str(p)


def calculate_metrics(results: list[RequestResult], duration_s: float, percentiles: tuple[float, ...] = (99,)) -> dict[str, Any]:
    """vLLM's serving metrics over `results` measured during `duration_s` seconds."""
    ok = [r for r in results if r.success]
    total_in = sum(r.prompt_len for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    tpots = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    metrics: dict[str, Any] = {
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "duration": duration_s,
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(ok) / duration_s,
        "output_throughput": total_out / duration_s,
        "total_token_throughput": (total_in + total_out) / duration_s,
    }
    metrics.update(_stats("ttft", [r.ttft for r in ok], percentiles))
    metrics.update(_stats("tpot", tpots, percentiles))
    metrics.update(_stats("itl", [g for r in ok for g in r.itl], percentiles))
    metrics.update(_stats("e2el", [r.latency for r in ok], percentiles))
    return metrics


def format_result_block(m: dict[str, Any], percentiles: tuple[float, ...] = (99,), selected: tuple[str, ...] = METRICS,
                        request_rate: float | None = None, max_concurrency: int | None = None) -> str:
    """vLLM's `Serving Benchmark Result` block."""
    lines = ["{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=50, c="=")]

    def row(label: str, value: Any) -> None:
        lines.append("{:<40} {:<10}".format(label, f"{value:.2f}" if isinstance(value, float) else value))

    row("Successful requests:", m["completed"])
    if m.get("failed"):
        row("Failed requests:", m["failed"])
    if max_concurrency is not None:
        row("Maximum request concurrency:", max_concurrency)
    if request_rate is not None:
        row("Request rate (req/s):", "inf" if request_rate == float("inf") else float(request_rate))
    row("Benchmark duration (s):", float(m["duration"]))
    row("Total input tokens:", m["total_input_tokens"])
    row("Total generated tokens:", m["total_output_tokens"])
    row("Request throughput (req/s):", float(m["request_throughput"]))
    row("Output token throughput (tok/s):", float(m["output_throughput"]))
    row("Total Token throughput (tok/s):", float(m["total_token_throughput"]))
    for key in selected:
        title, short = METRIC_TITLES[key]
        lines.append("{s:{c}^{n}}".format(s=title, n=50, c="-"))
        row(f"Mean {short} (ms):", m[f"mean_{key}_ms"])
        row(f"Median {short} (ms):", m[f"median_{key}_ms"])
        for p in percentiles:
            row(f"P{_pname(p)} {short} (ms):", m[f"p{_pname(p)}_{key}_ms"])
    lines.append("=" * 50)
    return "\n".join(lines)


def plot_sweep(points: list[dict[str, Any]], sweep_name: str, path: str, percentiles: tuple[float, ...] = (50, 99)) -> str:
    """PNG of output throughput against TTFT and TPOT percentiles, one point per swept value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    xs = [p["metrics"]["output_throughput"] for p in points]
    for ax, key in zip(axes, ("ttft", "tpot")):
        for pct in percentiles:
            name = "median" if pct == 50 else f"p{_pname(pct)}"
            ys = [p["metrics"].get(f"{name}_{key}_ms", np.nan) for p in points]
            ax.plot(xs, ys, marker="o", label=f"{name} {key.upper()}")
            if pct == percentiles[-1]:
                for x, y, p in zip(xs, ys, points):
                    ax.annotate(f"{sweep_name}={p['value']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel("output throughput (tok/s)")
        ax.set_ylabel(f"{key.upper()} (ms)")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(f"serving sweep over {sweep_name}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
