"""Presenting a report: a terminal table, a Markdown table, and a PNG plot of time per frame against horizon."""
from __future__ import annotations

from pathlib import Path

_COLUMNS = ("sampler", "status", "s/frame (median)", "s/frame (p90)", "frames/s", "tokens/s", "peak RSS MiB",
            "CUDA MiB", "agreement")


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def rows(report: dict) -> list[list[str]]:
    """One row of strings per sampler, in the order of `_COLUMNS`."""
    out = []
    for s in report["samplers"]:
        timing = s["timing"] or {}
        agree = s["agreement"]
        if s["is_reference"]:
            agreement = "reference"
        elif agree["checked"]:
            agreement = f"{agree['fraction']:.2%}"
        else:
            agreement = "not checked"
        status = s["status"] if s["failure"] is None else f"FAILED ({s['failure']['kind']})"
        out.append([
            s["name"], status,
            _fmt(timing.get("seconds_per_frame_median"), ".3g"), _fmt(timing.get("seconds_per_frame_p90"), ".3g"),
            _fmt(timing.get("frames_per_second"), ".4g"), _fmt(timing.get("tokens_per_second"), ".4g"),
            _fmt(s["memory"]["peak_rss_mb"], ".0f"), _fmt(s["memory"]["cuda_max_allocated_mb"], ".0f"), agreement,
        ])
    return out


def _notes(report: dict) -> list[str]:
    notes = []
    for s in report["samplers"]:
        if s["failure"] is not None:
            where = f" on rank {s['failure']['rank']}" if s["failure"]["rank"] is not None else ""
            notes.append(f"{s['name']} failed ({s['failure']['kind']}{where}): {s['failure']['message']}")
        elif not s["is_reference"] and not s["agreement"]["checked"]:
            notes.append(f"{s['name']}: agreement not checked: {s['agreement']['reason']}")
    tf = report["teacher_forced"]
    if tf["ce_loss"] is None:
        notes.append(f"teacher-forced CE/accuracy not computed: {tf['reason']}")
    else:
        notes.append(f"teacher-forced CE {tf['ce_loss']:.4f} nats/token, accuracy {tf['accuracy']:.2%} "
                     f"over {tf['tokens']} tokens")
    return notes


def _header(report: dict) -> str:
    st, env = report["settings"], report["environment"]
    return (f"preset {st['preset']}, device {env['device']}{' (' + env['gpu'] + ')' if env['gpu'] else ''}, "
            f"{st['dtype']}, batch {st['batch_size']}, {st['steps']} MaskGIT steps, {st['prompt_frames']} prompt + "
            f"{st['new_frames']} new frames, {report['data']['windows_used']} windows, "
            f"{env['world_size']} rank(s)")


def terminal_table(report: dict) -> str:
    """The report as aligned plain text (header line, table, then one note per failure or missing metric)."""
    body = [list(_COLUMNS)] + rows(report)
    widths = [max(len(r[i]) for r in body) for i in range(len(_COLUMNS))]
    lines = [_header(report)]
    for k, r in enumerate(body):
        lines.append("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += [f"  * {n}" for n in _notes(report)]
    return "\n".join(lines)


def markdown_table(report: dict) -> str:
    """The report as a Markdown section: settings line, a table, and the notes as a list."""
    esc = lambda text: text.replace("|", "\\|")  # noqa: E731
    lines = [f"wmk-bench ({report['schema_version']}), {report['created_utc']}: {_header(report)}.", "",
             "| " + " | ".join(_COLUMNS) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(_COLUMNS) - 2)) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows(report)]
    lines += [""] + [f"- {esc(n)}" for n in _notes(report)]
    return "\n".join(lines) + "\n"


def plot_horizons(report: dict, path: Path) -> Path:
    """PNG: median seconds per frame against the number of new frames, one line per successful sampler."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    drawn = 0
    for s in report["samplers"]:
        if s["status"] != "ok" or not s["horizons"]:
            continue
        xs = [h["new_frames"] for h in s["horizons"]]
        ys = [h["seconds_per_frame_median"] for h in s["horizons"]]
        ax.plot(xs, ys, marker="o", label=s["name"] + (" (reference)" if s["is_reference"] else ""))
        drawn += 1
    if drawn:
        ax.set_yscale("log")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no sampler succeeded", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("new frames generated (horizon)")
    ax.set_ylabel("seconds per frame (median)")
    ax.set_title(_header(report), fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
