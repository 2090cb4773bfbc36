"""Quality against model calls, from bench_solvers.py's JSON: figures/05_quality_vs_calls.{png,pdf}.

    python benchmarks/plot_solvers.py benchmarks/solvers_celeba32.json --out figures/05_quality_vs_calls
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import matplotlib.pyplot as plt  # noqa: E402

from ddpm_helpers.plotting import COLUMN_WIDTH, print_style, save_figure  # noqa: E402

LABELS = {"ddim": "DDIM (uniform grid)", "dpm++2m": "DPM-Solver++ 2M (log-SNR grid)",
          "dpm++3m": "DPM-Solver++ 3M (log-SNR grid)", "ddpm": "DDPM (all T steps)"}


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("json")
    p.add_argument("--out", default="figures/05_quality_vs_calls")
    args = p.parse_args(argv)
    result = json.loads(Path(args.json).read_text())
    with print_style():
        fig, ax = plt.subplots(figsize=(COLUMN_WIDTH * 1.3, 2.8))
        for k, sampler in enumerate(dict.fromkeys(r["sampler"] for r in result["rows"])):
            rows = sorted((r for r in result["rows"] if r["sampler"] == sampler), key=lambda r: r["calls"])
            calls = [r["calls"] for r in rows]
            mean = [r["swd_mean"] for r in rows]
            low = [r["swd_mean"] - min(r["swd"]) for r in rows]
            high = [max(r["swd"]) - r["swd_mean"] for r in rows]
            ax.errorbar(calls, mean, yerr=[low, high], marker="o", ms=3, capsize=2, lw=1, label=LABELS[sampler],
                        color=f"C{k}")
        ax.axhline(result["real_vs_real"], color="0.4", ls="--", lw=0.8,
                   label=f"real vs real (floor, n = {result['n']})")
        ax.set_xscale("log")
        ax.set_xticks([5, 10, 20, 50, 100])
        ax.set_xticklabels(["5", "10", "20", "50", "100"])
        ax.set_xlabel("model calls per sample")
        ax.set_ylabel("SWD ×10³ vs held-out faces (lower is better)")
        ax.set_ylim(top=min(ax.get_ylim()[1], 60))
        ax.set_title("Quality against sampling cost, 32-px CelebA model")
        ax.legend(fontsize=6, loc="upper right")
        return save_figure(fig, args.out)


if __name__ == "__main__":
    print(main())
