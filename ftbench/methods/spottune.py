"""SpotTune (Guo et al., CVPR 2019, "SpotTune: Transfer Learning through Adaptive Fine-tuning").

Every residual unit of the backbone is kept twice: the pretrained unit, frozen (never updated,
BatchNorm in eval mode), and a fine-tuned copy initialised from it. A small policy network looks
at each input image and decides, per unit, which of the two the image goes through. Decisions are
sampled with hard Gumbel-softmax during training (straight-through gradients reach the policy) and
are the deterministic argmax of the policy's logits at evaluation. The policy, the fine-tuned
copies and every parameter outside the residual units (stem, classifier) train jointly on
cross-entropy. ``spottune-global-k`` adds the paper's loss that makes the policy fine-tune about
``k`` units for every input (docs/methods.md#spottune).

The routing lives inside the model, so the runner evaluates the same object: each unit is replaced
by a :class:`RoutedUnit`, the policy is registered as ``model.spottune``, and a forward-pre-hook on
the model runs the policy once per forward on the model's input.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ftbench.data.base import AnySplit, Split
from ftbench.errors import UsageError
from ftbench.methods.base import BN_OPTION_TRAIN, METHODS, Method, Option
from ftbench.spec import RunSpec
from ftbench.train.loop import autocast

if TYPE_CHECKING:
    from ftbench.models.base import BlockModel
    from ftbench.train.context import TrainContext

GUMBEL_EPS = 1e-20  # as the released code: keeps log(-log(u)) finite for u = 0
ENTROPY_EPS = 1e-8  # v·log v is 0 at v = 0; the log's argument is clamped so its gradient stays finite


# --- the defining computations ---------------------------------------------------------------


def gumbel_softmax_st(logits: torch.Tensor, temperature: float, gumbel: torch.Tensor | None = None) -> torch.Tensor:
    """Hard Gumbel-softmax with straight-through gradients over the last dimension.

    Forward: exactly the one-hot vector of ``argmax(logits + g)``, ``g`` ~ Gumbel(0, 1) (drawn from
    torch's global generator unless given). Backward: the gradient of the relaxed sample
    ``softmax((logits + g) / temperature)``. The hard value is added to ``soft - soft.detach()``,
    which is exactly zero, so the forward values are exactly 0 and 1 (the released code's
    ``(hard - soft).detach() + soft`` is only one-hot up to rounding).
    """
    logits = logits.float()
    if gumbel is None:
        u = torch.rand_like(logits)
        gumbel = -torch.log(-torch.log(u + GUMBEL_EPS) + GUMBEL_EPS)
    soft = F.softmax((logits + gumbel) / temperature, dim=-1)
    hard = F.one_hot(soft.argmax(dim=-1), logits.shape[-1]).to(soft.dtype)
    return hard + (soft - soft.detach())


def global_k_loss(decisions: torch.Tensor, k: float, k_weight: float, entropy_weight: float) -> torch.Tensor:
    """The global-k auxiliary loss ``λ1·(Σ_l v_l − k)² + λ2·Σ_l −v_l·log v_l``.

    ``decisions`` is (batch, units), 1 = fine-tuned copy; ``v_l`` is the fraction of the batch's
    images that unit ``l`` sends through its fine-tuned copy. The first term pulls the number of
    fine-tuned units per image towards ``k``; the second (zero at v = 0 and v = 1) pushes each
    unit towards a decision shared by all images, i.e. a global policy.
    """
    v = decisions.float().mean(dim=0)
    usage = (v.sum() - k) ** 2
    entropy = -(v * torch.log(v.clamp_min(ENTROPY_EPS))).sum()
    return k_weight * usage + entropy_weight * entropy


# --- the policy network ----------------------------------------------------------------------


class _PolicyBlock(nn.Module):
    """Basic block of the released code's agent: conv(stride)-BN-ReLU-conv-BN, parameter-free
    shortcut (average pooling, then zero channels appended), ReLU after the sum."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = cout - cin
        # ceil_mode: the shortcut has the conv's output size for odd inputs too (same for even ones)
        self.pool = nn.AvgPool2d(2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        res = self.pool(x)
        res = torch.cat([res, res.new_zeros(res.shape[0], self.pad, *res.shape[2:])], dim=1)
        return F.relu(res + out)


class PolicyNet(nn.Module):
    """The policy: the released code's agent (a ResNet with three basic blocks), with widths
    ``w, 2w, 4w, 8w`` instead of 32, 64, 128, 256.

    3×3 conv (stride 1) + BN on the input, three basic blocks of stride 2, BN + ReLU, global
    average pooling, and a linear layer giving two logits per unit (``[frozen, fine-tuned]``).
    """

    def __init__(self, in_channels: int, units: int, width: int = 4) -> None:
        super().__init__()
        self.units = units
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width))
        self.blocks = nn.Sequential(*[_PolicyBlock(width * 2**i, width * 2 ** (i + 1)) for i in range(3)])
        self.out_bn = nn.BatchNorm2d(8 * width)
        self.linear = nn.Linear(8 * width, 2 * units)
        for m in self.modules():  # as the released code: He-normal convolutions (fan-out), BN at (1, 0)
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, C, H, W) images -> (batch, units, 2) logits."""
        h = F.relu(self.out_bn(self.blocks(self.stem(x))))
        return self.linear(h.mean(dim=(2, 3))).view(x.shape[0], self.units, 2)


class SpotTuneRouter(nn.Module):
    """Registered on the model as ``model.spottune``: the policy and the batch's decisions.

    ``decide(x)`` runs the policy on the model's input: hard Gumbel-softmax samples while the
    policy is in train mode, the argmax of the logits in eval mode. ``current`` holds the
    decisions (batch, units; 1 = fine-tuned copy) for the forward in progress, ``last`` those of
    the last training forward (with their graph, for the global-k loss).
    """

    def __init__(self, policy: PolicyNet, temperature: float) -> None:
        super().__init__()
        self.policy = policy
        self.temperature = temperature
        self.current: torch.Tensor | None = None
        self.last: torch.Tensor | None = None

    def decide(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.policy(x)
        if self.policy.training:
            d = gumbel_softmax_st(logits, self.temperature)[..., 1]
            self.last = d if torch.is_grad_enabled() else None
        else:
            d = logits.argmax(dim=-1).float()  # ties go to the frozen copy (index 0)
        return d

    def pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.current = self.decide(args[0])

    def post_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.current = None  # a later call of a submodule alone must not reuse stale decisions


class RoutedUnit(nn.Module):
    """A residual unit kept twice: ``frozen`` (the pretrained unit) and ``finetuned`` (a copy).

    Output ``d·finetuned(x) + (1 − d)·frozen(x)`` with the router's decision ``d`` ∈ {0, 1} for each
    image; in eval mode the selection is exact (``torch.where``). ``frozen`` is always in eval mode,
    whatever ``train()`` is called with, so its BatchNorm statistics never change.
    """

    def __init__(self, unit: nn.Module, router: SpotTuneRouter, index: int) -> None:
        super().__init__()
        self.frozen = unit
        self.finetuned = copy.deepcopy(unit)
        self.index = index
        self._router = [router]  # a plain list: the router is registered once, on the model
        self.frozen.requires_grad_(False)
        self.frozen.eval()

    def train(self, mode: bool = True) -> RoutedUnit:
        super().train(mode)
        self.frozen.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self._router[0].current
        if d is None or d.shape[0] != x.shape[0]:
            raise RuntimeError("SpotTune units route with the policy's decisions for the model's input: "
                               "call the model itself, not one of its parts")
        a = self.finetuned(x)
        b = self.frozen(x)
        d = d[:, self.index].view(-1, *([1] * (a.dim() - 1)))
        if self.training or torch.is_grad_enabled():
            return d * a + (1 - d) * b
        return torch.where(d.bool(), a, b)


def attach(model: BlockModel, in_channels: int, width: int = 4, temperature: float = 5.0) -> SpotTuneRouter:
    """Turn ``model`` into a SpotTune model in place; return its router (``model.spottune``).

    Each unit of ``model.residual_units()`` becomes a :class:`RoutedUnit` (the original module as
    the frozen copy), and the policy runs once per call of the model, on its input.
    """
    units = model.residual_units()
    if not units:
        raise UsageError(f"spottune needs a model with residual units; {type(model).__name__} has none")
    device = next(model.parameters()).device
    router = SpotTuneRouter(PolicyNet(in_channels, len(units), width), temperature).to(device)
    model.spottune = router  # registered: .to(), parameters() and state_dict() include the policy
    for i, (path, _) in enumerate(units):
        model.set_submodule(path, RoutedUnit(model.get_submodule(path), router, i))
    model.register_forward_pre_hook(router.pre_hook)
    model.register_forward_hook(router.post_hook)
    return router


@torch.no_grad()
def route_statistics(model: BlockModel, x: torch.Tensor | AnySplit, batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per unit, over the images ``x`` (a tensor or a split, in memory or streamed), with the policy in
    eval mode: the fraction sent through the fine-tuned copy (argmax routing) and the mean entropy,
    in bits, of the policy's routing distribution ``softmax(logits)`` (1 = a coin flip, 0 = decided).
    Two float64 CPU vectors in ``residual_units()`` order."""
    router: SpotTuneRouter = model.spottune
    was = router.training
    router.eval()
    total = torch.zeros(router.policy.units, dtype=torch.float64)
    entropy = torch.zeros(router.policy.units, dtype=torch.float64)
    data = Split(x, torch.empty(x.shape[0])) if isinstance(x, torch.Tensor) else x
    with torch.inference_mode():
        for xb in data.batches(batch_size if isinstance(data, Split) else 256):
            with autocast(xb.device, "eval"):  # the precision the runner evaluates in, so these are its decisions
                logits = router.policy(xb).float()
            total += (logits.argmax(dim=-1) == 1).sum(dim=0).to("cpu", torch.float64)
            logp = F.log_softmax(logits, dim=-1)
            h = -(logp.exp() * logp).sum(dim=-1) / math.log(2.0)
            entropy += h.sum(dim=0).to("cpu", torch.float64)
    router.train(was)
    n = max(1, len(data))
    return total / n, entropy / n


def route_frequencies(model: BlockModel, x: torch.Tensor | AnySplit, batch_size: int = 4096) -> torch.Tensor:
    """Fraction of the images ``x`` that each unit sends through its fine-tuned copy at evaluation
    (argmax routing, policy in eval mode); float64 CPU vector in ``residual_units()`` order."""
    return route_statistics(model, x, batch_size)[0]


# --- the methods ----------------------------------------------------------------------------


def _positive(name: str, value: float, method: str) -> None:
    if not value > 0:
        raise UsageError(f"option {name}={value!r} of method {method!r} must be a positive number")


@METHODS.register("spottune")
class SpotTune(Method):
    """Per-input routing between frozen and fine-tuned copies of each residual unit."""

    name = "spottune"
    help = "fine-tuned copies of the residual units, stem, classifier + a policy routing each image per unit"
    paper = "Guo et al. 2019, SpotTune: Transfer Learning through Adaptive Fine-tuning"
    order = 62
    options = {
        "temperature": Option(5.0, "Gumbel-softmax temperature (released code: 5)", minimum=0),
        "policy_lr_mult": Option(10.0, "policy learning rate = lr * this: a from-scratch network under Adam, "
                                 "enough for the router to decide within the run (docs/methods.md#spottune); the "
                                 "release's SGD ratio is 0.1 (--recipe spottune)", minimum=0),
        "policy_wd": Option(0.001, "weight decay of the policy (released code: 0.001)", minimum=0),
        "policy_width": Option(4, "policy net widths w, 2w, 4w, 8w", minimum=1),
        "bn": BN_OPTION_TRAIN,
    }

    @classmethod
    def resolve(cls, spec: RunSpec, block_names: tuple[str, ...]) -> RunSpec:
        spec = super().resolve(spec, block_names)
        _positive("temperature", dict(spec.options)["temperature"], cls.name)
        return spec

    def trainable_blocks(self, block_names: list[str]) -> list[str]:
        return list(block_names)  # every block holds a fine-tuned copy or a fine-tuned non-residual part

    def aux_loss(self, router: SpotTuneRouter, units: int) -> Any:
        """The auxiliary loss added to cross-entropy (none for plain SpotTune)."""
        return None

    def run(self, ctx: TrainContext) -> dict[str, Any]:
        """Route, train jointly, and return routing frequencies and the true trainable count.

        Columns: ``route_block_<b>`` / ``route_id_block_<b>`` = fraction of target test (OOD) /
        source test (ID) images sent through the fine-tuned copy, averaged over block ``b``'s
        units; ``route_mean`` / ``route_id_mean`` over all units; ``route_units`` the target test
        fractions per unit (``residual_units()`` order, comma-separated); ``route_entropy`` (and per unit
        ``route_entropy_units``) the mean entropy in bits of the policy's routing distribution on target
        test: 1 = coin flips, as an untrained router, 0 = decided; ``n_trainable``.
        """
        o = self.opts
        model = ctx.model
        units = model.residual_units()
        router = attach(model, ctx.target.train.channels, o["policy_width"], o["temperature"])
        routed = [model.get_submodule(path) for path, _ in units]
        policy_ids = {id(p) for p in router.parameters()}
        in_units = {id(p) for r in routed for p in r.parameters()} | policy_ids
        model.requires_grad_(False)
        # Trained: everything outside the units (stem, classifier), the fine-tuned copies, the policy.
        params = [p for p in model.parameters() if id(p) not in in_units]
        params += [p for r in routed for p in r.finetuned.parameters()]
        params += list(router.parameters())
        for p in params:
            p.requires_grad_(True)
        # Modes: trained backbone parts follow `bn`; frozen copies stay in eval (RoutedUnit.train);
        # the policy, a new network, always trains with batch statistics and samples decisions.
        model.train(o["bn"] == "train")
        router.train()

        base_lr = float(self.spec.lr)

        def policy_rates(opt: torch.optim.Optimizer, t: int) -> None:
            if t == 1:  # per-tensor groups (the loop's contract with before_step): set the policy's once
                for g in opt.param_groups:
                    if id(g["params"][0]) in policy_ids:
                        g["lr"] = base_lr * o["policy_lr_mult"]
                        g["weight_decay"] = o["policy_wd"]

        ctx.fit(params, before_step=policy_rates, extra_loss=self.aux_loss(router, len(units)))
        router.last = None

        model.eval()
        freq, entropy = route_statistics(model, ctx.target.test)
        ood = freq.tolist()
        cols: dict[str, Any] = {"n_trainable": sum(p.numel() for p in params),
                                "n_policy_params": sum(p.numel() for p in router.parameters())}
        cols.update(self._per_block(units, ood, "route"))
        cols["route_units"] = ",".join(f"{v:.4g}" for v in ood)
        # Whether the router learned: near 1 bit it routes by coin flip (an untrained router), near 0 it decides.
        cols["route_entropy"] = float(entropy.mean())
        cols["route_entropy_units"] = ",".join(f"{v:.4g}" for v in entropy.tolist())
        source_test = ctx.target.id_test  # the ID test split of the run's protocol (source test in few-shot)
        if len(source_test):
            cols.update(self._per_block(units, route_frequencies(model, source_test).tolist(), "route_id"))
        return cols

    @staticmethod
    def _per_block(units: list[tuple[str, str]], freq: list[float], prefix: str) -> dict[str, float]:
        blocks: dict[str, list[float]] = {}
        for (_, block), f in zip(units, freq):
            blocks.setdefault(block, []).append(f)
        cols = {f"{prefix}_block_{b}": sum(v) / len(v) for b, v in blocks.items()}
        cols[f"{prefix}_mean"] = sum(freq) / len(freq)
        return cols


@METHODS.register("spottune-global-k")
class SpotTuneGlobalK(SpotTune):
    """SpotTune with the global-k loss: about k fine-tuned units per image, shared by all images."""

    name = "spottune-global-k"
    help = "as spottune, + a loss towards k fine-tuned units per image, the same for all images"
    paper = "Guo et al. 2019, SpotTune: Transfer Learning through Adaptive Fine-tuning (global-k variant)"
    order = 63
    options = {
        **SpotTune.options,
        "k": Option(1, "target number of fine-tuned units per image", minimum=0),
        "k_weight": Option(1.0, "λ1, weight of (Σ_l v_l − k)²", minimum=0),
        "entropy_weight": Option(1.0, "λ2, weight of Σ_l −v_l·log v_l", minimum=0),
    }

    def aux_loss(self, router: SpotTuneRouter, units: int) -> Any:
        o = self.opts
        if o["k"] > units:
            raise UsageError(f"option k={o['k']} of method {self.name!r} must be at most the model's "
                             f"number of residual units ({units})")

        def loss() -> torch.Tensor:
            assert router.last is not None, "the training forward stores its decisions"
            return global_k_loss(router.last, o["k"], o["k_weight"], o["entropy_weight"])

        return loss
