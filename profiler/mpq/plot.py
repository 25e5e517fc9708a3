"""A per-layer bit-width plot of a :class:`~profiler.mpq.bitplan.BitPlan` (PNG, matplotlib's Agg backend)."""
from __future__ import annotations

from pathlib import Path

from profiler.mpq.bitplan import BitPlan


def plot_bitplan(plan: BitPlan, path, title: str | None = None) -> Path:
    """Draw weight bits (bars) and activation bits (dots) per layer in execution order, with the layer
    importance on a second axis, and save to ``path`` (PNG). Returns the path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = list(plan.layers)
    x = range(len(names))
    w, a = plan.w_bits, plan.a_bits
    width = min(max(8.0, 0.12 * len(names)), 40.0)
    fig, ax = plt.subplots(figsize=(width, 4.2), dpi=110)
    ax.bar(x, w, color="#4C72B0", label="weight bits")
    ax.scatter(x, [v if v is not None else 0 for v in a], color="#DD8452", s=12, zorder=3, label="activation bits")
    ax.set_ylabel("bits")
    ax.set_ylim(0, max([16] + [v or 0 for v in a]) + 1)
    ax.set_xlim(-0.6, len(names) - 0.4)
    if len(names) <= 120:
        ax.set_xticks(list(x))
        ax.set_xticklabels(names, rotation=90, fontsize=5)
    else:
        ax.set_xlabel(f"{len(names)} layers in execution order")
    if plan.importance:
        ax2 = ax.twinx()
        ax2.plot(list(x), [plan.importance.get(n, float("nan")) for n in names], color="#55A868", lw=1,
                 label="importance θ")
        ax2.set_ylabel("importance θ (max 1)")
        ax2.set_ylim(0, 1.05)
        h2, l2 = ax2.get_legend_handles_labels()
    else:
        h2, l2 = [], []
    h1, l1 = ax.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="lower center", bbox_to_anchor=(0.5, 1.06), ncol=3, fontsize=7, frameon=False)
    u = plan.usage
    sub = plan.summary() if not u else (f"avg {u.get('avg_bits', float('nan')):.2f} weight bits, "
                                        f"{u.get('weight_bytes', 0):,.0f} of {plan.budget.get('weight_bytes') or 0:,.0f} "
                                        f"budget bytes")
    ax.set_title((title or f"bit plan ({plan.settings.get('allocator', '?')})") + f" — {sub}", fontsize=9, pad=22)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
