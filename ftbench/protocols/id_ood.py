"""The ID→OOD protocol (LP-FT, AutoFT, WiSE-FT, the PETL robustness study).

A pretrained model is fine-tuned on the benchmark's **in-distribution** train split (all of it, or
``--shots`` per class as the PETL study's 100-shot ImageNet); no OOD image is ever trained on.
Hyperparameters are selected on ID val by default, or on the benchmark's OOD val set
(``report --select ood-val``), which is also what AutoFT's search maximises. The row reports ID
test and **each** OOD test set (``ood.<set>_acc`` and the benchmark's metrics), and their mean as
``ood_acc``. The ID task's classifier starts new (re-initialised), as in LP-FT's fine-tuning
baseline: the pretrained model brings features, not the ID task's head.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ftbench.errors import UsageError, unknown
from ftbench.protocols.base import PROTOCOLS, Protocol, Scored, Task, fitting, per_class_draw

if TYPE_CHECKING:
    from ftbench.data.base import Benchmark
    from ftbench.spec import RunSpec


def offering(names: list[str]) -> str:
    return ", ".join(names) or "none"


@PROTOCOLS.register("id-ood")
class IdOod(Protocol):
    name = "id-ood"
    help = ("fine-tune a pretrained model on ID train (all, or --shots per class), select on ID val (or "
            "the OOD val set), report ID test and every OOD test set; no OOD image is trained on")
    papers = "LP-FT (Kumar et al. 2022), AutoFT (Choi et al. 2023), WiSE-FT (Wortsman et al. 2022), PETL (Mai et al. 2023)"
    selections: ClassVar[dict[str, tuple[str, str]]] = {
        "val": ("val_acc", "ID validation"),
        "id-val": ("val_acc", "ID validation"),
        "ood-val": ("ood_val_acc", "OOD validation"),
        "oracle": ("ood_acc", "OOD TEST (mean over the OOD test sets)"),
    }
    id_words = "ID test"
    ood_words = "mean over the OOD test sets"
    fresh_head = True
    shift_params = False  # the benchmark's OOD sets are fixed

    def offered_by(self, bench: Benchmark) -> bool:
        return bench.id_ood_shift is not None

    def resolve(self, bench: Benchmark, spec: RunSpec) -> RunSpec:
        from ftbench.data.base import BENCHMARKS, get_benchmark

        info = bench.id_ood_shift
        if info is None:
            offered = [n for n in BENCHMARKS.names() if get_benchmark(n).id_ood_shift is not None]
            raise UsageError(f"benchmark {bench.name!r} has no ID→OOD splits, so it cannot run --protocol id-ood; "
                             f"benchmarks with them: {offering(offered)}")
        # Not given: the benchmark's one ID->OOD shift. A given few-shot shift (e.g. corruption) is no alias of it.
        shift = info.name if spec.shift is None else spec.shift
        if shift != info.name:
            raise unknown(f"shift for benchmark {bench.name!r} in protocol id-ood:", spec.shift, [info.name])
        if spec.corruption is not None or spec.severity is not None:
            raise UsageError(f"--corruption/--severity do not apply to protocol id-ood: benchmark {bench.name!r} "
                             f"has fixed OOD sets ({', '.join(bench.id_ood_sets)})")
        shots = spec.shots
        most = bench.id_ood_max_shots()
        if shots is not None and not (isinstance(shots, int) and not isinstance(shots, bool) and shots >= 1
                                      and (most is None or shots <= most)):
            rng = f"1..{most}" if most is not None else "a positive integer"
            raise UsageError(f"shots must be {rng} per class of ID train for benchmark {bench.name!r} in protocol "
                             f"id-ood (or left out: all of ID train), got {shots!r}")
        return dataclasses.replace(spec, shift=shift)

    def check_weights(self, bench: Benchmark, spec: RunSpec, has_hub_weights: bool) -> None:
        from ftbench.models.weights import SCRATCH

        given = spec.weights not in (None, SCRATCH) or (spec.weights is None and has_hub_weights)
        if not bench.id_ood_pretrains and not given:
            raise UsageError(
                f"protocol id-ood fine-tunes a pretrained model, and benchmark {bench.name!r} has no pretraining "
                f"data of its own: use a model with hub weights (e.g. its default {bench.default_model!r}) or "
                f"--weights FILE, not {'--weights scratch' if spec.weights == SCRATCH else repr(spec.model)}")

    def task(self, bench: Benchmark, spec: RunSpec) -> Task:
        d = bench.id_ood(spec)
        train = d.train
        if spec.shots is not None:
            labels = d.train.y.cpu().numpy()
            strata = labels if d.strata is None else np.asarray(d.strata)
            _, counts = np.unique(strata, return_counts=True)
            if len(counts) == 0 or counts.min() < spec.shots:
                raise UsageError(f"shots must be at most {int(counts.min()) if len(counts) else 0} per class of ID "
                                 f"train for benchmark {bench.name!r} with the data at hand, got {spec.shots}")
            train = d.train.take(per_class_draw(labels, spec.shots, spec.seed, strata))
        m = d.metrics
        scored = [Scored("id", "id-test", d.test, m), Scored("val", "val", d.val, m)]
        if d.ood_val is not None:
            scored.append(Scored("ood_val", "ood-val", d.ood_val, m))
        scored += [Scored(f"ood.{n}", "ood-test", s, m, d.ood_classes.get(n)) for n, s in d.ood_tests.items()]
        first = next(iter(d.ood_tests.values()))
        info = {"shift_level": bench.id_ood_shift.level if bench.id_ood_shift else "", **d.info}
        pre = bench.source(spec) if bench.id_ood_pretrains else None
        if pre is not None:
            pre = dataclasses.replace(pre, prompts=fitting(pre.prompts or bench.class_prompts(spec, "source"),
                                                           pre.num_classes))
        prompts = fitting(d.prompts or bench.class_prompts(spec, "id"), d.num_classes)
        return Task(self.name, d.num_classes, train, d.val, d.ood_val, d.test, first, tuple(scored), m, info,
                    fresh_head=True, pretraining=pre, prompts=prompts)
