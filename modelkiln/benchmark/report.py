"""Rendering a `modelkiln.bench()` report: a text table, a markdown table, a PNG plot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modelkiln.errors import UserInputError


def subject_label(report: Mapping[str, Any], subject_id: str) -> str:
    for s in report["subjects"]:
        if s["id"] == subject_id:
            if s["kind"] == "baseline":
                return "PyTorch" if s["runtime"].startswith("PyTorch") else "ONNX source"
            if s["kind"] == "reference":
                return "OpenVINO direct (ov.convert_model)"
            if s["kind"] == "peer":
                return f"{s['id']} (peer, onnxruntime)"
            return f"{s['id']} ({s['target']}, {s['precision']})"
    return subject_id


def _rows(report: Mapping[str, Any], markdown: bool) -> tuple[list[str], list[list[str]]]:
    speedups = {(c["subject"], _key(c["dims"])): c["speedup_p50"] for c in report["comparisons"]}
    has_seq = any(r["sequence"] is not None for r in report["results"])
    head = ["subject", "batch", *(["seq"] if has_seq else [])]
    head += ["p50 ms", "min ms", "p90 ms", "p99 ms", "items/s", "round spread", "peak MB"]
    if report["comparisons"]:
        head.append("vs PyTorch")
    rows = []
    for r in report["results"]:
        lat = r["latency_ms"]
        row = [
            subject_label(report, r["subject"]),
            _n(r["batch"]),
            *([_n(r["sequence"])] if has_seq else []),
            _ms(lat["p50"]),
            _ms(lat["min"]),
            _ms(lat["p90"]),
            _ms(lat["p99"]),
            f"{r['throughput_items_per_s']:,.1f}",
            f"±{r['rounds']['spread_pct'] / 2:.1f}%",
            "–" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:,.0f}",
        ]
        if report["comparisons"]:
            speedup = speedups.get((r["subject"], _key(r["dims"])))
            row.append("" if speedup is None else f"{speedup:.2f}×")
        if markdown:
            row = [c.replace("|", "\\|") for c in row]
        rows.append(row)
    return head, rows


def text_table(report: Mapping[str, Any]) -> str:
    """Aligned columns for a terminal, then the load times and what the columns mean."""
    head, rows = _rows(report, markdown=False)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    left = {0}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [line(head), line(["-" * w for w in widths]), *(line(r) for r in rows), ""]
    for s in report["subjects"]:
        memory = "" if s.get("load_rss_mb") is None else f", +{s['load_rss_mb']:,.0f} MB resident"
        out.append(
            f"{subject_label(report, s['id'])}: loaded in {s['load_s']:.2f}s{memory} "
            f"(imports {s['import_s']:.2f}s), {s['threads']} threads"
        )
    settings = report["settings"]
    out.append(
        f"{settings['rounds']} interleaved rounds, {settings['min_time_s']:g}s measured per "
        f"configuration after {settings['warmup']} warm-up run(s); min ms: the fastest "
        "single run; round spread: ± half the range of the per-round medians; peak MB: memory "
        "the subject added, at its highest during its first run at that size"
    )
    out += [f"note: {n}" for n in report["notes"]]
    return "\n".join(out)


def markdown_table(report: Mapping[str, Any]) -> str:
    head, rows = _rows(report, markdown=True)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def check_plot_available() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserInputError(
            "--plot needs matplotlib: pip install 'modelkiln[bench]' (or pip install matplotlib)"
        ) from None


def plot(report: Mapping[str, Any], path: str | Path) -> None:
    """p50 latency per configuration (bar up to p50, whisker to p90), and the speedup of
    every artifact over the baseline. Uses matplotlib's object API, no global pyplot state."""
    check_plot_available()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogLocator, ScalarFormatter

    results = report["results"]
    subjects = list(dict.fromkeys(r["subject"] for r in results))
    keys = list(dict.fromkeys(_key(r["dims"]) for r in results))
    colors = {s: f"C{i}" for i, s in enumerate(subjects)}
    comparisons = report["comparisons"]
    panels = 2 if comparisons else 1
    fig = Figure(figsize=(6.0 * panels, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for subject in subjects:
        by_key = {_key(r["dims"]): r for r in results if r["subject"] == subject}
        xs = [i for i, k in enumerate(keys) if k in by_key]
        p50 = [by_key[keys[i]]["latency_ms"]["p50"] for i in xs]
        p90 = [by_key[keys[i]]["latency_ms"]["p90"] for i in xs]
        whisker = [[0.0] * len(p50), [b - a for a, b in zip(p50, p90, strict=True)]]
        axes[0].errorbar(
            xs,
            p50,
            yerr=whisker,
            marker="o",
            capsize=3,
            color=colors[subject],
            label=subject_label(report, subject),
        )
    axes[0].set_xticks(range(len(keys)), [_short(k) for k in keys])
    axes[0].set_yscale("log")
    axes[0].yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axes[0].yaxis.set_major_formatter(ScalarFormatter())
    axes[0].grid(True, which="major", axis="y", alpha=0.3)
    axes[0].set_ylabel("ms per run: p50, whisker to p90 (log scale)")
    axes[0].set_title("Latency by configuration")
    axes[0].legend(fontsize="small")
    if comparisons:
        artifacts = list(dict.fromkeys(c["subject"] for c in comparisons))
        width = 0.8 / len(artifacts)
        for j, subject in enumerate(artifacts):
            rows = {_key(c["dims"]): c for c in comparisons if c["subject"] == subject}
            positions = [
                i + (j - (len(artifacts) - 1) / 2) * width for i, k in enumerate(keys) if k in rows
            ]
            ys = [rows[k]["speedup_p50"] for k in keys if k in rows]
            bars = axes[1].bar(
                positions, ys, width, color=colors[subject], label=subject_label(report, subject)
            )
            axes[1].bar_label(bars, fmt="%.2f×", fontsize="small")
        axes[1].axhline(1.0, color="black", linewidth=0.8)
        axes[1].set_xticks(range(len(keys)), [_short(k) for k in keys])
        axes[1].set_ylabel("PyTorch p50 / artifact p50")
        axes[1].set_title("Speedup over PyTorch (above 1: artifact faster)")
        axes[1].legend(fontsize="small")
    machine = report["machine"]
    fig.suptitle(
        f"{machine['cpu_model']}, {report['settings']['threads']} threads", fontsize="small"
    )
    fig.savefig(str(path), dpi=110)


def _key(dims: Mapping[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in dims.items())


def _short(key: str) -> str:
    return key.replace("batch=", "b").replace("sequence=", "s").replace(" ", "\n")


def _n(value: Any) -> str:
    return "–" if value is None else str(value)


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 1 else (f"{value:.2f}" if value < 100 else f"{value:.1f}")
