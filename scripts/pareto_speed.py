"""Closed-loop coverage loss vs measured CPU speedup (docs/img/pusht_lowdim_pareto_speed.png).

Inputs: the sweep's per-method records (runs/sweep, from scripts/closed_loop_sweep.sh) and the
`bac bench --json` outputs of scripts/run_benchmarks.sh (build/bench/bundled_lowdim_S*.json).
    .venv/bin/python scripts/pareto_speed.py [runs/sweep] [build/bench]
"""

import glob
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bac_ros.pusht.eval import EvalConfig, summarize  # noqa: E402

sweep = sys.argv[1] if len(sys.argv) > 1 else "runs/sweep"
bench = sys.argv[2] if len(sys.argv) > 2 else "build/bench"
recs = {json.load(open(f))["meta"]["method"]: json.load(open(f))
        for f in glob.glob(f"{sweep}/episodes/*.json")}
rows = {r["method"]: r for r in summarize(recs, EvalConfig(episodes=200, methods=["full"]))}
speed = {}
for f in glob.glob(f"{bench}/bundled_lowdim_S*.json"):
    for r in json.load(open(f)):
        if r["method"] in ("uniform", "shared_acs", "acs", "bac"):
            speed[f"{r['method']}:{r['S']}"] = r["speedup_vs_full"]
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.axhspan(*rows["full#noise1"]["paired_coverage_diff"]["ci95"], color="0.85",
           label="noise floor 95% CI")
ax.axhline(-0.03, color="r", ls="--", lw=1, label="margin -0.03")
for fam in ("uniform", "shared_acs", "acs", "bac"):
    pts = sorted((speed[k], rows[k]["paired_coverage_diff"]) for k in speed
                 if k.startswith(fam + ":") and k in rows)
    if pts:
        x, d = [p[0] for p in pts], [p[1] for p in pts]
        ax.errorbar(x, [v["mean"] for v in d], yerr=[[v["mean"] - v["ci95"][0] for v in d],
                                                     [v["ci95"][1] - v["mean"] for v in d]],
                    marker="o", capsize=3, label=fam)
ax.set_xlabel("measured CPU speedup vs full (bac bench, same run)")
ax.set_ylabel("paired Δ mean max coverage vs full")
ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig("docs/img/pusht_lowdim_pareto_speed.png", dpi=110)
print({k: round(v, 2) for k, v in speed.items()})
