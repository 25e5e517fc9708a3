"""The plan's reports: ``report.md`` and one self-contained ``report.html`` (plots embedded as data URIs).

Sections (each an ``<section id=...>`` in the HTML, a ``##`` heading in Markdown): ``leaderboard`` (the
ranking with predicted score, evidence spread and the evidence: nearest profiled datasets and where each
model won; per candidate its license, lineage and memory verdict against the budget, and the shortlist of
the candidates that fit), ``memory`` (every method's low/expected/high estimate against the budget, as a table and a bar
chart with the budget line; the measured peak after a run), ``bits`` (the per-layer bit-width plot),
``method`` (the chosen method, its config and why; why each other method was not chosen), and after
:meth:`~mandc.plan.Plan.run` ``run`` (loss curve, before/after samples, predicted vs measured).

Every string that comes from a user, a dataset or a model card (captions, model names, reasons, notes) is
HTML-escaped, in Markdown too, so a ``<script>`` in a card renders as text.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from mandc.sizes import fmt_bytes, fmt_score


def write_reports(plan, out_dir) -> dict[str, Path]:
    """Write ``report.md`` and ``report.html`` for ``plan`` into ``out_dir``; returns their paths."""
    from data.io import atomic_write

    out = Path(out_dir)
    figs = _figures(plan, out)
    md = atomic_write(out / "report.md", to_markdown(plan))
    page = atomic_write(out / "report.html", to_html(plan, figs))
    return {"markdown": md, "html": page}


def _e(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _md(x) -> str:
    """A Markdown table cell: HTML-escaped, pipes and newlines neutralised."""
    return _e(x).replace("|", "&#124;").replace("\n", " ")


def _lineage_text(c) -> str:
    """``finetune of hub:a/b; adapter of hub:c/d`` (unescaped), or ``—``."""
    edges = c.get("lineage") or []
    return "; ".join(f"{e.get('relation')} of {e.get('base')}" for e in edges) or "—"


def _fit_text(c, budget: int) -> str:
    """A candidate's memory verdict against the budget (unescaped)."""
    r = c.get("memory")
    if not r:
        return c.get("memory_note") or "not estimated"
    at = f" at {r['bits']} bits" if r.get("bits") else ""
    verdict = "fits" if r["fits"] else "does not fit"
    return (f"{r['method']}{at}: high {fmt_bytes(r['high_bytes'])} (expected {fmt_bytes(r['expected_bytes'])}) "
            f"of {fmt_bytes(budget)}, {verdict}")


def _params_text(c) -> str:
    n = c.get("params")
    return "—" if not n else f"{n / 1e6:.3g}M ({c.get('params_of') or 'denoiser'})"


# ------------------------------------------------------------------------------------------ figures
def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _figures(plan, out: Path) -> dict[str, bytes]:
    """PNG bytes of the report's plots (also written beside the report as ``*.png``)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figs: dict[str, bytes] = {}
    # memory of every method against the budget
    methods = list(plan.memory)
    fig, ax = plt.subplots(figsize=(7.5, 3.6), dpi=110)
    exp = [plan.memory[m]["expected_bytes"] / 2**30 for m in methods]
    lo = [(plan.memory[m]["expected_bytes"] - plan.memory[m]["low_bytes"]) / 2**30 for m in methods]
    hi = [(plan.memory[m]["high_bytes"] - plan.memory[m]["expected_bytes"]) / 2**30 for m in methods]
    colors = ["#4C72B0" if plan.memory[m]["fits"] else "#C44E52" for m in methods]
    ax.bar(range(len(methods)), exp, yerr=[lo, hi], color=colors, capsize=4, label="estimate (low–high)")
    ax.axhline(plan.budget_bytes / 2**30, color="black", linestyle="--", label=f"budget {fmt_bytes(plan.budget_bytes)}")
    if plan.result and plan.result.get("measured_peak_bytes") is not None:
        i = methods.index(plan.method)
        ax.scatter([i], [plan.result["measured_peak_bytes"] / 2**30], color="#55A868", marker="D", s=50, zorder=4,
                   label="measured peak")
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels([f"{m}\n{plan.memory[m]['bits']}b" if plan.memory[m].get("bits") else m for m in methods],
                       fontsize=8)
    ax.set_ylabel("peak memory (GiB)")
    ax.set_title(f"peak memory per method on {plan.model} ({plan.device}); red: does not fit", fontsize=9)
    ax.legend(fontsize=7)
    figs["memory"] = _png(fig)
    if plan.bitplan:
        from profiler.mpq.bitplan import BitPlan
        from profiler.mpq.plot import plot_bitplan

        path = plot_bitplan(BitPlan.from_dict(plan.bitplan, "the plan's bitplan"), out / "bits.png",
                            title=f"per-layer bits for {plan.model}")
        figs["bits"] = Path(path).read_bytes()
    if plan.result and plan.result.get("losses"):
        losses = plan.result["losses"]
        fig, ax = plt.subplots(figsize=(7.5, 3.0), dpi=110)
        ax.plot(range(1, len(losses) + 1), losses, color="#4C72B0", alpha=0.35, lw=0.8, label="training loss")
        k = max(1, len(losses) // 20)
        smooth = [sum(losses[max(0, i - k + 1): i + 1]) / len(losses[max(0, i - k + 1): i + 1]) for i in range(len(losses))]
        ax.plot(range(1, len(losses) + 1), smooth, color="#4C72B0", lw=1.8, label=f"mean of {k}")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=7)
        figs["loss"] = _png(fig)
    if plan.result and plan.result.get("samples") and Path(plan.result["samples"]).is_file():
        figs["samples"] = Path(plan.result["samples"]).read_bytes()
    for name, data in figs.items():
        if name in ("memory", "loss"):
            (out / f"{name}.png").write_bytes(data)
    return figs


# ------------------------------------------------------------------------------------------ Markdown
def to_markdown(plan) -> str:
    L = [f"# Plan for `{_md(plan.dataset['ref'])}`", "",
         f"Budget {fmt_bytes(plan.budget_bytes)} on {_md(plan.device)}, goal {_md(plan.goal)}. "
         f"Chosen: **{_md(plan.model)}** with **{_md(plan.method)}**.", "", "## Leaderboard", "",
         f"Ranking: {_md(plan.recommendation.get('source', 'predicted'))} (higher score is better; spread: "
         "similarity-weighted spread of the model's measured scores on the nearest profiled datasets).", "",
         "| rank | model | score | spread | why | license | lineage | params | memory (best method that fits) |",
         "|---:|---|---:|---:|---|---|---|---:|---|"]
    for c in plan.candidates:
        sp = "—" if c.get("spread") is None else f"±{c['spread']:.3f}"
        desc = f" — {_md(c['description'])}" if c.get("description") else ""
        L.append(f"| {c['rank']} | `{_md(c['model'])}`{desc} | {fmt_score(c['score'], c.get('interval'))} | {sp} | {_md(c.get('why'))} | "
                 f"{_md(c.get('license') or '—')} | {_md(_lineage_text(c))} | {_md(_params_text(c))} | "
                 f"{_md(_fit_text(c, plan.budget_bytes))} |")
    contenders = plan.recommendation.get("contenders") or []
    if len(contenders) > 1:
        L += ["", f"**The top {len(contenders)} overlap**: " + ", ".join(f"`{_md(m)}`" for m in contenders)
              + " are within the cross-validated margin of each other (score ± half of it above): probe these before "
                "committing GPU hours."]
    if any("memory" in c for c in plan.candidates):
        L += ["", f"Shortlist (ranked candidates whose memory estimate, from configs and safetensors headers alone, "
                  f"fits {fmt_bytes(plan.budget_bytes)}): "
              + (", ".join(f"`{_md(m)}`" for m in plan.shortlist) or "none")]
    near = plan.recommendation.get("nearest") or []
    if near:
        L += ["", "Nearest profiled datasets: " + ", ".join(
            f"`{_md(n['dataset'])}` (similarity {n['similarity']:.2f}, best `{_md(n['winner'])}`)" for n in near)]
    L += ["", "## Memory", "", f"Budget: {fmt_bytes(plan.budget_bytes)}. A method fits when its high estimate does.", "",
          "| method | bits | low | expected | high | fits |", "|---|---:|---:|---:|---:|---|"]
    for m, r in plan.memory.items():
        L.append(f"| {'**' + _md(m) + '**' if m == plan.method else _md(m)} | {r.get('bits') or '—'} | "
                 f"{fmt_bytes(r['low_bytes'])} | {fmt_bytes(r['expected_bytes'])} | {fmt_bytes(r['high_bytes'])} | "
                 f"{'yes' if r['fits'] else 'no'} |")
    L += ["", "![memory](memory.png)", "", "## Bits", ""]
    if plan.bitplan:
        u = plan.bitplan.get("usage") or {}
        L += [f"Per-layer bit plan: {len(plan.bitplan.get('layers', {}))} layers, average "
              f"{u.get('avg_bits', float('nan')):.2f} weight bits (allocator "
              f"{_md((plan.bitplan.get('settings') or {}).get('allocator', '?'))}).", "", "![bits](bits.png)"]
    else:
        L.append(f"No per-layer bit plan: {_md(plan.method)} does not take one.")
    L += ["", "## Method", "", f"`{_md(plan.method)}` with `{_md(json.dumps(_shown_config(plan)))}`.", ""]
    L += [f"- {_md(r)}" for r in plan.reasons]
    if plan.fallback:
        L += ["", "Fallback order: " + ", ".join(f"`{_md(m)}`" for m in plan.fallback)]
    if plan.result:
        r = plan.result
        L += ["", "## Run", "", f"- held-out loss {r['heldout_loss_before']:.4f} → {r['heldout_loss_after']:.4f} "
              f"after {r['steps']} steps" if r.get("heldout_loss_before") is not None else "- held-out loss not measured",
              f"- measured peak {fmt_bytes(r['measured_peak_bytes'])} ({_md(r['mem_method'])}) against the estimate "
              f"{fmt_bytes(r['estimate_expected_bytes'])} (high {fmt_bytes(r['estimate_high_bytes'])}): "
              f"{'within' if r['within_high'] else 'ABOVE'} the high bound",
              f"- predicted score {plan.predicted_score:.3f}; measured rank "
              f"{_rank_text(r.get('measured_rank'))}", "", "![loss](loss.png)"]
        if r.get("samples"):
            L += ["", "Samples (top: before, bottom: after fine-tuning):", "", "![samples](samples.png)"]
    return "\n".join(L) + "\n"


def _rank_text(mr) -> str:
    if not mr or mr.get("rank") is None:
        return "—"
    return f"{mr['rank']} of {mr['of']} measured (predicted rank {mr.get('predicted_rank')})"


def _shown_config(plan) -> dict:
    return {k: v for k, v in plan.config.items() if k != "plan"}


# ------------------------------------------------------------------------------------------ HTML
_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#222;padding:0 1rem}h1{font-size:1.5rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;width:100%;font-size:.9rem}th,td{border:1px solid #ddd;padding:.3rem .5rem;
text-align:left;vertical-align:top}th{background:#f3f3f3}tr.chosen{background:#eef5ff}td.num{text-align:right}
img{max-width:100%;border:1px solid #eee}.no{color:#b00}.yes{color:#070}code{background:#f5f5f5;padding:0 .2rem}"""


def _img(figs, name, alt) -> str:
    if name not in figs:
        return ""
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(figs[name]).decode()}">'


def to_html(plan, figs: dict[str, bytes] | None = None) -> str:
    figs = figs or {}
    H = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
         f"<title>mandc plan: {_e(plan.dataset['ref'])}</title><style>{_CSS}</style></head><body>",
         f"<h1>Plan for <code>{_e(plan.dataset['ref'])}</code></h1>",
         f"<p>Budget <b>{_e(fmt_bytes(plan.budget_bytes))}</b> on {_e(plan.device)}, goal {_e(plan.goal)}. "
         f"Chosen: <b>{_e(plan.model)}</b> with <b>{_e(plan.method)}</b>. "
         f"Dataset fingerprint {_e(plan.dataset.get('fingerprint'))}, {_e(plan.dataset.get('n_train'))} training images.</p>",
         '<section id="leaderboard"><h2>Leaderboard</h2>',
         f"<p>Ranking {_e(plan.recommendation.get('source', 'predicted'))}; higher score is better. Spread: the "
         "similarity-weighted spread of the model's measured scores on the nearest profiled datasets.</p>",
         "<table><tr><th>rank</th><th>model</th><th>score</th><th>spread</th><th>evidence</th><th>license</th>"
         "<th>lineage</th><th>params</th><th>memory (best method that fits)</th></tr>"]
    for c in plan.candidates:
        sp = "—" if c.get("spread") is None else f"±{c['spread']:.3f}"
        cls = ' class="chosen"' if c["model"] == plan.model else ""
        desc = f"<br><small>{_e(c['description'])}</small>" if c.get("description") else ""
        fit = c.get("feasible")
        fit_cls = "" if fit is None else ' class="yes"' if fit else ' class="no"'
        H.append(f"<tr{cls}><td class=num>{c['rank']}</td><td><code>{_e(c['model'])}</code>{desc}</td>"
                 f"<td class=num>{_e(fmt_score(c['score'], c.get('interval')))}</td><td class=num>{_e(sp)}</td><td>{_e(c.get('why'))}</td>"
                 f"<td>{_e(c.get('license') or '—')}</td><td>{_e(_lineage_text(c))}</td>"
                 f"<td class=num>{_e(_params_text(c))}</td><td{fit_cls}>{_e(_fit_text(c, plan.budget_bytes))}</td></tr>")
    H.append("</table>")
    contenders = plan.recommendation.get("contenders") or []
    if len(contenders) > 1:
        H.append(f'<p id="overlap" class="warn"><b>The top {len(contenders)} overlap</b>: '
                 + ", ".join(f"<code>{_e(m)}</code>" for m in contenders)
                 + " are within the cross-validated margin of each other (score ± half of it): probe these before "
                   "committing GPU hours.</p>")
    if any("memory" in c for c in plan.candidates):
        H.append(f'<p id="shortlist">Shortlist (ranked candidates whose memory estimate, from configs and safetensors '
                 f"headers alone, fits {_e(fmt_bytes(plan.budget_bytes))}): "
                 + (", ".join(f"<code>{_e(m)}</code>" for m in plan.shortlist) or "none") + "</p>")
    near = plan.recommendation.get("nearest") or []
    if near:
        H.append("<p>Nearest profiled datasets: " + ", ".join(
            f"<code>{_e(n['dataset'])}</code> (similarity {n['similarity']:.2f}, best <code>{_e(n['winner'])}</code>)"
            for n in near) + "</p>")
    notes = plan.recommendation.get("notes") or []
    if notes:
        H.append("<ul>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    H += ["</section>", '<section id="memory"><h2>Memory</h2>',
          f"<p>A method fits when its <b>high</b> estimate is within the budget of {_e(fmt_bytes(plan.budget_bytes))}.</p>",
          "<table><tr><th>method</th><th>bits</th><th>low</th><th>expected</th><th>high</th><th>fits</th></tr>"]
    for m, r in plan.memory.items():
        cls = ' class="chosen"' if m == plan.method else ""
        fit = '<span class="yes">yes</span>' if r["fits"] else '<span class="no">no</span>'
        H.append(f"<tr{cls}><td>{_e(m)}</td><td class=num>{_e(r.get('bits') or '—')}</td>"
                 + "".join(f"<td class=num>{_e(fmt_bytes(r[k]))}</td>" for k in ("low_bytes", "expected_bytes", "high_bytes"))
                 + f"<td>{fit}</td></tr>")
    H += ["</table>", _img(figs, "memory", "memory of every method against the budget"), "</section>",
          '<section id="bits"><h2>Bits per layer</h2>']
    if plan.bitplan:
        u = plan.bitplan.get("usage") or {}
        H.append(f"<p>Per-layer bit plan: {len(plan.bitplan.get('layers', {}))} layers, average "
                 f"{_e(round(u.get('avg_bits', float('nan')), 2))} weight bits (allocator "
                 f"<code>{_e((plan.bitplan.get('settings') or {}).get('allocator', '?'))}</code>).</p>")
        H.append(_img(figs, "bits", "per-layer bit widths"))
    else:
        H.append(f"<p>No per-layer bit plan: {_e(plan.method)} does not take one.</p>")
    H += ["</section>", '<section id="method"><h2>Method</h2>',
          f"<p><code>{_e(plan.method)}</code> with <code>{_e(json.dumps(_shown_config(plan)))}</code></p>",
          "<ul>" + "".join(f"<li>{_e(r)}</li>" for r in plan.reasons) + "</ul>"]
    if plan.fallback:
        H.append("<p>Fallback order: " + ", ".join(f"<code>{_e(m)}</code>" for m in plan.fallback) + "</p>")
    H.append("</section>")
    if plan.result:
        r = plan.result
        H += ['<section id="run"><h2>Run</h2><ul>']
        if r.get("heldout_loss_before") is not None:
            H.append(f"<li>held-out loss {r['heldout_loss_before']:.4f} → {r['heldout_loss_after']:.4f} after "
                     f"{_e(r['steps'])} steps</li>")
        H.append(f"<li>measured peak {_e(fmt_bytes(r['measured_peak_bytes']))} ({_e(r['mem_method'])}) against the "
                 f"estimate {_e(fmt_bytes(r['estimate_expected_bytes']))} (high {_e(fmt_bytes(r['estimate_high_bytes']))}): "
                 f"{'within' if r['within_high'] else '<b class=no>above</b>'} the high bound</li>")
        H.append(f"<li>predicted score {plan.predicted_score:.3f}; measured rank {_e(_rank_text(r.get('measured_rank')))}</li>")
        H += ["</ul>", _img(figs, "loss", "training loss curve")]
        if "samples" in figs:
            H += ["<p>Samples for held-out captions (top: before, bottom: after fine-tuning):</p>",
                  _img(figs, "samples", "samples before and after fine-tuning")]
        H.append("</section>")
    H.append("</body></html>")
    return "\n".join(H) + "\n"
