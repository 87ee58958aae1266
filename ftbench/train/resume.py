"""Resuming an interrupted run from its last checkpoint (runs with ``checkpoints``).

At each checkpoint step of a run with a scratch folder (``workdir``), after the checkpoint's
evaluation, the run's state is written atomically to ``<workdir>/resume.pt``: the model's state
dict, the values of every tensor the optimizer trains (also those outside the model), the
optimizer's state (with each param group's learning rate and weight decay), torch's global RNG
state(s), the loop position (which ``ctx.fit`` call of the run, which step in it), the generator
state that fit started from, and the checkpoint evaluations so far.

The file holds tensors and plain containers (dicts, lists, tuples, numbers, strings) only, and is
read with ``torch.load(weights_only=True)``: results folders are shared (between people, with CI),
so a ``resume.pt`` planted there must not run code when a run resumes. A file that does not load
that way, or lacks a field, is ignored with a warning and the run starts over. So is one whose
bytes are not those recorded when it was written for this run id (``resume.pt.sha256``,
ftbench/integrity.py: an edited or swapped state, or one from an older ftbench): it is never believed.

The state outlives the training: it is removed only once the run's result row is written
(:func:`ftbench.execution.runner.discard_work`, called by whoever writes the row), so a process killed
between the end of training and the write (WiSE-FT's evaluation of its α grid, say) resumes at
the last checkpoint instead of training again from step 0.

A restarted run executes the method again from the start: everything before the interrupted fit
is deterministic (same seed, same data, same code) and is simply redone, earlier fits included, so
whatever the method computes between fits sees the same model. The interrupted fit draws the same
batch indices, loads the saved state and continues after the saved step, so the result equals
the uninterrupted run's exactly.

Only fits that the saved state describes completely are resumed: fits without hooks, or whose
hooks (``before_step``, ``extra_loss``, ``loss_fn``) all implement ``state_dict()`` and
``load_state_dict(state)``. A hook keeping state of its own (a schedule, a running mean, module
modes it switched) without that protocol makes the fit save nothing, so an interrupted run
restarts it from the beginning; correct, only slower.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

import torch

from ftbench import integrity
from ftbench.errors import disk_error

STATE_FILE = "resume.pt"
VERSION = 1
HOOKS = ("before_step", "extra_loss", "loss_fn")
# What a usable state holds (a file missing one is not ours, or from a broken writer: ignored).
FIELDS = ("version", "run_id", "fit", "step", "global_step", "generator", "model", "params", "optimizer", "rng",
          "cuda_rng", "hooks", "evals", "train_seconds")


class Resume:
    """Saves a run's state at checkpoints and restores it in a restarted run."""

    def __init__(self, path: Path, saved: dict[str, Any] | None = None) -> None:
        self.path = path
        self.saved = saved
        self.evals: dict[int, dict[str, float]] = dict(saved["evals"]) if saved else {}
        self.train_seconds: float = float(saved["train_seconds"]) if saved else 0.0
        self.resumed_step: int | None = saved["global_step"] if saved else None
        self._fit = -1
        self._done = 0
        self._gen_start: torch.Tensor | None = None
        self._opt: torch.optim.Optimizer | None = None
        self._hooks: list[Any] = []
        self._resumable = False

    @classmethod
    def open(cls, workdir: Path | str, run_id: str) -> Resume:
        """The resume state of run ``run_id`` in ``workdir``, if a usable one is there."""
        path = Path(workdir) / STATE_FILE
        saved = None
        why = integrity.check(path, {"run_id": run_id}) if path.is_file() else ""
        if why:  # edited, replaced, another run's, or from an older ftbench: never believed
            print(f"warning: ignored the resume state {path} ({why}); the run starts over", file=sys.stderr)
        elif path.is_file():
            try:  # tensors and plain containers only: never unpickle code from a shared folder
                saved = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # unreadable, truncated, or holding Python objects
                found = re.search(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.]+)", str(e))  # either wording of torch
                reason = f"it holds Python objects ({found.group(1)})" if found else f"unreadable: {type(e).__name__}"
                print(f"warning: ignored the resume state {path} ({reason}); the run starts over", file=sys.stderr)
                saved = None
            if isinstance(saved, dict) and saved.get("version") == VERSION and saved.get("run_id") == run_id:
                missing = [k for k in FIELDS if k not in saved]
                if missing:
                    print(f"warning: ignored the resume state {path} (no {', '.join(missing)}); the run starts "
                          "over", file=sys.stderr)
                    saved = None
            else:
                saved = None
        return cls(path, saved)

    # --- called by TrainContext.fit ------------------------------------------------------------

    def fit_kwargs(self, ctx: Any, steps: int, done: int, hooks: dict[str, Any]) -> dict[str, Any]:
        """Extra arguments of :func:`ftbench.train.loop.fit` for the run's next fit (``ctx.fits``
        index ``len(ctx.fits)``, ``done`` loop steps before it, ``steps`` in it, its ``hooks``)."""
        self._fit, self._done = len(ctx.fits), done
        self._gen_start = ctx.generator.get_state()
        self._hooks = [hooks.get(k) for k in HOOKS]
        self._resumable = all(h is None or _has_state(h) for h in self._hooks)
        s = self.saved
        if s is None or self._fit != s["fit"]:
            return {"on_optimizer": self._keep}  # before it: redone as it was; after it: new
        ctx.generator.set_state(s["generator"])  # (equal already: everything before is deterministic)
        # The model now, before the fit caches frozen-prefix activations from it.
        ctx.model.load_state_dict(s["model"])
        return {"start_step": s["step"], "on_optimizer": self._restore}

    def fit_done(self) -> None:
        """The fit that was just running has ended."""
        if self.saved is not None and self._fit == self.saved["fit"]:
            self.saved = None  # resumed: the rest of the run is new
        self._opt = None

    def _keep(self, opt: torch.optim.Optimizer) -> None:
        self._opt = opt

    def _restore(self, opt: torch.optim.Optimizer) -> None:
        s = self.saved
        assert s is not None
        self._opt = opt
        with torch.no_grad():
            for p, v in zip(_trained(opt), s["params"], strict=True):
                p.copy_(v)
        opt.load_state_dict(s["optimizer"])
        torch.set_rng_state(s["rng"])
        if s.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["cuda_rng"])
        for hook, state in zip(self._hooks, s["hooks"], strict=True):
            if hook is not None:
                hook.load_state_dict(state)

    # --- called by the runner at each checkpoint -----------------------------------------------

    def save(self, ctx: Any, global_step: int, evals: dict[int, dict[str, float]], train_seconds: float) -> None:
        """Write the run's state at ``global_step`` (atomically: a temporary file renamed into place)."""
        if self._opt is None or self._gen_start is None or not self._resumable:
            return  # outside ctx.fit, or hooks whose state cannot be saved: nothing to resume from
        if self.saved is not None:
            return  # redoing the fits before the saved one: keep the later state
        state = {
            "version": VERSION,
            "run_id": ctx.spec.run_id,
            "fit": self._fit,
            "step": global_step - self._done,
            "global_step": global_step,
            "generator": self._gen_start,
            "model": {k: v.detach().cpu().clone() for k, v in ctx.model.state_dict().items()},
            "params": [p.detach().cpu().clone() for p in _trained(self._opt)],
            "optimizer": self._opt.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "hooks": [None if h is None else h.state_dict() for h in self._hooks],
            # Plain floats: benchmark metrics may be numpy scalars, which weights_only=True refuses.
            "evals": {int(k): {str(m): float(v) for m, v in e.items()} for k, e in evals.items()},
            "train_seconds": float(train_seconds),
        }
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:  # a file object: torch.save then chains the OSError of a failed write
                torch.save(state, fh)
            integrity.record(self.path, {"run_id": ctx.spec.run_id}, content=tmp)  # before the rename
            os.replace(tmp, self.path)
        except Exception as e:  # a full or read-only disk stops a sweep (ftbench.errors.DiskError)
            found = disk_error(e, self.path)
            if found is not None:
                raise found from None
            raise
        finally:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:  # pragma: no cover - read-only: it could not have been made
                pass

    def discard(self) -> None:
        """Remove the resume state (and its content hash record)."""
        integrity.remove(self.path)


def _has_state(hook: Any) -> bool:
    return callable(getattr(hook, "state_dict", None)) and callable(getattr(hook, "load_state_dict", None))


def _trained(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in opt.param_groups for p in group["params"]]
