"""Paper recipes: every default of a paper's released code in one place (``recipes.toml``).

A recipe fills RunSpec fields and method options *before* resolution, and only those the user did
not give: ``ftbench run --recipe surgical --lr 0.01`` keeps 0.01. It is not a RunSpec field, so a
run's id is the hash of the settings it actually ran with, whichever way they were given.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ftbench.errors import UsageError, unknown

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RECIPES_FILE = Path(__file__).with_name("recipes.toml")
# RunSpec fields a recipe may set (the others, e.g. benchmark, shift, seed, say what is run, not how).
FIELDS = ("lr", "wd", "steps", "epochs", "batch_size", "optimizer", "checkpoints", "shots", "schedule", "warmup",
          "clip_grad", "augment")
# Fields of the training loop: a method without one (linear-probe, zero-shot) does not take them from a recipe.
LOOP_FIELDS = ("schedule", "warmup", "clip_grad", "augment")


@dataclass(frozen=True)
class Recipe:
    """One paper's released defaults; see recipes.toml for the format."""

    name: str
    paper: str
    code: str
    methods: tuple[str, ...]
    fields: dict[str, Any]
    grid: dict[str, list[Any]]
    options: dict[str, dict[str, Any]]  # method name (or "*": every method that has the option) -> options
    benchmarks: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    # Options for a model with a text tower (CLIP), over the general ones: e.g. AutoFT's flyp term,
    # which a model without one cannot compute (``[recipes.NAME.text_tower]``).
    text_tower: dict[str, dict[str, Any]] = field(default_factory=dict)

    def fields_for(self, benchmark: str) -> dict[str, Any]:
        """The RunSpec fields for ``benchmark`` (the per-benchmark table over the general one)."""
        return {**self.fields, **self.benchmarks.get(benchmark, {}).get("fields", {})}

    def options_for(self, method: str, accepted: dict[str, Any], benchmark: str,
                    text_tower: bool = False) -> dict[str, Any]:
        """The options of ``method`` (its ``accepted`` option table) for ``benchmark``, and for a model with
        a text tower when ``text_tower``."""
        out: dict[str, Any] = {}
        per_bench = self.benchmarks.get(benchmark, {}).get("options", {})
        text = self.text_tower if text_tower else {}
        for table in (self.options.get("*", {}), self.options.get(method, {}), text.get("*", {}),
                      text.get(method, {}), per_bench.get("*", {}), per_bench.get(method, {})):
            out.update({k: v for k, v in table.items() if k in accepted})
        return out


def _check(name: str, t: Any) -> Recipe:
    if not isinstance(t, dict):
        raise ValueError(f"recipe {name!r} is not a table")
    bad = [k for k in {**t.get("fields", {}), **t.get("grid", {})} if k not in FIELDS]
    for b in t.get("benchmarks", {}).values():
        bad += [k for k in b.get("fields", {}) if k not in FIELDS]
    if bad:
        raise ValueError(f"recipe {name!r}: fields {bad} are not recipe fields ({', '.join(FIELDS)})")
    return Recipe(name, str(t.get("paper", "")), str(t.get("code", "")), tuple(t.get("methods", ())),
                  dict(t.get("fields", {})), {k: list(v) for k, v in t.get("grid", {}).items()},
                  {k: dict(v) for k, v in t.get("options", {}).items()}, dict(t.get("benchmarks", {})),
                  dict(t.get("notes", {})), {k: str(v) for k, v in t.get("sources", {}).items()},
                  {k: dict(v) for k, v in t.get("text_tower", {}).get("options", {}).items()})


@lru_cache(maxsize=1)
def recipes() -> dict[str, Recipe]:
    """Every recipe of the shipped recipes.toml, by name, in file order."""
    data = tomllib.loads(RECIPES_FILE.read_text())
    return {n: _check(n, t) for n, t in data.get("recipes", {}).items()}


def get_recipe(name: str) -> Recipe:
    """The recipe ``name``; a UsageError listing the recipes if there is none."""
    all_ = recipes()
    if name not in all_:
        raise unknown("recipe", name, list(all_))
    return all_[name]


def apply_recipe(recipe: Recipe, fields: dict[str, Any], given: set[str]) -> dict[str, Any]:
    """RunSpec keyword arguments ``fields`` with the recipe's fields and options filled in where the
    user gave none (``given``: the field names given explicitly; ``options`` given are kept per key).

    Method options are those of ``fields["method"]``; an option the method does not have is skipped.
    A method the recipe does not list is refused: the recipe's settings are another paper's choice for it.
    """
    from ftbench.methods.base import get_method

    method_name = str(fields.get("method", "surgical"))
    if method_name not in recipe.methods:
        raise UsageError(f"recipe {recipe.name!r} is not for method {method_name!r}: it sets the released defaults of "
                         f"methods {', '.join(recipe.methods)}; give this method's settings yourself, or use its "
                         "paper's recipe (ftbench list recipes)")
    out = dict(fields)
    benchmark = str(out.get("benchmark", "digits"))
    method = get_method(method_name)
    length_given = bool({"steps", "epochs"} & given)  # the run's length is one thing: given, or the recipe's
    for k, v in recipe.fields_for(benchmark).items():
        if k in LOOP_FIELDS and "steps" not in method.uses:
            continue  # the release's loop settings, for a method that trains no loop (LP-FT's probe)
        if k not in given and not (k in ("steps", "epochs") and length_given):
            out[k] = v
    opts = dict(out.get("options") or ())
    for k, v in recipe.options_for(method.name, method.options, benchmark, _has_text_tower(out, benchmark)
                                   if recipe.text_tower else False).items():
        opts.setdefault(k, v)
    # the recipe's values for options that do not apply under the run's (e.g. its C grid with the user's
    # lp_select=fixed) are left out: they are not the user's, and Method.resolve refuses such values
    filled = {k: o.default for k, o in method.options.items()} | {k: v for k, v in opts.items() if k in method.options}
    given_opts = dict(fields.get("options") or ())
    opts = {k: v for k, v in opts.items()
            if k in given_opts or k not in method.options or method.inapplicable(k, filled) is None}
    out["options"] = tuple(sorted(opts.items()))
    return out


def _has_text_tower(fields: dict[str, Any], benchmark: str) -> bool:
    """Whether the run's model (given, or the benchmark's default) has a text tower; False for a model or
    benchmark that does not exist (resolution then says so)."""
    from ftbench.data.base import get_benchmark
    from ftbench.models.base import get_model_entry

    try:
        model = fields.get("model") or get_benchmark(benchmark).default_model
        return bool(get_model_entry(str(model)).zero_shot)
    except UsageError:
        return False


def describe(recipe: Recipe) -> list[str]:
    """Lines for ``ftbench list recipes``."""
    lines = [f"paper: {recipe.paper}", f"released code: {recipe.code}",
             f"methods: {', '.join(recipe.methods)}"]
    if recipe.fields:
        lines.append("fields: " + ", ".join(f"{k}={v}" for k, v in recipe.fields.items()))
    for k, v in recipe.grid.items():
        lines.append(f"grid (suites): {k} = {', '.join(map(str, v))}")
    for m, opts in recipe.options.items():
        lines.append(f"options ({'every method' if m == '*' else m}): " + ", ".join(f"{k}={v}" for k, v in opts.items()))
    for m, opts in recipe.text_tower.items():
        lines.append(f"options on a model with a text tower ({'every method' if m == '*' else m}): "
                     + ", ".join(f"{k}={v}" for k, v in opts.items()))
    for b, t in recipe.benchmarks.items():
        parts = [f"{k}={v}" for k, v in t.get("fields", {}).items()]
        parts += [f"{m}: {k}={v}" for m, o in t.get("options", {}).items() for k, v in o.items()]
        lines.append(f"on {b}: " + ", ".join(parts))
    for k, v in recipe.notes.items():
        if isinstance(v, list):
            lines += [f"{k}: {item}" for item in v]
        else:
            lines.append(f"{k}: {v}")
    lines += [f"source of {k}: {v}" for k, v in recipe.sources.items()]
    return lines


def check_suite_recipe(value: Any, where: str) -> Recipe:
    """The recipe a suite names (``recipe = "NAME"``): one name, a known one."""
    if not isinstance(value, str):
        raise UsageError(f"{where}: recipe must be one recipe name, got {value!r}; accepted: {', '.join(recipes())}")
    try:
        return get_recipe(value)
    except UsageError as e:
        raise UsageError(f"{where}: {e}") from None
