"""The training loop's schedule, warm-up and gradient clipping (``--schedule``, ``--warmup``,
``--clip-grad``; ftbench/train/loop.py): the rate the optimizer steps with, the gradient it steps
on, AdamW's decay under a schedule, and how the settings enter a run (run id, refusals, rows)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ftbench.data.base import Split
from ftbench.errors import UsageError
from ftbench.methods.base import DecoupledDecay
from ftbench.spec import RunSpec
from ftbench.plan.resolve import resolve
from ftbench.execution import fused
from ftbench.train import loop


def _problem() -> tuple[nn.Module, Split]:
    torch.manual_seed(0)
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), Split(x, y)


def _rates(schedule: str, warmup: int, steps: int = 12, lr: float = 0.1, **kw: object) -> list[float]:
    """The learning rate each optimizer step was taken with (read inside ``opt.step``)."""
    model, data = _problem()
    seen: list[float] = []

    def watch(opt: torch.optim.Optimizer) -> None:
        step = opt.step

        def spy(*a: object, **k: object) -> object:
            seen.append(opt.param_groups[0]["lr"])
            return step(*a, **k)

        opt.step = spy  # type: ignore[method-assign]

    loop.fit(model, model.parameters(), data, lr=lr, wd=0.0, steps=steps, batch_size=16, optimizer="adam",
             generator=torch.Generator().manual_seed(0), on_optimizer=watch, schedule=schedule, warmup=warmup, **kw)
    return seen


def test_cosine_with_warmup_is_wise_ft_s_cosine_lr() -> None:
    """wise-ft's cosine_lr (src/models/utils.py): base·(step+1)/warmup during the warm-up, then
    0.5·(1 + cos(π·(step − warmup)/(steps − warmup)))·base, the step counted from 0."""
    steps, warmup, base = 12, 4, 0.1
    rates = _rates("cosine", warmup, steps, base)
    expected = [base * (t + 1) / warmup if t < warmup
                else 0.5 * (1 + math.cos(math.pi * (t - warmup) / (steps - warmup))) * base for t in range(steps)]
    assert rates == pytest.approx(expected, rel=1e-12)
    assert rates[warmup - 1] == base and rates[warmup] == base and 0 < rates[-1] < rates[warmup + 1] < base
    assert _rates("constant", 0, steps, base) == [base] * steps
    assert _rates("constant", 3, steps, base)[:4] == pytest.approx([base / 3, 2 * base / 3, base, base])


def test_the_schedule_scales_rates_a_hook_sets_and_does_not_compound() -> None:
    """A before_step hook that sets per-tensor rates once (as SpotTune's does at step 1) has them scaled
    at every step, never multiplied twice: the scale applies to one step and is undone after it."""
    def once(opt: torch.optim.Optimizer, t: int) -> None:
        if t == 1:
            for g in opt.param_groups:
                g["lr"] = 0.5

    rates = _rates("cosine", 0, 6, 0.1, before_step=once)
    assert rates == pytest.approx([0.5 * 0.5 * (1 + math.cos(math.pi * t / 6)) for t in range(6)], rel=1e-12)


def test_clip_grad_bounds_the_global_norm_of_the_step_s_gradient() -> None:
    norms: list[float] = []

    def measure(opt: torch.optim.Optimizer, t: int) -> None:
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    model, data = _problem()
    kw = dict(lr=0.1, wd=0.0, steps=5, batch_size=16, optimizer="sgd", before_step=measure)
    loop.fit(model, model.parameters(), data, generator=torch.Generator().manual_seed(0), **kw)
    unclipped, norms[:] = list(norms), []
    model, data = _problem()
    loop.fit(model, model.parameters(), data, generator=torch.Generator().manual_seed(0), clip_grad=1e-3, **kw)
    assert min(unclipped) > 1e-2  # the bound binds at every step
    # clip_grad_norm_ scales by max/(norm + 1e-6): the clipped norm is max·norm/(norm + 1e-6), within
    # 1e-4 of max for norms above 1e-2; float32 sums of a few hundred squares add ~1e-6 relative.
    assert norms == pytest.approx([1e-3] * 5, rel=2e-4)


def test_decoupled_decay_under_a_schedule_is_adamw_with_the_scheduled_rate_bit_for_bit() -> None:
    """Adam(wd=0) + DecoupledDecay through the loop with a cosine schedule equals torch.optim.AdamW whose
    lr is set to the scheduled rate before each step (decay with the scheduled rate, as torch's)."""
    model, data = _problem()
    ref_model, _ = _problem()
    steps, base, wd = 8, 0.05, 0.3
    factor = loop.lr_factor("cosine", 2, steps)
    ref = torch.optim.AdamW(ref_model.parameters(), lr=base, weight_decay=wd, foreach=True)
    idx = loop.batch_indices(len(data), 16, steps, torch.Generator().manual_seed(0))
    for t in range(steps):
        loss = nn.functional.cross_entropy(ref_model(data.x[idx[t]]).float(), data.y[idx[t]])
        ref.zero_grad(set_to_none=True)
        loss.backward()
        for g in ref.param_groups:
            g["lr"] = base * factor(t)
        ref.step()
    loop.fit(model, model.parameters(), data, lr=base, wd=0.0, steps=steps, batch_size=16, optimizer="adam",
             generator=torch.Generator().manual_seed(0), before_step=DecoupledDecay(wd), schedule="cosine", warmup=2)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), ref_model.parameters()))


def test_full_with_decoupled_decay_trains_as_adamw_and_keeps_the_default_run_id() -> None:
    """`full --set decay=decoupled` (the AutoFT release's fine-tuning baseline, AdamW): its own run id, not
    fused (the fused step couples wd), and other weights than the default coupled decay; the default keeps
    the run id it had before the option existed."""
    plain = resolve(RunSpec(method="full", steps=5, wd=0.3))
    assert resolve(RunSpec(method="full", steps=5, wd=0.3, options=(("decay", "coupled"),))).run_id == plain.run_id
    assert plain.run_id == "85b9087fcb764a43"  # the id this spec had before full had the option
    adamw = resolve(RunSpec(method="full", steps=5, wd=0.3, options=(("decay", "decoupled"),)))
    assert adamw.run_id != plain.run_id and fused.fusion_key(adamw) is None and fused.fusion_key(plain) is not None
    with pytest.raises(UsageError, match="accepted: decoupled, coupled"):
        resolve(RunSpec(method="full", options=(("decay", "adamw"),)))
    from ftbench.methods.base import get_method

    calls = []

    class Ctx:  # what Full.run asks of the training context
        block_names = ["1", "last"]

        def set_trainable(self, blocks, bn):  # noqa: ANN001, ANN202
            return ["params"]

        def fit(self, params, **kw):  # noqa: ANN001, ANN003, ANN202
            calls.append(kw)

    for spec in (plain, adamw):
        get_method("full")(spec).run(Ctx())
    assert calls[0] == {"wd": 0.3}
    assert calls[1]["wd"] == 0.0 and isinstance(calls[1]["before_step"], DecoupledDecay) and calls[1]["before_step"].wd == 0.3


def test_the_settings_enter_the_run_id_only_when_set_and_runs_with_them_are_not_fused() -> None:
    plain = resolve(RunSpec(method="full", steps=5))
    assert resolve(RunSpec(method="full", steps=5, schedule="constant", warmup=0)).run_id == plain.run_id
    cos = resolve(RunSpec(method="full", steps=5, schedule="cosine", warmup=2, clip_grad=1.0))
    assert cos.run_id != plain.run_id and (cos.schedule, cos.warmup, cos.clip_grad) == ("cosine", 2, 1.0)
    assert fused.fusion_key(plain) is not None and fused.fusion_key(cos) is None
    with pytest.raises(UsageError, match="--clip-grad has no effect with method 'linear-probe'"):
        resolve(RunSpec(method="linear-probe", clip_grad=1.0))


def test_a_run_with_a_schedule_records_it_and_trains_differently(tmp_path) -> None:  # noqa: ANN001
    from ftbench.results.store import read_results, write_result
    from ftbench.execution.runner import execute

    spec = RunSpec(method="full", steps=8, schedule="cosine", warmup=2, clip_grad=0.5)
    rows = execute(spec, "cpu")
    write_result(tmp_path, rows)
    df, problems = read_results(tmp_path)
    assert problems == []
    assert (df["schedule"].iloc[0], int(df["warmup"].iloc[0]), float(df["clip_grad"].iloc[0])) == ("cosine", 2, 0.5)
    plain = execute(RunSpec(method="full", steps=8), "cpu")
    assert rows[-1]["run_id"] != plain[-1]["run_id"]


def test_precision_phases_default_to_the_device_s_and_follow_the_run_s_settings() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert (loop.effective_precision(cpu), loop.effective_precision(cuda, "eval")) == ("fp32", "bf16")
    lin = nn.Linear(4, 2)
    x = torch.randn(3, 4)
    with loop.precision("bf16", "fp32"):
        assert loop.effective_precision(cuda, "eval") == "fp32"
        with loop.autocast(cpu, "train"):
            assert lin(x).dtype == torch.bfloat16
        with loop.autocast(cpu, "eval"):
            assert lin(x).dtype == torch.float32
    assert loop.effective_precision(cpu, "train") == "fp32"  # the setting ends with its block


def test_a_run_s_precisions_are_recorded_and_its_source_model_loads_as_every_run_s(monkeypatch) -> None:  # noqa: ANN001
    """--train-precision bf16 trains (and --eval-precision bf16 evaluates) under bf16 autocast, the row says
    which ran; loading or pretraining the source model is outside that setting (it is shared by runs)."""
    from ftbench.execution import runner

    seen: list[str] = []
    real = runner.load

    def load(*a: object, **k: object) -> object:
        seen.append(loop.effective_precision(torch.device("cpu"), "train"))
        return real(*a, **k)

    monkeypatch.setattr(runner, "load", load)
    spec = RunSpec(method="full", steps=4, train_precision="bf16", eval_precision="bf16")
    row = runner.execute(spec, "cpu")[-1]
    assert seen == ["fp32"]
    assert (row["train_precision"], row["eval_precision"], row["train_dtype"], row["eval_dtype"]) == ("bf16",) * 4
    plain = runner.execute(RunSpec(method="full", steps=4), "cpu")[-1]
    assert (plain["train_dtype"], plain["eval_dtype"]) == ("fp32", "fp32") and plain["run_id"] != row["run_id"]
    assert fused.fusion_key(resolve(spec)) is None
    with pytest.raises(UsageError, match="unknown --eval-precision 'fp16'; accepted: fp32, bf16"):
        resolve(RunSpec(eval_precision="fp16"))


def test_crop_boxes_are_torchvision_s_random_resized_crop_boxes() -> None:
    """Every box lies in the image; its area fraction is in the recipe's scale and its aspect ratio in
    its ratio range up to the rounding of the sides to whole pixels (±0.5 px each); an image no draw
    fits in gets torchvision's fallback, the central crop."""
    from ftbench.train.augment import AUGMENTS, Crop, crop_boxes

    g = torch.Generator().manual_seed(0)
    h, w = 40, 36
    for name, crop in AUGMENTS.items():
        top, left, ch, cw = crop_boxes(4096, h, w, crop, g).unbind(1)
        assert bool((top >= 0).all() and (left >= 0).all() and (top + ch <= h).all() and (left + cw <= w).all()), name
        frac = ch * cw / (h * w)
        slack = (ch + cw) * 0.5 / (h * w) + 0.25 / (h * w)  # (a ± .5)(b ± .5) − ab
        assert bool((frac >= crop.scale[0] - slack).all() and (frac <= crop.scale[1] + slack).all()), name
        r = cw / ch
        assert bool((r >= crop.ratio[0] * (1 - 1 / ch) - 1 / ch).all() and (r <= crop.ratio[1] * (1 + 1 / ch) + 1 / ch).all())
        assert len(set(zip(top.tolist(), left.tolist()))) > 3  # positions vary
    h, w = 32, 48
    never = Crop((1.0, 1.0), (3.0, 4.0), "bilinear", False, "")  # full area at ratio >= 3 never fits 32x48
    assert crop_boxes(8, h, w, never, g).tolist() == [[(h - 16) // 2, 0, 16, 48]] * 8


def test_a_box_is_cropped_and_resized_as_interpolate_would_and_flipped() -> None:
    from ftbench.train.augment import apply_boxes

    torch.manual_seed(0)
    x = torch.randn(3, 2, 16, 16)
    whole = torch.tensor([[0.0, 0.0, 16.0, 16.0]] * 3)
    # Identity: the grid samples pixel centres; float rounding of the grid moves a weight by ~1e-7.
    torch.testing.assert_close(apply_boxes(x, whole, None, "bicubic"), x, atol=1e-5, rtol=0)
    flips = torch.tensor([True, False, True])
    out = apply_boxes(x, whole, flips, "bilinear")
    torch.testing.assert_close(out[0], x[0].flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], x[1], atol=1e-5, rtol=0)
    box = torch.tensor([[2.0, 4.0, 8.0, 8.0]] * 3)  # an 8x8 crop resized x2, half-pixel centres both ways
    ref = F.interpolate(x[..., 2:10, 4:12], size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(apply_boxes(x, box, None, "bilinear")[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1],
                               atol=1e-5, rtol=0)


def test_augmented_runs_draw_per_step_skip_the_prefix_cache_and_are_refused_without_a_loop(monkeypatch) -> None:  # noqa: ANN001
    from ftbench.train import prefix
    from ftbench.train.augment import Augment
    from ftbench.execution.runner import execute

    x = torch.randn(5, 1, 8, 8)
    a, b = Augment("crop-flip", 3), Augment("crop-flip", 3)
    assert torch.equal(a(x, 7), b(x, 7)) and not torch.equal(a(x, 7), a(x, 8))  # (seed, step) decide
    monkeypatch.setattr(prefix, "fit_inputs", lambda *a, **k: pytest.fail("cached activations of augmented inputs"))
    row = execute(RunSpec(method="surgical", blocks=("3",), steps=4, augment="crop"), "cpu")[-1]
    assert row["augment"] == "crop" and row["status"] == "ok"
    with pytest.raises(UsageError, match="--augment has no effect with method 'linear-probe'"):
        resolve(RunSpec(method="linear-probe", augment="crop"))
    with pytest.raises(UsageError, match="unknown --augment 'mixup'; accepted: crop, crop-flip"):
        resolve(RunSpec(augment="mixup"))
