"""Suites (``benchmarks.toml`` and ``sweep --grid``): a named grid of RunSpecs, expanded, resolved and
de-duplicated; includes, a paper's recipe for what a suite does not set, limits, and the notes a sweep
prints about settings a method does not use.

This is the plan floor (docs/extending.md): it resolves every spec (:mod:`ftbench.plan.resolve`) and
applies recipes (:mod:`ftbench.papers.recipes`), and imports nothing above them.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any

from ftbench.errors import UsageError, unknown
from ftbench.plan.resolve import resolve
from ftbench.spec import HYPERPARAMETERS, RunSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

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
    "head_init": "head_init",
    "schedule": "schedule",
    "warmup": "warmup",
    "clip_grad": "clip_grad",
    "train_precision": "train_precision",
    "eval_precision": "eval_precision",
    "augment": "augment",
}
SUITE_META = ("description", "include", "options", "slurm", "ray",  # slurm/ray: executor settings (ftbench.sweep)
              "recipe")  # a paper's released defaults for what the suite does not set (ftbench/papers)

# Limits of a suites file, checked before anything is expanded (docs/sweeps.md#limits): the bundled
# file is 7 KB, its largest suite 3,375 runs (1,395 unique) and its includes 2 levels deep. Runs are
# counted before duplicates are removed, each included suite as often as it is included.
MAX_SUITES_FILE_BYTES = 4 * 2**20
MAX_SUITE_RUNS = 100_000
MAX_SUITE_INCLUDES = 10_000  # suites expanded for one suite, counting repeats
MAX_INCLUDE_DEPTH = 32


def default_suites_file() -> Path:
    """``./benchmarks.toml`` when present, else the copy shipped inside the package."""
    local = Path("benchmarks.toml")
    return local if local.is_file() else bundled_suites_file()


def bundled_suites_file() -> Path:
    """The suites file shipped inside the package."""
    return Path(__file__).resolve().parents[1] / "benchmarks.toml"


def local_suites_file() -> Path | None:
    """``./benchmarks.toml`` when present and not the bundled file itself."""
    local = Path("benchmarks.toml")
    if not local.is_file() or local.resolve() == bundled_suites_file().resolve():
        return None
    return local


def suites_file_for(name: str) -> tuple[Path, bool]:
    """Where suite ``name`` comes from when no ``--suites`` is given, and whether it hides a bundled
    suite of that name: ``./benchmarks.toml`` adds its suites to the bundled ones, and where both
    define a name the local one wins (the caller says so). Includes resolve within the file that
    defines the suite."""
    local = local_suites_file()
    if local is not None and name in load_suites(local)[0]:
        return local, name in load_suites(bundled_suites_file())[0]
    return bundled_suites_file(), False


def table_line(text: str, header: str, key: str | None = None) -> int | None:
    """1-based line of ``key = ...`` inside the TOML table whose header line matches regex ``header``;
    the header's line when ``key`` is None or not in the table; None when no header matches."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(header, line)), None)
    if start is None or key is None:
        return None if start is None else start + 1
    for i in range(start + 1, len(lines)):
        if lines[i].lstrip().startswith("["):
            break
        if re.match(rf"\s*{re.escape(key)}\s*=", lines[i]):
            return i + 1
    return start + 1


def _line_of(text: str, suite: str, key: str | None = None) -> int | None:
    return table_line(text, rf"\s*\[suites\.{re.escape(suite)}\]", key)


_FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def read_suites_file(path: Path) -> bytes:
    """The bytes of suites file ``path``: a regular file (a symlink to one included) of at most
    :data:`MAX_SUITES_FILE_BYTES`. Anything else is a UsageError, before a byte is read: a FIFO or a
    device (``/dev/zero``) would block or never end."""
    try:  # O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise UsageError(f"cannot read suites file {str(path)!r}: {e.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((k for test, k in _FILE_KINDS if test(mode)), "not a regular file")
            raise UsageError(f"suites file {str(path)!r} is {kind}; give a regular file (TOML)")
        chunks, size = [], 0
        while size <= MAX_SUITES_FILE_BYTES:  # read to the end, never past the limit (a file may grow)
            chunk = os.read(fd, min(2**20, MAX_SUITES_FILE_BYTES + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise UsageError(f"cannot read suites file {str(path)!r}: {e.strerror}") from None
    finally:
        os.close(fd)
    if size > MAX_SUITES_FILE_BYTES:
        raise UsageError(f"suites file {str(path)!r} is larger than {MAX_SUITES_FILE_BYTES // 2**20} MiB, ftbench's "
                         "limit for a suites file (docs/sweeps.md#limits)")
    return b"".join(chunks)


def load_suites(path: Path) -> tuple[dict[str, dict[str, Any]], str]:
    """Parse a suites file; malformed TOML becomes a UsageError naming the file and line."""
    try:
        text = read_suites_file(path).decode("utf-8")
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
    """Expand suite ``name`` into resolved, deduplicated RunSpecs (in a stable order); without ``path``,
    from the file :func:`suites_file_for` names, as ``ftbench sweep NAME`` does."""
    path = path or suites_file_for(name)[0]
    suites, text = load_suites(path)
    check_suite_size(name, suites, text, path)
    return _expand(name, suites, text, path, stack=())


GRID_SUITE = "grid"  # the name of the suite `ftbench sweep --grid` builds


def _grid_scalar(text: str) -> Any:
    """A --grid value as a suites file would hold it: an integer, a number, true/false, else a string."""
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return float(text) if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|nan)", text) else text
    except ValueError:
        return text


def grid_suite(grid: str, fixed: dict[str, Any] | None = None) -> dict[str, Any]:
    """The suite table that ``--grid 'KEY=V1,V2 KEY=V ...'`` stands for: each key a suites-file key
    (``block=1+2`` is one block set of blocks 1 and 2), each comma-separated list a grid axis;
    ``options.NAME=V`` a method option; ``fixed`` adds single-valued keys (the sweep's --shift, ...)."""
    import shlex

    try:
        tokens = shlex.split(grid)
    except ValueError as e:
        raise UsageError(f"--grid: cannot split {grid!r} into KEY=VALUE words: {e}") from None
    table: dict[str, Any] = {}
    options: dict[str, Any] = {}
    example = "e.g. --grid 'method=surgical block=1,2,3,last lr=1e-3,1e-2 seed=0,1,2'"
    if not tokens:
        raise UsageError(f"--grid is empty; {example}")
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep or not key or value == "":
            raise UsageError(f"--grid: {token!r} is not KEY=VALUE[,VALUE...]; {example}")
        entries = value.split(",")
        if any(e == "" for e in entries):
            raise UsageError(f"--grid: {token!r} has an empty value between commas")
        if key.startswith("options."):
            name = key.removeprefix("options.")
            if len(entries) > 1:
                raise UsageError(f"--grid: method option {name!r} takes one value (suites' options are fixed per "
                                 f"suite), got {value!r}; run one sweep per value")
            if name in options:
                raise UsageError(f"--grid: option {name!r} given twice")
            options[name] = _grid_scalar(entries[0])
            continue
        if key not in SUITE_KEYS:
            raise UsageError(f"--grid: unknown key {key!r}; accepted: {', '.join(SUITE_KEYS)}, options.NAME")
        if key in table:
            raise UsageError(f"--grid: key {key!r} given twice; give its values as one comma-separated list")
        if key == "block":
            values: list[Any] = [[_grid_scalar(b) for b in e.split("+")] for e in entries]
        else:
            values = [_grid_scalar(e) for e in entries]
        table[key] = values if len(values) > 1 else values[0]
    for key, value in (fixed or {}).items():
        if key in table:
            raise UsageError(f"--grid: {key} is given both in --grid and as --{key.replace('_', '-')}; give it once")
        table[key] = value
    if options:
        table["options"] = options
    return table


def grid_runs(grid: str, fixed: dict[str, Any] | None = None) -> tuple[list[RunSpec], list[str]]:
    """``ftbench sweep --grid``: the runs of :func:`grid_suite`'s suite, expanded, checked and limited
    exactly as a suites file's suite (same run ids), and its :func:`suite_notes`; errors and notes
    name ``--grid``, not the suite it stands for."""
    suites = {GRID_SUITE: grid_suite(grid, fixed)}
    path = Path("--grid")
    try:
        check_suite_size(GRID_SUITE, suites, "", path)
        specs = _expand(GRID_SUITE, suites, "", path, stack=())
    except UsageError as e:  # "--grid:None: suite 'grid': <problem>" -> "--grid: <problem>"
        raise UsageError(re.sub(r"^--grid:(None|\d+): suite 'grid': ", "--grid: ", str(e))) from None
    return specs, [n.replace(f"suite {GRID_SUITE!r}: ", "--grid: ", 1) for n in suite_notes(GRID_SUITE, suites)]



def check_suite_size(name: str, suites: dict, text: str, path: Path) -> None:
    """Refuse (one UsageError) suite ``name`` if its expansion would pass the limits: more than
    :data:`MAX_SUITE_RUNS` runs or :data:`MAX_SUITE_INCLUDES` included suites, or includes nested
    deeper than :data:`MAX_INCLUDE_DEPTH`. Counts by arithmetic, each suite once, materialising
    nothing, so a grid of millions or an include diamond of 2^27 paths is refused at once."""
    memo: dict[str, tuple[int, int, int]] = {}  # suite -> (runs, suites expanded, include depth below it)

    def count(n: str, stack: tuple[str, ...]) -> tuple[int, int, int]:
        if n in memo:
            return memo[n]
        _check_included(n, suites, path, stack)
        if len(stack) > MAX_INCLUDE_DEPTH:  # n is included at level len(stack)
            raise _too_deep(stack + (n,), text, path)
        table = suites[n]
        runs, expanded, depth = 0, 1, 0
        if not isinstance(table, dict):
            memo[n] = (runs, expanded, depth)  # _expand says what is wrong with it
            return memo[n]
        axes = {k: v for k, v in table.items() if k in SUITE_KEYS}
        if isinstance(table.get("recipe"), str):
            from ftbench.papers.recipes import recipes

            recipe = recipes().get(table["recipe"])  # an unknown one: _expand says so
            axes.update({k: v for k, v in (getattr(recipe, "grid", None) or {}).items() if k not in axes})
        if axes:
            runs = math.prod(len(_as_list(v)) for v in axes.values())
        for inc in _as_list(table.get("include", [])):
            if isinstance(inc, str):
                r, e, d = count(inc, stack + (n,))
                if len(stack) + 1 + d > MAX_INCLUDE_DEPTH:  # counted before along a shorter path
                    raise _too_deep(stack + (n, inc, "..."), text, path)
                runs, expanded, depth = runs + r, expanded + e, max(depth, d + 1)
        memo[n] = (runs, expanded, depth)
        return memo[n]

    runs, expanded, _ = count(name, ())
    where = f"{path}:{_line_of(text, name)}: suite {name!r}"
    if runs > MAX_SUITE_RUNS:
        how = " (each included suite counted as often as it is included)" if expanded > 1 else ""
        raise UsageError(f"{where} expands to {runs:,} runs{how}, more than ftbench's limit of {MAX_SUITE_RUNS:,}; "
                         "split it into smaller suites (docs/sweeps.md#limits)")
    if expanded > MAX_SUITE_INCLUDES:
        raise UsageError(f"{where} expands {expanded:,} suites through its includes (each counted as often as it "
                         f"is included), more than ftbench's limit of {MAX_SUITE_INCLUDES:,} (docs/sweeps.md#limits)")


def _too_deep(chain: tuple[str, ...], text: str, path: Path) -> UsageError:
    shown = " -> ".join(chain if len(chain) <= 6 else (*chain[:3], "...", *chain[-2:]))
    return UsageError(f"{path}:{_line_of(text, chain[0])}: suite {chain[0]!r}: includes nest more than "
                      f"{MAX_INCLUDE_DEPTH} levels deep ({shown}), ftbench's limit (docs/sweeps.md#limits)")


def suites_file_key(path: Path) -> tuple[str, ...] | None:
    """What the expansion of suites file ``path`` depends on besides the code, for the catalog cache:
    its path, a hash of its text and the working directory (relative weights paths); None if it
    cannot be read (the expansion's own error then says why)."""
    import hashlib
    import os

    try:
        digest = hashlib.sha256(read_suites_file(Path(path))).hexdigest()
    except UsageError:
        return None
    return (str(Path(path).resolve()), digest, os.getcwd())


# What each field of a RunSpec's to_dict holds (the catalog cache's schema of an expanded suite).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "benchmark": (str,), "shift": (str,), "corruption": (str, type(None)), "severity": (int, type(None)),
    "shots": (int, type(None)), "model": (str, type(None)), "method": (str,), "blocks": (list,),
    "lr": (float, type(None)), "wd": (float, type(None)), "steps": (int, type(None)), "epochs": (int, type(None)),
    "batch_size": (int, type(None)), "optimizer": (str, type(None)), "seed": (int,), "options": (dict,),
    "checkpoints": (int, type(None)), "weights": (str, type(None)), "protocol": (str,),
    "data_version": (int, type(None)), "head_init": (str, type(None)), "schedule": (str, type(None)),
    "warmup": (int, type(None)), "clip_grad": (float, type(None)), "train_precision": (str, type(None)),
    "eval_precision": (str, type(None)), "augment": (str, type(None)), "input_transform": (str, type(None)),
}


def _spec_dicts(value: Any) -> bool:
    """Whether ``value`` is a list of RunSpec dicts as ``to_dict`` makes them (every field, of its type)."""
    if not isinstance(value, list):
        return False
    for d in value:
        if not (isinstance(d, dict) and set(d) == set(_FIELD_TYPES)):
            return False
        for k, types in _FIELD_TYPES.items():
            v = d[k]
            if isinstance(v, bool) or not isinstance(v, types):
                return False
        if not all(isinstance(b, str) for b in d["blocks"]):
            return False
        if not all(isinstance(v, (str, int, float, bool, list, type(None))) for v in d["options"].values()):
            return False
    return True


def expand_suite_cached(name: str, path: Path | None = None) -> list[RunSpec]:
    """:func:`expand_suite`, from the catalog cache in a fresh process (ftbench/catalog.py): spares
    ``sweep --dry-run`` the imports of every registry. Keyed by :func:`suites_file_key`; an entry whose
    weights files changed or are gone is a miss (the catalog checks the files ``resolve_weights``
    recorded with :func:`ftbench.catalog.depends_on`), so it is expanded again, which says so."""
    from ftbench.catalog import cached

    path = Path(path or suites_file_for(name)[0])
    key = suites_file_key(path)
    if key is None:
        return expand_suite(name, path)
    dicts = cached(("suite", name, *key), lambda: [s.to_dict() for s in expand_suite(name, path)], _spec_dicts)
    return [RunSpec.from_dict(d) for d in dicts]


def _check_included(name: str, suites: dict, path: Path, stack: tuple[str, ...]) -> None:
    """Suite ``name``, reached through the includes ``stack``, exists and does not include itself."""
    if name not in suites:
        raise unknown(f"suite in {path}:", name, sorted(suites))
    if name in stack:
        raise UsageError(f"{path}: suite {name!r} includes itself via {' -> '.join(stack + (name,))}")


def _expand(name: str, suites: dict, text: str, path: Path, stack: tuple[str, ...],
            memo: dict[str, list[RunSpec]] | None = None) -> list[RunSpec]:
    memo = {} if memo is None else memo  # a suite included along several paths is expanded once
    if name in memo:
        return memo[name]
    _check_included(name, suites, path, stack)
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
        specs += _expand(str(inc), suites, text, path, stack + (name,), memo)
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
    memo[name] = unique
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
    # ... and the options that have no effect under its other options' values (suite_notes says so)
    opts = {k: o.default for k, o in method.options.items()} | {k: method.options[k].parse(k, v, method.name)
                                                                 for k, v in spec.options}  # checked first
    spec = dataclasses.replace(spec, options=tuple((k, v) for k, v in spec.options
                                                   if method.inapplicable(k, opts) is None))
    from ftbench.protocols.base import get_protocol

    if spec.shift not in (None, "corruption") or not get_protocol(spec.protocol).shift_params:
        spec = dataclasses.replace(spec, corruption=None, severity=None)
    return resolve(spec)


# Suite keys a method may ignore: its hyperparameters and --checkpoints (suite_notes).
_IGNORABLE = (*HYPERPARAMETERS, "checkpoints")


def suite_notes(name: str, suites: dict[str, Any]) -> list[str]:
    """One line per (suite, method, key) where suite ``name`` (or a suite it includes) crosses a method with a
    hyperparameter, ``checkpoints`` or an option it ignores (values the suite gives, not its recipe's): the
    runs of that method are the same whatever that value, which a reader of the suite would not guess.
    Call after the suite expanded (its keys and values are checked)."""
    from ftbench.methods.base import get_method

    notes: list[str] = []
    seen: set[str] = set()

    def visit(n: str) -> None:
        if n in seen or not isinstance(suites.get(n), dict):
            return
        seen.add(n)
        table = suites[n]
        for inc in _as_list(table.get("include", [])):
            visit(str(inc))
        if not any(k in SUITE_KEYS for k in table):
            return
        options = table.get("options", {}) if isinstance(table.get("options", {}), dict) else {}
        given = {k: v for k, v in table.items() if k in SUITE_KEYS and SUITE_KEYS[k] in _IGNORABLE}
        for m in dict.fromkeys(str(x) for x in _as_list(table.get("method", RunSpec.method))):
            method = get_method(m)
            opts = {k: o.default for k, o in method.options.items()} | {k: v for k, v in options.items()
                                                                         if k in method.options}
            for key, value in given.items():
                problem = method.unused_problem(SUITE_KEYS[key], opts)
                if problem is not None:
                    cond = method.inapplicable(SUITE_KEYS[key], opts)
                    why = f" only with {cond[0]} (here {cond[1]})" if cond is not None else ""
                    notes.append(f"suite {n!r}: method {m!r} {'uses' if why else 'does not use'} {key} "
                                 f"({_values(value)}){why}; its runs ignore that "
                                 f"{'axis' if isinstance(value, list) else 'setting'}")
            for key, value in options.items():
                if key not in method.options:
                    if len(_as_list(table.get("method", RunSpec.method))) > 1:  # crossed with methods that take it
                        notes.append(f"suite {n!r}: method {m!r} has no option {key} ({_values(value)}); its runs "
                                     "ignore it")
                    continue
                cond = method.inapplicable(key, opts)
                if cond is not None:
                    notes.append(f"suite {n!r}: option {key} of method {m!r} applies only with {cond[0]} (here "
                                 f"{cond[1]}; {key}={_values(value)}); its runs ignore it")

    visit(name)
    return list(dict.fromkeys(notes))


def suite_notes_cached(name: str, path: Path) -> list[str]:
    """:func:`suite_notes` of suite ``name`` of the suites file ``path``, from the catalog cache as
    :func:`expand_suite_cached` (no method imports on a hit)."""
    from ftbench.catalog import cached

    key = suites_file_key(path)
    compute = lambda: suite_notes(name, load_suites(path)[0])  # noqa: E731
    if key is None:
        return compute()
    return cached(("suite-notes", name, *key), compute,
                  lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v))


def _values(value: Any) -> str:
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in _as_list(value))


def _guess_key(message: str, keys: list[str]) -> str | None:
    for k in keys:
        if k in message:
            return k
    return keys[0] if keys else None
