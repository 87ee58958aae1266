"""How often is ``ftbench advise`` right? The grid and the advisor on a declared set of digits shifts.

    python benchmarks/advisor.py [--out advisor-results] [--only contrast]

For each shift it runs (or reads, from ``--out``: reruns skip done runs) the grid the advisor replaces —
every block of digits-resnet x lr {1e-3, 1e-2} x seeds {0, 1, 2}, 50 steps, surgical fine-tuning — and
each strategy of the advisor (seed 0), then prints per shift and overall:

* hit rate: the pick's grid OOD (mean over the grid's seeds of the picked block at the picked lr; the
  baselines' lr chosen per seed on the selection split, as the report does) is within the grid's seed
  spread (sample std over seeds of the best block) of the grid's best block (report selection: per seed
  the lr with the best val, then the mean over seeds);
* regret: the grid's best OOD minus the pick's (points), mean and worst;
* cost: the advisor's optimizer steps and training FLOPs as a fraction of the grid's.

Beside the strategies: always block 1, always the last layer, a random block (its expectation: the mean
over blocks) and Auto-RGN's ranking (the top-RGN block, lr as the grid selects). The shift set is fixed
here, before any measurement: every digits corruption (all but the colour-only ones) at severities 3
and 5, subpopulation, label-flip,
and the ID->OOD shift (style-noise). Nothing of the advisor is fit on these shifts (docs/advisor.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ftbench.advise.advisor import (GRID_LRS, GRID_SEEDS, STRATEGIES, advise, candidates, model_blocks, run_or_read, spec_of)
from ftbench.data.corruptions import COLOR_ONLY, CORRUPTIONS  # noqa: E402
from ftbench.plan.resolve import resolve  # noqa: E402
from ftbench.spec import RunSpec  # noqa: E402


def shifts() -> list[tuple[str, RunSpec]]:
    """The declared set, as (label, resolved base spec)."""
    base = dict(benchmark="digits", method="surgical", seed=0, lr=1e-3, wd=1e-4, batch_size=64, optimizer="adam")
    out = []
    for sev in (3, 5):
        for c in CORRUPTIONS:
            if c in COLOR_ONLY:  # needs RGB images: not a digits corruption
                continue
            out.append((f"{c} s{sev}", resolve(RunSpec(shift="corruption", corruption=c, severity=sev, **base))))
    for s in ("subpopulation", "label-flip"):
        out.append((s, resolve(RunSpec(shift=s, **base))))
    out.append(("id-ood style-noise", resolve(RunSpec(protocol="id-ood", **base))))
    return out


def grid(base: RunSpec, out: Path, device: str) -> dict[tuple[str, float], list[tuple[float, float]]]:
    """(block, lr) -> [(val, ood) per seed] of the full grid."""
    res = {}
    for c in candidates(base, ["surgical"], GRID_LRS):
        rows = [run_or_read(spec_of(base, c, seed=s), out, device) for s in range(GRID_SEEDS)]
        res[(c.blocks[0], c.lr)] = [(float(r["val_acc"]), float(r["ood_acc"])) for r in rows]
    return res


def block_ood(g: dict, block: str) -> list[float]:
    """Per seed, the OOD of ``block`` at the lr with the best selection accuracy (the report's selection)."""
    out = []
    for s in range(GRID_SEEDS):
        runs = [g[(block, lr)][s] for lr in GRID_LRS]
        out.append(max(runs, key=lambda vo: vo[0])[1])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="advisor-results", help="results folder (cached: reruns skip done runs)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", default=None, help="only shifts whose label contains this")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    t0 = time.time()
    names = ["halving", "rgn", "block 1", "last layer", "random block", "auto-rgn ranking"]
    stats: dict[str, list[tuple[bool, float, float, float]]] = {n: [] for n in names}
    print(f"{'shift':22s} {'best':>10s} {'spread':>6s}  " + "  ".join(f"{n:>16s}" for n in names))
    for label, base in shifts():
        if args.only and args.only not in label:
            continue
        g = grid(base, out, args.device)
        blocks = model_blocks(base)
        per_block = {b: statistics.mean(block_ood(g, b)) for b in blocks}
        best_b = max(blocks, key=lambda b: per_block[b])
        best = per_block[best_b]
        spread = statistics.stdev(block_ood(g, best_b))
        cells = []
        for n in names:
            if n in STRATEGIES:
                a = advise(base, out, None, n, args.device)
                ood = statistics.mean(o for _, o in g[(a.pick.blocks[0], a.pick.lr)])
                hit, regret = ood >= best - spread - 1e-9, best - ood
                stats[n].append((hit, regret, a.steps_fraction, a.cost_fraction))
                if n == "rgn":
                    rgn_block = a.pick.blocks[0]
                cells.append(f"{a.pick.blocks[0]:>4s}/{a.pick.lr:<5g} {regret:5.1f}")
                continue
            if n == "random block":
                hits = [per_block[b] >= best - spread - 1e-9 for b in blocks]
                regrets = [best - per_block[b] for b in blocks]
                stats[n].append((sum(hits) / len(hits), statistics.mean(regrets), 0.0, 0.0))
                stats[n][-1] = stats[n][-1] + (max(regrets),)
                cells.append(f"{'E':>10s} {statistics.mean(regrets):5.1f}")
                continue
            b = {"block 1": blocks[0], "last layer": blocks[-1], "auto-rgn ranking": rgn_block}[n]
            regret = best - per_block[b]
            stats[n].append((per_block[b] >= best - spread - 1e-9, regret, 0.0, 0.0))
            cells.append(f"{b:>10s} {regret:5.1f}")
        print(f"{label:22s} {best_b:>4s} {best:5.1f} {spread:6.1f}  " + "  ".join(f"{c:>16s}" for c in cells),
              flush=True)
    print()
    print(f"overall ({len(stats['halving'])} shifts; regret in OOD points against the grid's best block; cost as a "
          f"fraction of the grid's {len(model_blocks(base))} blocks x {len(GRID_LRS)} lrs x {GRID_SEEDS} seeds):")
    print(f"{'':18s} {'hit rate':>8s} {'mean regret':>11s} {'worst regret':>12s} {'steps':>6s} {'FLOPs':>6s}")
    for n in names:
        rows = stats[n]
        if not rows:
            continue
        hit = statistics.mean(float(r[0]) for r in rows)
        worst = max(r[4] if len(r) > 4 else r[1] for r in rows)
        cost = "" if n not in STRATEGIES else \
            f"{statistics.mean(r[2] for r in rows):6.0%} {statistics.mean(r[3] for r in rows):6.0%}"
        print(f"{n:18s} {hit:8.0%} {statistics.mean(r[1] for r in rows):11.2f} {worst:12.2f} {cost}")
    print(f"\n({time.time() - t0:.0f} s; baselines' cost: the block's own lr runs, not counted; random block: "
          "the expectation over blocks, its worst regret the worst block's)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
