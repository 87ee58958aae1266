"""RunSpec — the frozen, hashable description of one run — and suite expansion.

A spec is *resolved* before it runs or is hashed: benchmark, model and method fill their defaults
and reject what they cannot take, and hyperparameters a method does not use are set to ``None``.
The run id is a hash of the resolved spec, so the same run asked for in two ways (e.g. with and
without ``--model digits-resnet``) has one id, and sweeps skip it once it has a result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftbench.errors import UsageError, unknown

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SPEC_VERSION = 1  # bump when the meaning of a field changes, so old run ids are not reused

# Hyperparameter fields a method may or may not use (see Method.uses).
HYPERPARAMETERS = ("lr", "wd", "steps", "epochs", "batch_size", "optimizer")
OPTIMIZERS = ("adam", "sgd")
# Fields added after 0.1.0 and their defaults: they enter the run id only when set to something
# else, so the ids of runs made before them stay valid (their result folders are read as done).
LATER_FIELDS = {"checkpoints": None, "weights": None, "protocol": "few-shot", "data_version": None}


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines a run's result, except the device (recorded in the results: bf16 on
    CUDA and float32 on CPU can differ slightly for the same run id)."""

    benchmark: str = "digits"
    shift: str | None = None  # None: the protocol's default (few-shot: corruption where the benchmark has it)
    corruption: str | None = None
    severity: int | None = None
    shots: int | None = None
    model: str | None = None
    method: str = "surgical"
    blocks: tuple[str, ...] = ()
    lr: float | None = 1e-3
    wd: float | None = 1e-4
    steps: int | None = None
    epochs: int | None = None
    batch_size: int | None = 64
    optimizer: str | None = "adam"
    seed: int = 0
    options: tuple[tuple[str, Any], ...] = ()
    checkpoints: int | None = None  # evaluate at this many evenly spaced points of fine-tuning
    weights: str | None = None  # pretrained weights: None (the model's default), "scratch" or a state-dict file
    protocol: str = "few-shot"  # which splits fine-tune, select and report (ftbench/protocols, docs/protocols.md)
    # Set by resolution, never by the user: the benchmark's revision of this shift's data
    # (Benchmark.data_version), so results of a redefined shift are not taken for the new one.
    data_version: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["blocks"] = list(self.blocks)
        d["options"] = dict(self.options)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        d = dict(d)
        d["blocks"] = tuple(str(b) for b in d.get("blocks") or ())
        d["options"] = tuple(sorted((d.get("options") or {}).items()))
        return cls(**d)

    @property
    def run_id(self) -> str:
        """Stable hash of the (resolved) configuration: 16 hex characters."""
        # Fields added after 0.1.0 enter the hash only when set, so earlier run ids stay valid.
        d = {k: v for k, v in self.to_dict().items() if not (k in LATER_FIELDS and v == LATER_FIELDS[k])}
        payload = json.dumps({"v": SPEC_VERSION, **d}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @property
    def options_dict(self) -> dict[str, Any]:
        return dict(self.options)

    def blocks_label(self) -> str:
        return ",".join(self.blocks)

    def settings(self, names: tuple[str, ...] = (*HYPERPARAMETERS, "shots")) -> list[str]:
        """``name=value`` for each field of ``names`` that is set (floats as ``%g``): how a run's
        settings are printed (the sweep's run lines, ``ftbench run``'s settings line)."""
        return [f"{n}={v:g}" if isinstance(v, float) else f"{n}={v}"
                for n in names if (v := getattr(self, n)) is not None]

    def columns(self) -> dict[str, Any]:
        """The result-row columns that describe this run: ``run_id`` and every spec field, with
        ``blocks`` as a label like ``"1,2"`` and ``options`` as a dict (stored as JSON)."""
        d = self.to_dict()
        return {"run_id": self.run_id, **d, "blocks": self.blocks_label(), "options": d["options"]}


def normalize_blocks(blocks: list[str] | tuple[str, ...], accepted: tuple[str, ...], model: str) -> tuple[str, ...]:
    """Validate block names against a model's blocks; return them unique, in model order."""
    out = set()
    for b in blocks:
        name = str(b).strip().lower()
        if name not in accepted:
            raise UsageError(
                f"block {b!r} is out of range for model {model!r}; accepted: {', '.join(accepted)}"
            )
        out.add(name)
    return tuple(b for b in accepted if b in out)


def resolve(spec: RunSpec) -> RunSpec:
    """Fill defaults and validate ``spec`` against its benchmark, model and method."""
    from ftbench.data.base import get_benchmark
    from ftbench.methods.base import get_method
    from ftbench.models.base import get_model_entry
    from ftbench.protocols.base import get_protocol
    from ftbench.validate import check_run_numbers

    check_run_numbers(spec)  # types and ranges of every number first (ftbench/validate.py)
    bench = get_benchmark(spec.benchmark)
    protocol = get_protocol(spec.protocol)
    spec = protocol.resolve(bench, spec)
    spec = dataclasses.replace(spec, data_version=bench.data_version(spec))
    entry = get_model_entry(spec.model or bench.default_model)
    spec = dataclasses.replace(spec, model=spec.model or bench.default_model)
    method_cls = get_method(spec.method)
    method_cls.check_protocol(protocol)
    method_cls.check_entry(spec.model, entry)
    blocks = normalize_blocks(spec.blocks, entry.block_names, spec.model)
    spec = dataclasses.replace(spec, blocks=blocks)
    spec = method_cls.resolve(spec, entry.block_names)
    if spec.weights is not None:
        from ftbench.models.weights import resolve_weights

        spec = dataclasses.replace(spec, weights=resolve_weights(spec.weights, entry))
    protocol.check_weights(bench, spec, entry.weights is not None)
    if spec.seed < 0:
        raise UsageError(f"seed must be >= 0, got {spec.seed}")
    return spec


# ---------------------------------------------------------------------------------------------
# Suites (benchmarks.toml)

# Suite keys and the RunSpec field each one sets; list values are grid axes.
SUITE_KEYS: dict[str, str] = {
    "benchmark": "benchmark",
    "shift": "shift",
    "corruption": "corruption",
    "severity": "severity",
    "shots": "shots",
    "model": "model",
    "method": "method",
    "block": "blocks",
    "lr": "lr",
    "wd": "wd",
    "steps": "steps",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "optimizer": "optimizer",
    "seed": "seed",
    "checkpoints": "checkpoints",
    "weights": "weights",
    "protocol": "protocol",
}
SUITE_META = ("description", "include", "options", "slurm", "ray",  # slurm/ray: executor settings (ftbench.sweep)
              "recipe")  # a paper's released defaults for what the suite does not set (ftbench/papers)


def default_suites_file() -> Path:
    """``./benchmarks.toml`` when present, else the copy shipped inside the package."""
    local = Path("benchmarks.toml")
    return local if local.is_file() else Path(__file__).with_name("benchmarks.toml")


def _line_of(text: str, suite: str, key: str | None = None) -> int | None:
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(rf"\s*\[suites\.{re.escape(suite)}\]", line)), None)
    if start is None or key is None:
        return None if start is None else start + 1
    for i in range(start + 1, len(lines)):
        if lines[i].lstrip().startswith("["):
            break
        if re.match(rf"\s*{re.escape(key)}\s*=", lines[i]):
            return i + 1
    return start + 1


def load_suites(path: Path) -> tuple[dict[str, dict[str, Any]], str]:
    """Parse a suites file; malformed TOML becomes a UsageError naming the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read suites file {str(path)!r}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not a text (UTF-8) file: byte 0x{e.object[e.start]:02x} at offset {e.start}; "
                         "a suites file is TOML") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: malformed TOML: {e}") from None
    suites = data.get("suites")
    if not isinstance(suites, dict) or not suites:
        raise UsageError(f"{path}: no [suites.NAME] tables found")
    return suites, text


def suite_descriptions(path: Path | None = None) -> dict[str, str]:
    """Suite name -> its description, in file order."""
    suites, _ = load_suites(path or default_suites_file())
    return {n: str(t.get("description", "")) if isinstance(t, dict) else "" for n, t in suites.items()}


def _as_list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else [v]


def _block_sets(v: Any) -> list[tuple[str, ...]]:
    # block = 1 | "last" | [1, 2, "last"] (each entry one block set) | [[1, 2], ["last"]]
    return [tuple(str(b) for b in _as_list(entry)) for entry in _as_list(v)]


def expand_suite(name: str, path: Path | None = None) -> list[RunSpec]:
    """Expand suite ``name`` into resolved, deduplicated RunSpecs (in a stable order)."""
    path = path or default_suites_file()
    suites, text = load_suites(path)
    return _expand(name, suites, text, path, stack=())


def suites_file_key(path: Path) -> tuple[str, ...] | None:
    """What the expansion of suites file ``path`` depends on besides the code, for the catalog cache:
    its path, a hash of its text and the working directory (relative weights paths); None if it
    cannot be read (the expansion's own error then says why)."""
    import hashlib
    import os

    try:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None
    return (str(Path(path).resolve()), digest, os.getcwd())


def expand_suite_cached(name: str, path: Path | None = None) -> list[RunSpec]:
    """:func:`expand_suite`, from the catalog cache in a fresh process (ftbench/catalog.py): spares
    ``sweep --dry-run`` the imports of every registry. Keyed by :func:`suites_file_key`; a cached spec
    whose weights file is gone is expanded again, which says so."""
    from ftbench.catalog import cached

    path = Path(path or default_suites_file())
    key = suites_file_key(path)
    if key is None:
        return expand_suite(name, path)
    dicts = cached(("suite", name, *key), lambda: [s.to_dict() for s in expand_suite(name, path)])
    specs = [RunSpec.from_dict(d) for d in dicts]
    if any(s.weights not in (None, "scratch") and not Path(s.weights).is_file() for s in specs):
        return expand_suite(name, path)
    return specs


def _expand(name: str, suites: dict, text: str, path: Path, stack: tuple[str, ...]) -> list[RunSpec]:
    if name not in suites:
        raise unknown(f"suite in {path}:", name, sorted(suites))
    if name in stack:
        raise UsageError(f"{path}: suite {name!r} includes itself via {' -> '.join(stack + (name,))}")
    table = suites[name]
    if not isinstance(table, dict):
        raise UsageError(f"{path}:{_line_of(text, name)}: suites.{name} must be a table")
    for key, value in table.items():
        if key not in SUITE_KEYS and key not in SUITE_META:
            raise UsageError(
                f"{path}:{_line_of(text, name, key)}: suite {name!r}: unknown key {key!r}; "
                f"accepted: {', '.join(list(SUITE_KEYS) + list(SUITE_META))}"
            )
        problem = _value_problem(key, value)
        if problem:
            raise UsageError(f"{path}:{_line_of(text, name, key)}: suite {name!r}: {problem}")
    specs: list[RunSpec] = []
    for inc in _as_list(table.get("include", [])):
        specs += _expand(str(inc), suites, text, path, stack + (name,))
    axes = {k: v for k, v in table.items() if k in SUITE_KEYS}
    recipe = None
    if "recipe" in table:
        from ftbench.papers.recipes import check_suite_recipe

        recipe = check_suite_recipe(table["recipe"], f"{path}:{_line_of(text, name, 'recipe')}: suite {name!r}")
        # the recipe's grid axes the suite does not set (e.g. its learning rates)
        axes.update({k: v for k, v in recipe.grid.items() if k not in axes})
    if "options" in table and not axes:
        raise UsageError(f"{path}:{_line_of(text, name, 'options')}: suite {name!r}: options need a grid "
                         "(method, shift, ...) in the same suite; included suites keep their own")
    if axes:
        specs += _grid(name, axes, table.get("options", {}), text, path, recipe)
    seen: set[str] = set()
    if not specs and not stack:
        raise UsageError(f"{path}:{_line_of(text, name)}: suite {name!r} expands to no runs")
    unique = []
    for s in specs:
        if s.run_id not in seen:
            seen.add(s.run_id)
            unique.append(s)
    return unique


def _value_problem(key: str, value: Any) -> str | None:
    """Why ``value`` cannot be the value of suite key ``key`` (its type; for numbers, its range)."""
    from ftbench.validate import run_value_problem

    if key in ("description",) and not isinstance(value, str):
        return f"{key} must be a string, got {value!r}"
    if key == "include" and not all(isinstance(v, str) for v in _as_list(value)):
        return f"include must be a suite name or a list of them, got {value!r}"
    if key not in SUITE_KEYS:
        return None  # options, slurm, ray: checked where they are used
    if isinstance(value, list) and not value:  # an axis of no values: no runs, silently, in an including suite
        return f"{key} is an empty list; a grid axis needs at least one value"
    entries = value if isinstance(value, list) else [value]  # a list is a grid axis
    for v in entries:
        if isinstance(v, list) and key != "block":
            return f"{key} must be a value or a list of values (a grid axis), got a nested list {value!r}"
        problem = run_value_problem(key, SUITE_KEYS[key], v)
        if problem:
            return problem
    return None


def _grid(name: str, axes: dict[str, Any], options: Any, text: str, path: Path, recipe: Any = None) -> list[RunSpec]:
    if not isinstance(options, dict):
        raise UsageError(f"{path}:{_line_of(text, name, 'options')}: suite {name!r}: options must be a table")
    keys = list(axes)
    values = [_block_sets(axes[k]) if k == "block" else _as_list(axes[k]) for k in keys]
    out: list[RunSpec] = []
    opts = tuple(sorted(options.items()))
    if opts:
        from ftbench.methods.base import get_method

        methods = [get_method(str(m)) for m in _as_list(axes.get("method", RunSpec.method))]
        for key, value in opts:
            if not any(key in m.options for m in methods):
                raise UsageError(
                    f"{path}:{_line_of(text, name, 'options')}: suite {name!r}: option {key!r} is taken by none of "
                    f"its methods ({', '.join(m.name for m in methods)})"
                )
            # true/false is no number (bool is an int in Python, so the option's parser would take it)
            if isinstance(value, bool) and any(type(m.options[key].default) is not bool
                                               for m in methods if key in m.options):
                raise UsageError(f"{path}:{_line_of(text, name, 'options')}: suite {name!r}: option {key!r} must "
                                 f"be a number, got {str(value).lower()} (a boolean)")
    for combo in itertools.product(*values):
        fields: dict[str, Any] = {SUITE_KEYS[k]: v for k, v in zip(keys, combo)}
        fields["options"] = opts
        try:
            if recipe is not None:  # fills the fields and options the suite does not give
                from ftbench.papers.recipes import apply_recipe

                fields = apply_recipe(recipe, fields, {SUITE_KEYS[k] for k in keys})
            spec = RunSpec(**fields)
            out.append(_resolve_in_suite(spec))
        except UsageError as e:
            key = _guess_key(str(e), keys)
            raise UsageError(f"{path}:{_line_of(text, name, key)}: suite {name!r}: {e}") from None
        except TypeError as e:
            raise UsageError(f"{path}:{_line_of(text, name)}: suite {name!r}: bad value type: {e}") from None
    return out


def _resolve_in_suite(spec: RunSpec) -> RunSpec:
    from ftbench.methods.base import get_method

    # A grid crosses methods with blocks and options; a method ignores the block axis if it takes no
    # blocks and the options it does not have, and shift-specific axes only apply to shifts that
    # take them (deduplicated by run id afterwards). _grid checks every option fits some method.
    method = get_method(spec.method)
    if not method.takes_blocks:
        spec = dataclasses.replace(spec, blocks=())
    spec = dataclasses.replace(spec, options=tuple((k, v) for k, v in spec.options if k in method.options))
    from ftbench.protocols.base import get_protocol

    if spec.shift not in (None, "corruption") or not get_protocol(spec.protocol).shift_params:
        spec = dataclasses.replace(spec, corruption=None, severity=None)
    return resolve(spec)


def _guess_key(message: str, keys: list[str]) -> str | None:
    for k in keys:
        if k in message:
            return k
    return keys[0] if keys else None
