"""What a run leaves behind: `trace.json` (per frame: time, phase, member, threads, backend, latency,
deadline met, the member's accuracy, whether the prediction was right; plus the options, the phases as
planned and as they happened, the event log and a summary), `trace.png` (latency against the deadline
over time, switches marked, competitor phases shaded: Dynamic-OFA's Fig. 7 style) and a summary table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_write, write_json


@dataclass
class Trace:
    policy: str
    fps: float
    options: list[dict[str, Any]]
    phases: list[dict[str, Any]]
    frames: dict[str, list]          # column-wise: t, phase, option, latency_ms, deadline_ms, decision_us, correct
    events: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    dropped: dict[str, list] = field(default_factory=lambda: {"t": [], "phase": []})  # frames never served

    @classmethod
    def from_run(cls, manager, runner, correct: list[bool], fps: float, dropped=()) -> "Trace":
        """`dropped`: release times (`time.perf_counter`) of the frames the stream skipped while busy."""
        t_start = runner.t_start
        r = manager.records
        n = min(len(r), len(correct))
        cols = {
            "t": [round(v - t_start, 6) for v in r.t[:n]],
            "phase": [runner.phase_at(v) for v in r.t[:n]],
            "option": list(r.option[:n]),
            "latency_ms": [round(v, 4) for v in r.latency_ms[:n]],
            "deadline_ms": list(r.deadline_ms[:n]),
            "decision_us": [round(v, 2) for v in r.decision_us[:n]],
            **({"decision_cpu_us": [round(v, 2) for v in r.decision_cpu_us[:n]]} if manager.serving.record_cpu else {}),
            "correct": correct[:n],
        }
        events = []
        for e in manager.events:
            if e["t"] >= t_start - 1.0 and e["kind"] != "profiled":
                events.append({**e, "t": round(e["t"] - t_start, 6)})
        desc = manager.describe()
        drops = {"t": [round(v - t_start, 6) for v in dropped], "phase": [runner.phase_at(v) for v in dropped]}
        return cls(policy=manager.policy.name, fps=fps, options=desc["options"], phases=runner.describe()["phases"],
                   frames=cols, events=events, dropped=drops,
                   meta={"targets": desc["targets"], "members": desc["members"], "origin": desc["origin"],
                         "policy": desc["policy"], "scenario": runner.scenario.name, "duration_s": runner.duration_s,
                         "platform": desc["platform"]})

    # --- derived ------------------------------------------------------------------------------------
    def column(self, name: str) -> np.ndarray:
        return np.asarray(self.frames[name])

    def top1_per_frame(self) -> np.ndarray:
        top = np.asarray([o["top1"] for o in self.options])
        return top[self.column("option")] if len(self.frames["option"]) else np.zeros(0)

    def n_dropped(self, phase: int | None = None) -> int:
        ph = self.dropped.get("phase", [])
        return len(ph) if phase is None else sum(1 for p in ph if p == phase)

    def summary(self, phase: int | None = None) -> dict[str, Any]:
        """`on_time`: the frames served by their deadline over all frames released (served + `dropped`);
        `mean_top1` and the latency percentiles: over the frames served."""
        lat, dl = self.column("latency_ms"), self.column("deadline_ms")
        opt = self.column("option")
        sel = np.ones(len(lat), bool) if phase is None else self.column("phase") == phase
        if not sel.any():
            return {"frames": 0, "dropped": self.n_dropped(phase)}
        met = lat[sel] <= dl[sel]
        dropped = self.n_dropped(phase)
        sw = int(np.count_nonzero(opt[1:] != opt[:-1])) if phase is None else \
            int(np.count_nonzero((opt[1:] != opt[:-1]) & sel[1:]))
        dec = self.column("decision_us")[sel]  # wall time of the manager's own spans (monitors + policy)
        cpu = self.column("decision_cpu_us")[sel] if "decision_cpu_us" in self.frames else None
        return {"frames": int(sel.sum()), "dropped": dropped, "on_time": float(met.sum() / (len(met) + dropped)),
                "mean_top1": float(self.top1_per_frame()[sel].mean()),
                "p50_ms": float(np.percentile(lat[sel], 50)), "p95_ms": float(np.percentile(lat[sel], 95)),
                "p99_ms": float(np.percentile(lat[sel], 99)), "switches": sw,
                "accuracy_measured": float(np.mean(self.column("correct")[sel])) * 100.0,
                "decision_p50_us": float(np.percentile(dec, 50)), "decision_p99_us": float(np.percentile(dec, 99)),
                "decision_max_us": float(dec.max()),
                "decision_cpu_p99_us": None if cpu is None else float(np.percentile(cpu, 99))}

    def to_json(self) -> dict[str, Any]:
        return {"format": "dynadnn.trace/1", "policy": self.policy, "fps": self.fps, "meta": self.meta,
                "options": self.options, "phases": self.phases,
                "summary": self.summary(),
                "phase_summary": [self.summary(p["index"]) | {"name": p["name"]} for p in self.phases],
                "frames": self.frames, "dropped": self.dropped, "events": self.events}

    # --- files -------------------------------------------------------------------------------------
    def write(self, out_dir: str | Path, name: str = "trace") -> tuple[Path, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        jpath = write_json(out / f"{name}.json", self.to_json(), default=_jsonable)
        ppath = plot_traces([self], out / f"{name}.png")
        return jpath, ppath


def _jsonable(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def plot_traces(traces: list[Trace], path: str | Path) -> Path:
    """One panel per trace: latency per frame (dots coloured by member), the deadline, switches as ticks
    and competitor phases shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(traces), 1, figsize=(11, 2.6 * len(traces) + 0.6), sharex=True, squeeze=False)
    shades = ["#ffffff", "#fde8c8", "#f9c08a", "#f08a5d", "#d9534f"]
    for ax, tr in zip(axes[:, 0], traces):
        t, lat, dl = tr.column("t"), tr.column("latency_ms"), tr.column("deadline_ms")
        opt = tr.column("option")
        for ph in tr.phases:
            a, b = ph["planned_s"]
            ncomp = len(ph["competitors"])
            ax.axvspan(a, b, color=shades[min(ncomp, len(shades) - 1)], alpha=0.6, lw=0)
            ax.text((a + b) / 2, 1.0, ph["name"], transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                    fontsize=7)
        members = np.asarray([tr.options[i]["member"] for i in opt]) if len(opt) else np.zeros(0)
        sc = ax.scatter(t, lat, c=members, s=3, cmap="viridis", vmin=0, vmax=max(1, max(o["member"] for o in tr.options)))
        ax.plot(t, dl, color="crimson", lw=1.0, label="deadline")
        sw = np.nonzero(opt[1:] != opt[:-1])[0] + 1 if len(opt) > 1 else []
        for k in sw:
            ax.axvline(t[k], color="k", lw=0.4, alpha=0.35)
        s = tr.summary()
        ax.set_ylabel("latency (ms)")
        top = max(float(np.percentile(lat, 99.5)) if len(lat) else 1.0, float(dl.max()) if len(dl) else 1.0) * 1.3
        ax.set_ylim(0, top)
        if tr.dropped["t"]:  # frames never served: marked along the top
            ax.scatter(tr.dropped["t"], [top * 0.97] * len(tr.dropped["t"]), marker="|", s=8, color="crimson", lw=0.5)
        ax.set_title(f"{tr.policy}: on time {s.get('on_time', 0):.3f}, mean top-1 {s.get('mean_top1', 0):.2f} %, "
                     f"p95 {s.get('p95_ms', 0):.2f} ms, {s.get('switches', 0)} switches", fontsize=9, loc="left")
        fig.colorbar(sc, ax=ax, pad=0.01, label="member")
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return path


# the summary table's columns: header, the summary's key (None: the policy's name), format; units in the caption
SUMMARY_COLUMNS = (("policy", None, "{}"), ("frames", "frames", "{}"), ("on time", "on_time", "{:.4f}"),
                   ("top-1", "mean_top1", "{:.2f}"), ("acc", "accuracy_measured", "{:.2f}"), ("p50", "p50_ms", "{:.2f}"),
                   ("p95", "p95_ms", "{:.2f}"), ("p99", "p99_ms", "{:.2f}"), ("switch", "switches", "{}"),
                   ("dec p99", "decision_p99_us", "{:.1f}"))
NARROW = 100  # below this console width: no p50 column, no vertical rules


def print_summary(traces: list[Trace], console=None, title: str = "runtime manager") -> None:
    """One row per policy. Short headers, units in the caption: readable in an 80-column terminal (there
    the p50 column is left out and the table drawn without vertical rules)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    narrow = console.width < NARROW
    cols = [c for c in SUMMARY_COLUMNS if not (narrow and c[1] == "p50_ms")]
    table = Table(title=title, box=box.SIMPLE_HEAD if narrow else box.HEAVY_HEAD, pad_edge=not narrow,
                  caption="top-1: the member's accuracy, acc: measured on the frames (%); p50/p95/p99: latency (ms); "
                          "dec p99: the manager's time per frame (us)" if not narrow else
                          "top-1, acc: %; p95, p99: latency ms; dec p99: manager us per frame")
    for i, (head, _, _) in enumerate(cols):
        table.add_column(head, justify="left" if i == 0 else "right", no_wrap=True)
    for tr in traces:
        s = tr.summary()
        if not s["frames"]:  # a run too short or too slow for one frame
            table.add_row(tr.policy, "0", *["-"] * (len(cols) - 2))
            continue
        table.add_row(*[tr.policy if key is None else fmt.format(s[key]) for _, key, fmt in cols])
    console.print(table)


def tradeoff(traces: list[Trace]) -> list[str]:
    """The run's trade-off in words: how often static (the most accurate member, never switching) is on
    time, and what each other policy gives up in accuracy for what it gains in on-time frames."""
    s = {tr.policy: tr.summary() for tr in traces if tr.summary()["frames"]}
    if "static" not in s:
        return []
    st = s["static"]
    lines = [f"static (most accurate, never switches): on time {st['on_time']:.1%}, top-1 {st['mean_top1']:.2f} %"]
    for name, p in s.items():
        if name == "static":
            continue
        lines.append(f"{name}: on time {p['on_time']:.1%} ({(p['on_time'] - st['on_time']) * 100:+.1f} points), top-1 "
                     f"{p['mean_top1']:.2f} % ({p['mean_top1'] - st['mean_top1']:+.2f}), {p['switches']} switches")
    if "feedback" in s and "oracle" in s:
        lines.append(f"feedback vs oracle (knows the schedule): top-1 {s['feedback']['mean_top1'] - s['oracle']['mean_top1']:+.2f}"
                     f" points, on time {(s['feedback']['on_time'] - s['oracle']['on_time']) * 100:+.1f} points")
    return lines
