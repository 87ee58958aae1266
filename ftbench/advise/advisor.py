"""Rank the candidate (method, blocks) of a shift with a fraction of the grid's compute.

Two strategies (docs/advisor.md measures both, ``benchmarks/advisor.py``):

* ``halving`` (default) — successive halving over (block, lr) on the protocol's selection split: every
  candidate trains for a quarter of the steps, the best ``keep`` by selection accuracy train the full
  steps, and the best of those by selection accuracy is the recommendation;
* ``rgn`` — Auto-RGN's signal: one short ``auto-rgn`` run measures each block's relative gradient norm
  (the surgical paper's Auto-RGN), the block with the largest is recommended, and its lr is chosen by a
  full run at each lr of the grid.

Every run is an ordinary ``RunSpec`` run through the runner and written as ``ftbench run`` writes it
(same run id), so a later ``sweep`` skips it; a run already in the results folder is read, not rerun.
Nothing here is fit to data: the confidence words come from the selection margin with thresholds set
before any measurement (:data:`CONFIDENCE`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ftbench.errors import UsageError, unknown
from ftbench.spec import RunSpec

STRATEGIES = {"halving": "successive halving over (block, lr) on the selection split",
              "rgn": "Auto-RGN's relative gradient norm per block, then the lr of the top block"}
DEFAULT_STRATEGY = "halving"
GRID_LRS = (1e-3, 1e-2)  # the default suite's lr axis (ftbench/benchmarks.toml)
GRID_SEEDS = 3  # the default suite's seeds: what the grid this replaces would run
# Confidence from the selection-accuracy margin (points) of the pick over the best other (method, blocks),
# set a priori: a binomial standard error at 90 % accuracy on a 200-image split is 2.1 points.
CONFIDENCE = ((5.0, "high"), (1.0, "medium"), (0.0, "low"))


@dataclass
class Candidate:
    """One (method, blocks, lr) of the grid, and what the advisor measured of it."""

    method: str
    blocks: tuple[str, ...]
    lr: float
    evidence: list[dict[str, Any]] = field(default_factory=list)  # one per run: steps, val, ood, run id
    uses_lr: bool = True  # False for a method whose runs ignore lr (none, linear-probe)

    @property
    def label(self) -> str:
        if self.method == "surgical":
            b = ",".join(self.blocks)
            return ("last layer" if b == "last" else f"block {b}") + f" (lr {self.lr:g})"
        return (f"{self.method}" + (f" [{','.join(self.blocks)}]" if self.blocks else "")
                + (f" (lr {self.lr:g})" if self.uses_lr else ""))


@dataclass
class Advice:
    """What :func:`advise` found: the ranking, the pick, its confidence and what it cost."""

    strategy: str
    base: RunSpec
    ranking: list[Candidate]
    pick: Candidate
    pick_spec: RunSpec
    margin: float
    confidence: str
    steps: int
    grid_steps: int
    flops: float
    grid_flops: float
    runs: list[str]
    signals: dict[str, float] = field(default_factory=dict)  # rgn: per block

    @property
    def cost_fraction(self) -> float:
        return self.flops / self.grid_flops if self.grid_flops else float("nan")

    @property
    def steps_fraction(self) -> float:
        return self.steps / self.grid_steps if self.grid_steps else float("nan")


# rgn: the top block's relative gradient norm above the runner-up's, as a fraction of the top's (a priori).
RGN_CONFIDENCE = ((0.2, "high"), (0.05, "medium"), (0.0, "low"))


def _margin(pick: Candidate, ranking: list[Candidate]) -> float:
    """Selection points of ``pick`` over the best other (method, blocks) measured as long (else at the
    longest length both reached): the margin of the choice of block, not of its lr."""
    others = [c for c in ranking if (c.method, c.blocks) != (pick.method, pick.blocks) and c.evidence]
    if not others:
        return 0.0
    rung = _score(pick)[0]
    same = [c for c in others if _score(c)[0] == rung]
    if same:
        return _score(pick)[1] - max(_score(c)[1] for c in same)

    def at(c: Candidate, n: int) -> float:
        return max((e["val_acc"] for e in c.evidence if e["rung"] == n), default=-math.inf)

    short = min(e["rung"] for e in pick.evidence)
    mine = max(at(c, short) for c in ranking if (c.method, c.blocks) == (pick.method, pick.blocks))
    return mine - max(at(c, short) for c in others)


def confidence_word(margin: float) -> str:
    for threshold, word in CONFIDENCE:
        if margin >= threshold:
            return word
    return "low"


def model_blocks(spec: RunSpec) -> list[str]:
    """The block names of resolved ``spec``'s model, input to output."""
    from ftbench.models.base import block_parameter_counts, get_model_entry

    return list(block_parameter_counts(get_model_entry(spec.model)))


def candidates(base: RunSpec, methods: list[str], lrs: tuple[float, ...] = GRID_LRS) -> list[Candidate]:
    """The grid's candidates: each single block of the model for ``surgical``, each other method as it is."""
    out = []
    for m in methods:
        if m == "surgical":
            out += [Candidate(m, (b,), lr) for b in model_blocks(base) for lr in lrs]
        else:
            out += [Candidate(m, (), lr) for lr in lrs]
    seen: set[str] = set()
    unique = []
    for c in out:  # a method that uses no lr (none, linear-probe) is one run, not one per lr
        spec = spec_of(base, c)
        run_id, c.uses_lr = spec.run_id, spec.lr is not None
        if run_id not in seen:
            seen.add(run_id)
            unique.append(c)
    return unique


def spec_of(base: RunSpec, c: Candidate, steps: int | None = None, seed: int | None = None) -> RunSpec:
    """The resolved run of candidate ``c`` (``ftbench run``'s, with the base's data and protocol)."""
    from ftbench.plan.resolve import resolve

    fields = dict(method=c.method, blocks=c.blocks, lr=c.lr, options=())
    if steps is not None:
        fields["steps"] = steps
    if seed is not None:
        fields["seed"] = seed
    return resolve(replace(base, **fields))


def run_or_read(spec: RunSpec, out_dir: Path, device: str) -> dict[str, Any]:
    """The final result row of ``spec``: read from ``out_dir`` when a finished run is there, else run
    and written there as ``ftbench run`` writes it."""
    from ftbench.results.store import is_done, read_results, result_path, write_result

    path = result_path(out_dir, spec.run_id)
    if path.exists() and is_done(path, retry_failed=True):  # a finished ok run: read, as a sweep skips it
        rows = read_results(path)[0].to_dict("records")
    else:
        from ftbench.execution.runner import discard_work, execute, work_dir

        rows = execute(spec, device, work_dir(out_dir, spec.run_id))
        write_result(out_dir, rows)
        discard_work(work_dir(out_dir, spec.run_id), rows)
    def is_final(v: Any) -> bool:  # None or NaN: a row of a run without checkpoints
        return v is None or v != v or bool(v)

    final = [r for r in rows if is_final(r.get("final"))] or rows
    return final[-1]


def run_flops(spec: RunSpec, n_train: int) -> float:
    """Training FLOPs of ``spec``'s optimizer steps: steps x min(batch size, ``n_train``) images x one
    image's step (ftbench/papers/estimate.py: forward, backward down to the lowest tuned block). The same
    formula prices the grid (:func:`grid_cost`), so the fraction compares like with like; the L-BFGS
    iterations of a linear-probe stage (lp-ft, linear-probe) are counted on neither side."""
    from ftbench.papers.estimate import example_flops

    tuned = list(spec.blocks) if spec.method == "surgical" else None
    f = example_flops(spec.model, spec.benchmark, tuned) or 0.0
    return f * (spec.steps or 0) * min(spec.batch_size or 64, n_train)


def grid_cost(base: RunSpec, cands: list[Candidate], seeds: int, n_train: int) -> tuple[int, float]:
    """(optimizer steps, training FLOPs) of the full grid: every candidate at full steps, ``seeds`` seeds."""
    steps, flops = 0, 0.0
    for c in cands:
        s = spec_of(base, c)
        steps += (s.steps or 0) * seeds
        flops += run_flops(s, n_train) * seeds
    return steps, flops


class _Ledger:
    """The runs the advisor made or read, and their cost."""

    def __init__(self, out_dir: Path, device: str) -> None:
        self.out_dir, self.device = out_dir, device
        self.steps, self.flops, self.runs, self.n_train = 0, 0.0, [], 0

    def run(self, spec: RunSpec) -> dict[str, Any]:
        row = run_or_read(spec, self.out_dir, self.device)
        self.n_train = int(row.get("n_target_train") or 0) or self.n_train
        if spec.run_id not in self.runs:  # requested optimizer steps, priced as the grid is (run_flops)
            self.runs.append(spec.run_id)
            self.steps += int(spec.steps or 0)
            self.flops += run_flops(spec, self.n_train or spec.batch_size or 64)
        return row


def _record(c: Candidate, spec: RunSpec, row: dict[str, Any], rung: int) -> None:
    """Add a run to ``c``'s evidence; ``rung`` 1: the candidate's full run, 0: a shortened one."""
    c.evidence.append({"rung": rung, "steps": spec.steps, "seed": spec.seed, "val_acc": float(row["val_acc"]),
                       "ood_acc": float(row["ood_acc"]), "id_acc": float(row["id_acc"]), "run_id": spec.run_id})


def _score(c: Candidate) -> tuple[int, float]:
    """Rank key: the highest rung reached (full runs first), then that rung's selection accuracy."""
    if not c.evidence:
        return (-1, -math.inf)
    rung = max(e["rung"] for e in c.evidence)
    return (rung, max(e["val_acc"] for e in c.evidence if e["rung"] == rung))


def advise(base: RunSpec, out_dir: Path | str, methods: list[str] | None = None, strategy: str = DEFAULT_STRATEGY,
           device: str = "cpu", keep: int = 2, lrs: tuple[float, ...] = GRID_LRS,
           grid_seeds: int = GRID_SEEDS) -> Advice:
    """Rank the candidates of resolved ``base`` (its data, model, protocol, seed, steps) by ``strategy``."""
    if strategy not in STRATEGIES:
        raise unknown("strategy", strategy, list(STRATEGIES))
    methods = methods or ["surgical"]
    if strategy == "rgn" and methods != ["surgical"]:
        raise UsageError(f"--strategy rgn ranks the blocks of surgical fine-tuning; it does not rank methods "
                         f"(got --method {' --method '.join(methods)}); use --strategy halving")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cands = candidates(base, methods, lrs)
    full = next((s.steps for s in (spec_of(base, c) for c in cands) if s.steps), 50)  # a method with steps
    short = max(1, full // 4)
    ledger = _Ledger(out_dir, device)
    signals: dict[str, float] = {}
    if strategy == "halving":
        for c in cands:  # rung 0: a quarter of the steps (a method without steps: its one full run)
            s = spec_of(base, c, steps=short)
            _record(c, s, ledger.run(s), int(s.run_id == spec_of(base, c).run_id))
        short_only = [c for c in cands if _score(c)[0] == 0]
        for c in sorted(short_only, key=lambda c: c.evidence[0]["val_acc"], reverse=True)[:keep]:
            s = spec_of(base, c)
            _record(c, s, ledger.run(s), 1)
    else:
        probe = resolve_rgn(base, short)
        row = ledger.run(probe)
        signals = {b: float(row.get(f"rgn_block_{b}", float("nan"))) for b in model_blocks(base)}
        top = max(signals, key=lambda b: -math.inf if signals[b] != signals[b] else signals[b])
        for c in cands:
            if c.blocks == (top,):
                s = spec_of(base, c)
                _record(c, s, ledger.run(s), 1)
        order = {b: i for i, b in enumerate(sorted(signals, key=lambda b: -signals[b]))}
        cands.sort(key=lambda c: (-_score(c)[0], order.get(c.blocks[0] if c.blocks else "", 99), -_score(c)[1]))
    ranking = sorted(cands, key=_score, reverse=True) if strategy == "halving" else cands
    pick = ranking[0]
    if strategy == "halving":
        margin = _margin(pick, ranking)
        word = confidence_word(margin)
    else:  # the signal's own margin: how far the top block's RGN is above the next one's, relative
        vals = sorted((v for v in signals.values() if v == v), reverse=True)
        margin = (vals[0] - vals[1]) / vals[0] if len(vals) > 1 and vals[0] > 0 else 0.0
        word = next(w for t, w in RGN_CONFIDENCE if margin >= t)
    grid_steps, grid_flops = grid_cost(base, cands, grid_seeds, ledger.n_train or 64)
    return Advice(strategy, base, ranking, pick, spec_of(base, pick), margin, word,
                  ledger.steps, grid_steps, ledger.flops, grid_flops, ledger.runs, signals)


def resolve_rgn(base: RunSpec, steps: int) -> RunSpec:
    """The short Auto-RGN run whose ``rgn_block_<b>`` columns are the signal."""
    from ftbench.plan.resolve import resolve

    return resolve(replace(base, method="auto-rgn", blocks=(), steps=steps, options=()))


def run_command(spec: RunSpec) -> str:
    """The ``ftbench run`` command line of resolved ``spec`` (the data, protocol and hyperparameters)."""
    parts = ["ftbench run", f"--benchmark {spec.benchmark}"]
    if spec.protocol != "few-shot":
        parts.append(f"--protocol {spec.protocol}")
    parts.append(f"--shift {spec.shift}")
    if spec.corruption:
        parts += [f"--corruption {spec.corruption}", f"--severity {spec.severity}"]
    parts += [f"--shots {spec.shots}"] if spec.shots is not None and spec.protocol == "few-shot" else []
    parts += [f"--model {spec.model}", f"--method {spec.method}"]
    parts += [f"--block {b}" for b in spec.blocks]
    parts += [f"--lr {spec.lr:g}"] if spec.lr is not None else []
    parts += [f"--steps {spec.steps}"] if spec.steps is not None else []
    parts += [f"--seed {spec.seed}"]
    return " ".join(parts)


def as_json(a: Advice) -> dict[str, Any]:
    """``--format json``: the pick (blocks, method, lr), confidence, cost fraction, ranking and evidence."""
    return {"recommendation": {"method": a.pick.method, "blocks": list(a.pick.blocks), "lr": a.pick_spec.lr,
                               "run_id": a.pick_spec.run_id, "command": run_command(a.pick_spec)},
            "confidence": a.confidence, "margin": a.margin, "strategy": a.strategy,
            "cost_fraction": a.cost_fraction, "steps_fraction": a.steps_fraction,
            "steps": a.steps, "grid_steps": a.grid_steps, "flops": a.flops, "grid_flops": a.grid_flops,
            "grid_seeds": GRID_SEEDS, "runs": a.runs, "signals": a.signals,
            "ranking": [{"method": c.method, "blocks": list(c.blocks), "lr": c.lr if c.uses_lr else None,
                         "evidence": c.evidence}
                        for c in a.ranking]}


def as_text(a: Advice) -> str:
    """The terminal report: recommendation, confidence, evidence, cost, the command to run."""
    why = (f"selection-accuracy margin {a.margin:.1f} points over the best other (method, blocks)" if a.strategy == "halving"
           else f"its relative gradient norm is {a.margin:.0%} above the next block's")
    lines = [f"recommendation: {a.pick.label}  (confidence {a.confidence}: {why}; strategy {a.strategy}: "
             f"{STRATEGIES[a.strategy]})"]
    if a.signals:
        lines.append("Auto-RGN relative gradient norm per block: "
                     + ", ".join(f"{b} {v:.3g}" for b, v in a.signals.items()))
    lines.append("evidence (selection split = the protocol's val; OOD shown, not used to choose):")
    for c in a.ranking:
        for e in c.evidence:
            lines.append(f"  {c.label:28s} {'–' if e['steps'] is None else e['steps']:>4} steps  val {e['val_acc']:6.2f}  OOD {e['ood_acc']:6.2f}"
                         f"  run {e['run_id']}")
    lines.append(f"compute: {a.steps} optimizer steps, {a.flops:.3g} training FLOPs = {a.steps_fraction:.0%} of the "
                 f"grid's steps and {a.cost_fraction:.0%} of its FLOPs ({len(a.ranking)} candidates x {GRID_SEEDS} "
                 f"seeds at full steps: {a.grid_steps} steps, {a.grid_flops:.3g} FLOPs)")
    lines.append(f"run it: {run_command(a.pick_spec)}")
    return "\n".join(lines) + "\n"
