"""The few-shot target protocol (the surgical fine-tuning paper's; SpotTune's transfer setting).

The source model is pretrained on the source split; fine-tuning sees ``--shots`` labelled *target*
images per class; hyperparameters are selected on target val; the row reports source test (ID) and
target test (OOD)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import dataclasses

from ftbench.protocols.base import PROTOCOLS, Protocol, Scored, Task, fitting

if TYPE_CHECKING:
    from ftbench.data.base import Benchmark
    from ftbench.spec import RunSpec


@PROTOCOLS.register("few-shot")
class FewShotTarget(Protocol):
    name = "few-shot"
    help = ("pretrain on the source split, fine-tune on --shots labelled target images per class, "
            "select on target val, report source test (ID) and target test (OOD)")
    papers = "surgical fine-tuning (Lee et al. 2022), SpotTune (Guo et al. 2019)"
    selections: ClassVar[dict[str, tuple[str, str]]] = {
        "val": ("val_acc", "target validation"),
        "target-val": ("val_acc", "target validation"),
        "source-val": ("source_val_acc", "source validation"),
        "oracle": ("ood_acc", "target TEST"),
    }
    id_words = "source test"
    ood_words = "target test"

    def offered_by(self, bench: Benchmark) -> bool:
        return bench.few_shot

    def resolve(self, bench: Benchmark, spec: RunSpec) -> RunSpec:
        if not bench.few_shot:
            from ftbench.errors import UsageError

            raise UsageError(f"benchmark {bench.name!r} has no few-shot target splits (its OOD sets are test sets "
                             "only): run it with --protocol id-ood")
        if spec.shift is None:  # not given: corruption where the benchmark has it, else its one shift
            shift = "corruption"
            if (shift not in bench.shifts and len(bench.shifts) == 1 and spec.corruption is None
                    and spec.severity is None):
                shift = next(iter(bench.shifts))
            spec = dataclasses.replace(spec, shift=shift)
        return bench.resolve(spec)

    def task(self, bench: Benchmark, spec: RunSpec) -> Task:
        s, t = bench.source(spec), bench.target(spec)
        s = dataclasses.replace(s, prompts=fitting(s.prompts or bench.class_prompts(spec, "source"), s.num_classes))
        t = dataclasses.replace(t, prompts=fitting(t.prompts or bench.class_prompts(spec, "target"), t.num_classes))
        scored = (Scored("id", "id-test", s.test, s.metrics), Scored("source_val", "source-val", s.val),
                  Scored("val", "val", t.val, t.metrics), Scored("ood", "ood-test", t.test, t.metrics))
        return Task(self.name, t.num_classes, t.train, t.val, t.val, s.test, t.test, scored, t.metrics,
                    dict(t.info), fresh_head=False, pretraining=s, prompts=t.prompts)
