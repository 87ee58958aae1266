"""The method interface: one small registered class per fine-tuning method (DomainBed style).

A method says which blocks it trains (``trainable_blocks``), which hyperparameters it uses, which
options it takes (``--set key=value``), and how it trains (``run``), using the runner's
:class:`~ftbench.train.context.TrainContext` helpers for the actual loop.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ftbench.errors import UsageError, unknown
from ftbench.methods import BUILTIN_MODULE
from ftbench.registry import Registry
from ftbench.spec import HYPERPARAMETERS, OPTIMIZERS, RunSpec
from ftbench.validate import RUN_NUMBERS

if TYPE_CHECKING:
    from ftbench.train.context import TrainContext

DEFAULT_STEPS = 50
# The limit of --steps (ftbench/validate.py), for options counted in steps (recompute every k steps).
STEPS_LIMIT = int(RUN_NUMBERS["steps"].high)


@dataclass(frozen=True)
class Option:
    """A method option set with ``--set name=value``."""

    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None  # numeric options: smallest accepted value (and finite)
    in_variant: bool = True  # False: a non-default value does not make a separate report row
    # Counts (widths, ranks, trials, ...): ftbench's limit against runaway work, far above the papers'
    # largest setting (docs/methods.md#limits); a larger value is refused with the accepted range.
    maximum: float | None = None
    # The option has an effect only when other options have one of these values, e.g.
    # ``{"lp_select": ("fixed",)}``; otherwise it is reset to its default (it changes neither result nor
    # run id), and a value given for it is refused (``ftbench run``) or noted (suites): Method.inapplicable.
    applies_when: dict[str, tuple[Any, ...]] | None = dataclasses.field(default=None, compare=False, hash=False)

    def requirement(self) -> str:
        """What a valid value is, in words (for error messages)."""
        noun = "integer" if type(self.default) is int else "number"
        if self.minimum is None:
            return f"a finite {noun}"
        if self.minimum == 0:
            return f"a non-negative {noun}"
        if self.minimum == 1 and noun == "integer":
            return "a positive integer"
        return f"{'an' if noun == 'integer' else 'a'} {noun} >= {self.minimum:g}"

    def parse(self, name: str, value: Any, method: str) -> Any:
        kind = type(self.default)
        try:
            if kind is bool and isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                v: Any = value.lower() in ("true", "1", "yes")
            else:
                v = kind(value)
        except (TypeError, ValueError):
            raise UsageError(
                f"option {name}={value!r} of method {method!r} must be a {kind.__name__}"
            ) from None
        if self.choices is not None and v not in self.choices:
            raise unknown(f"value for option {name} of method {method!r}:", v, self.choices)
        if kind in (int, float) and (not math.isfinite(v) or (self.minimum is not None and v < self.minimum)):
            raise UsageError(f"option {name}={v!r} of method {method!r} must be {self.requirement()}")
        if kind in (int, float) and self.maximum is not None and v > self.maximum:
            low, high = _plain(self.minimum if self.minimum is not None else -math.inf), _plain(self.maximum)
            words = f"an integer in {low}..{high}" if kind is int else f"a number in [{low}, {high}]"
            raise UsageError(f"option {name}={v!r} of method {method!r} must be {words} (ftbench's limit, far above "
                             "the papers' settings: docs/methods.md#limits)")
        return v + 0.0 if kind is float else v  # -0.0 is 0.0: one value, one run id


def _plain(x: float) -> str:
    """A bound as the messages write it: 10000000, not 1e+07."""
    return str(int(x)) if math.isfinite(x) and float(x).is_integer() else f"{x:g}"


BN_OPTION = Option(
    "frozen",
    "BatchNorm in trained blocks: 'frozen' = running stats kept (eval mode), as the surgical and LP-FT "
    "releases train; 'train' = batch statistics, running stats updated. BatchNorm in frozen blocks is "
    "always frozen.",
    ("frozen", "train"),
)
# SpotTune's release trains with net.train() (main.py:74), so its fine-tuned copies update their statistics.
BN_OPTION_TRAIN = dataclasses.replace(BN_OPTION, default="train")
# A CLIP model's features for the probe and the fine-tuning after it (issue 22 §3): open_clip's image
# embedding normalised to unit length as its zero-shot evaluation does ("unit"), or the raw
# ``encode_image`` output, as LP-FT's release feeds its probe and fine-tuning (clip_model.py).
# Under --protocol id-ood on a model with a text tower only (ftbench.spec.resolve checks it).
FEATURES_OPTION = Option(
    "unit",
    "a CLIP model's image features: 'unit' = normalised to unit length (open_clip's zero-shot evaluation); "
    "'raw' = encode_image's output as LP-FT's release probes and fine-tunes it (clip-* and digits-clip, "
    "--protocol id-ood)",
    ("unit", "raw"),
)
# CLIP's image projection ``visual.proj`` (768x512 on clip-vit-b16; in block 3) trained with the classifier
# head, as the PETL study's release does: its head is Sequential(proj, text-embedding classifier)
# (experiment/build_model.py:122-124) and TUNE_MODULES always holds 'head' (build_model.py:13-14). Only on a
# model that has it (a CLIP ViT): ftbench.methods.petl.check_projection.
PROJ_OPTION = Option(
    "frozen",
    "CLIP's image projection visual.proj (clip-* ViTs, digits-clip): 'frozen' = kept as pretrained; 'train' = "
    "trained with the classifier head, as the PETL study's release (its head is Sequential(proj, classifier))",
    ("frozen", "train"),
)


class DecoupledDecay:
    """A ``before_step(opt, t)`` hook: AdamW's decoupled weight decay on an optimizer built with wd 0.

    Before each update, every parameter that has a gradient is multiplied by ``1 − lr·wd`` with its
    group's lr: exactly what ``torch.optim.AdamW`` does before its Adam step, so Adam + this hook is
    AdamW (tested bit for bit); with SGD it is SGDW. (The loop's own Adam couples wd as L2.) Under a
    schedule the rate is the scheduled one (the group's ``lr_scale``, set by the loop), as AdamW's.
    """

    def __init__(self, wd: float) -> None:
        self.wd = float(wd)

    def __call__(self, opt: Any, t: int) -> None:
        import torch

        if self.wd == 0.0:
            return
        with torch.no_grad():
            for g in opt.param_groups:
                ps = [p for p in g["params"] if p.grad is not None]
                if ps:
                    torch._foreach_mul_(ps, 1.0 - g["lr"] * g.get("lr_scale", 1.0) * self.wd)


DECAY_OPTION = Option(
    "decoupled",
    "weight decay: 'decoupled' = AdamW's (the AutoFT, WiSE-FT and PETL releases); 'coupled' = L2 added to "
    "the gradient, as ftbench's loop (Adam(weight_decay))",
    ("decoupled", "coupled"),
)


def decay_arguments(decay: str, wd: float) -> dict[str, Any]:
    """Keyword arguments of the loop (``ctx.fit``/``loop.fit``) for weight decay ``wd`` applied as ``decay``."""
    if decay == "decoupled":
        return {"wd": 0.0, "before_step": DecoupledDecay(wd)}
    return {"wd": wd}


class Method:
    """Base class. Subclasses set the class attributes and implement ``trainable_blocks``/``run``."""

    name: ClassVar[str]
    help: ClassVar[str]
    paper: ClassVar[str] = ""
    order: ClassVar[int] = 100  # row order in reports
    takes_blocks: ClassVar[bool] = False
    default_blocks: ClassVar[tuple[str, ...]] = ()
    uses: ClassVar[frozenset[str]] = frozenset(HYPERPARAMETERS)
    options: ClassVar[dict[str, Option]] = {}
    # With a model that has a zero-shot head (CLIP) under a protocol that gives the ID task a new
    # classifier: start from the zero-shot head even though the method trains the classifier (as
    # WiSE-FT's and AutoFT's released code start). Methods that do not train it always do, unless their
    # head_init is "fresh" because they build their head themselves (zero-shot, flyp).
    zero_shot_start: ClassVar[bool] = False
    # The method makes the classifier it starts from itself (a probe, the zero-shot head), whatever
    # the head was before it runs: --head-init has no effect on it and is refused.
    builds_head: ClassVar[bool] = False
    # Hyperparameters of ``uses`` that have an effect only under some option values (as Option.applies_when),
    # e.g. linear-probe's --wd (its L2 strength) only with select=fixed.
    uses_when: ClassVar[dict[str, dict[str, tuple[Any, ...]]]] = {}

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.opts: dict[str, Any] = spec.options_dict

    # --- resolution ------------------------------------------------------------------------
    @classmethod
    def resolve(cls, spec: RunSpec, block_names: tuple[str, ...]) -> RunSpec:
        """Validate blocks, options and hyperparameters; fill defaults; drop unused ones."""
        if spec.blocks and not cls.takes_blocks:
            raise UsageError(f"method {cls.name!r} takes no --block (it trains: {cls.help})")
        blocks = spec.blocks or (cls.default_blocks if cls.takes_blocks else ())
        given = dict(spec.options)
        for key in given:
            if key not in cls.options:
                accepted = ", ".join(cls.options) or "none"
                raise UsageError(f"method {cls.name!r} has no option {key!r}; accepted: {accepted}")
        opts = {k: o.parse(k, given.get(k, o.default), cls.name) for k, o in cls.options.items()}
        for key in cls.options:  # options without effect under the others' values: refused if set, else reset
            cond = cls.inapplicable(key, opts)
            if cond is not None:
                if key in given and opts[key] != cls.options[key].default:
                    raise UsageError(cls.inapplicable_message(key, cond, "option"))
                opts[key] = cls.options[key].default
        changes: dict[str, Any] = {"blocks": blocks, "options": tuple(sorted(opts.items()))}
        if spec.steps is not None and spec.epochs is not None:
            raise UsageError("give --steps or --epochs, not both")
        if "steps" in cls.uses and spec.steps is None and spec.epochs is None:
            changes["steps"] = DEFAULT_STEPS
        for name in ("steps", "epochs", "batch_size"):
            v = changes.get(name, getattr(spec, name))
            if name in cls.uses and v is not None and (not isinstance(v, int) or v < 1):
                raise UsageError(f"{name} must be a positive integer, got {v!r}")
        for name in ("lr", "wd"):
            v = getattr(spec, name)
            if name in cls.uses and (v is None or not (float(v) >= 0) or (name == "lr" and float(v) == 0)):
                raise UsageError(f"{name} must be a {'positive' if name == 'lr' else 'non-negative'} number, got {v!r}")
            if name in cls.uses:
                changes[name] = float(v)
        if "optimizer" in cls.uses and spec.optimizer not in OPTIMIZERS:
            raise unknown("optimizer", spec.optimizer, OPTIMIZERS)
        ck = spec.checkpoints
        if ck is not None and (not isinstance(ck, int) or ck < 1):
            raise UsageError(f"checkpoints must be a positive integer, got {ck!r}")
        if "steps" not in cls.uses or ck == 1:
            changes["checkpoints"] = None  # no loop to checkpoint, or only the end: same run
        for h in HYPERPARAMETERS:
            if h not in cls.uses:
                changes[h] = None
        return dataclasses.replace(spec, **changes)

    @classmethod
    def inapplicable(cls, key: str, opts: dict[str, Any]) -> tuple[str, str] | None:
        """Why option or hyperparameter ``key`` has no effect under options ``opts`` (the others' values,
        defaults filled): ``(needed, given)`` as ``("lp_select=fixed", "lp_select=val")``; None when it applies."""
        cond = cls.options[key].applies_when if key in cls.options else cls.uses_when.get(key)
        for name, accepted in (cond or {}).items():
            value = opts.get(name, cls.options[name].default)
            if value not in accepted:
                return f"{name}={'|'.join(map(str, accepted))}", f"{name}={value}"
        return None

    @classmethod
    def inapplicable_message(cls, key: str, cond: tuple[str, str], kind: str = "option") -> str:
        """The refusal of ``key`` (an option, or a ``--flag``) given where :meth:`inapplicable` says it has
        no effect."""
        needed, given = cond
        what = f"option {key}" if kind == "option" else f"--{key.replace('_', '-')}"
        return (f"{what} of method {cls.name!r} applies only with {needed} (given: {given}); "
                f"set --set {needed.split('|')[0]} or drop it")

    @classmethod
    def check_given(cls, spec: RunSpec, options: Any = (), flags: Any = ()) -> None:
        """Refuse (one UsageError) what the user gave explicitly that has no effect on resolved ``spec``:
        ``options`` (names given with --set) that do not apply under the other options' values, and
        ``flags`` (hyperparameter names, or ``checkpoints``) this method does not use."""
        opts = spec.options_dict
        for key in options:
            cond = cls.inapplicable(key, opts) if key in cls.options else None
            if cond is not None:
                raise UsageError(cls.inapplicable_message(key, cond, "option"))
        for key in flags:
            problem = cls.unused_problem(key, opts)
            if problem:
                raise UsageError(problem)

    @classmethod
    def unused_problem(cls, key: str, opts: dict[str, Any]) -> str | None:
        """Why hyperparameter ``key`` (or ``checkpoints``) has no effect with this method under ``opts``, as
        one line; None when it has one."""
        flag = f"--{key.replace('_', '-')}"
        if key == "checkpoints":
            if "steps" in cls.uses:
                return None
            return (f"--checkpoints has no effect with method {cls.name!r}, which trains no optimizer loop to "
                    "checkpoint; drop it")
        if key in cls.uses or key in cls.uses_when:
            cond = cls.inapplicable(key, opts)
            return None if cond is None else cls.inapplicable_message(key, cond, "flag")
        used = [f"--{h.replace('_', '-')}" + (f" (with {'/'.join(f'{k}={v[0]}' for k, v in cls.uses_when[h].items())})"
                                              if h in cls.uses_when else "")
                for h in HYPERPARAMETERS if h in cls.uses or h in cls.uses_when]
        uses = (f"uses only {', '.join(used)}" if used
                else "uses none of --lr/--wd/--steps/--epochs/--batch-size/--optimizer")
        return (f"{flag} has no effect with method {cls.name!r}, which {uses} ({cls.help}); drop {flag} "
                f"(ftbench list methods {cls.name})")

    @classmethod
    def check_protocol(cls, protocol: Any) -> None:
        """Refuse (one UsageError) a protocol this method cannot run in; default: it runs in every one.

        ``protocol`` is a :class:`ftbench.protocols.base.Protocol`; with ``protocol.fresh_head`` the ID
        task's classifier is new when the method starts (see :attr:`head_init`)."""

    @classmethod
    def check_entry(cls, model: str, entry: Any) -> None:
        """Refuse (one UsageError) a model this method cannot train (``entry``: its
        :class:`~ftbench.models.base.ModelEntry`); default: any."""

    @classmethod
    def notice(cls, spec: RunSpec) -> str | None:
        """A line the CLI prints (on stderr) before running a resolved ``spec``, when its settings
        deserve a warning the user would otherwise not see (e.g. a search budget far below the
        paper's). Default: none."""
        return None

    def variant(self) -> str:
        """Non-default options as ``k=v`` text (part of a report row's label)."""
        return ",".join(f"{k}={v}" for k, v in sorted(self.opts.items())
                        if self.options[k].in_variant and v != self.options[k].default)

    # --- behaviour -------------------------------------------------------------------------
    def head_init(self, block_names: list[str]) -> str:
        """How the ID task's new classifier starts, under a protocol that gives one (id-ood):
        ``"fresh"`` — re-initialised, as LP-FT's fine-tuning baseline — for methods that train the
        classifier; ``"probe"`` — the linear probe of the pretrained features, fit on the train split
        before the method runs — for methods that do not (their readout would otherwise stay random)."""
        return "fresh" if "last" in self.trainable_blocks(block_names) else "probe"

    def trainable_blocks(self, block_names: list[str]) -> list[str]:
        """Blocks whose parameters this method may change."""
        raise NotImplementedError

    def run(self, ctx: TrainContext) -> dict[str, Any]:
        """Train ``ctx.model`` in place; return extra result columns (may be empty)."""
        raise NotImplementedError

    def extra_states(self, ctx: TrainContext) -> Iterator[dict[str, Any]]:
        """After ``run``: further states of the model to evaluate, one extra result row each.

        For each, put ``ctx.model`` into the state and yield the columns that tell its row apart
        (e.g. WiSE-FT's ``{"alpha": 0.5}``); the runner evaluates the model at each yield and writes
        a row with ``final=False``. When exhausted, the model must be as ``run`` left it (the final
        row). Default: none.
        """
        return iter(())


METHODS: Registry[type[Method]] = Registry("method", "ftbench.methods", BUILTIN_MODULE)


def _register_builtin() -> None:
    """Import every module of the ``ftbench.methods`` package: each registers its methods."""
    import importlib
    import pkgutil

    import ftbench.methods as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"ftbench.methods.{info.name}")


def get_method(name: str) -> type[Method]:
    METHODS.import_builtin(name)
    if name not in METHODS:
        _register_builtin()
    return METHODS.get(name)


def all_methods() -> list[type[Method]]:
    _register_builtin()
    return sorted((METHODS.get(n) for n in METHODS.names()), key=lambda m: (m.order, m.name))
