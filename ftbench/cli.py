"""The ``ftbench`` command line: fetch, run, sweep, report, list. Thin: parse, call, print.

Every bad input ends as one ``error: ...`` line on stderr and exit code 2 (see :func:`main`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

try:  # typer >= 0.20 vendors click as typer._click; older typer uses click itself
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click import ClickException

from ftbench.errors import UsageError, unknown
from ftbench.text import clean

app = typer.Typer(
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    help="Benchmark fine-tuning methods per layer subset under distribution shift.",
)


def _stdout_is_terminal() -> bool:
    try:
        return sys.stdout.isatty() and os.get_terminal_size(sys.stdout.fileno()).columns > 0
    except (OSError, ValueError, AttributeError):
        return False


def _terminal_width(default: int = 160) -> int:
    """The width tables are fit to: ``$COLUMNS`` when it is a positive number, else the terminal's
    width when stdout is one, else ``default``.
    An unusable ``COLUMNS`` (``0``, ``abc``) is treated as unset, as most programs do, and removed
    from the environment so rich (the progress bars) and the worker processes do not read it."""
    value = os.environ.get("COLUMNS")
    if value is None:  # a shell does not export COLUMNS: on a terminal, its own width
        return os.get_terminal_size(sys.stdout.fileno()).columns if _stdout_is_terminal() else default
    try:
        width = int(value.strip())
    except ValueError:
        width = 0
    if width <= 0:
        del os.environ["COLUMNS"]
        return default
    return width


out = Console(highlight=False, soft_wrap=True, width=_terminal_width())  # lines unwrapped; tables fit the width
DEFAULT_OUT = Path("ftbench-results")


def _print_version(value: bool) -> None:
    if value:
        from ftbench import __version__

        print(f"ftbench {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="print ftbench's version and exit"),
) -> None:
    pass


def _parse_sets(sets: list[str]) -> tuple[tuple[str, Any], ...]:
    opts = {}
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"--set expects key=value, got {item!r}")
        opts[key.strip()] = value.strip()
    return tuple(sorted(opts.items()))


@app.command(epilog="Examples:\n\n  ftbench run --method surgical --block 1 --shift corruption\n\n  ftbench run --method lp-ft --protocol id-ood --seed 1\n\n  ftbench run --method lora --set r=8 --model digits-vit")
def run(
    ctx: typer.Context,
    benchmark: str = typer.Option("digits", help="benchmark name (ftbench list benchmarks)", rich_help_panel="Data"),
    shift: Optional[str] = typer.Option(None, help="shift of the benchmark (ftbench list benchmarks): corruption, "
                              "subpopulation, label-flip on digits; the default depends on the benchmark and "
                              "protocol: corruption where the benchmark has it, else its own shift (waterbirds: "
                              "spurious-background; --protocol id-ood: its ID->OOD shift, style-noise on digits)", rich_help_panel="Data"),
    corruption: Optional[str] = typer.Option(None, help="corruption name for --shift corruption", rich_help_panel="Data"),
    severity: Optional[int] = typer.Option(None, help="corruption severity 1..5", rich_help_panel="Data"),
    shots: Optional[int] = typer.Option(None, help="labelled target examples per class", rich_help_panel="Data"),
    model: Optional[str] = typer.Option(None, help="model name (default: the benchmark's)", rich_help_panel="Model and method"),
    method: str = typer.Option("surgical", help="fine-tuning method (ftbench list methods)", rich_help_panel="Model and method"),
    block: list[str] = typer.Option([], "--block", metavar="BLOCK", help="block to tune, repeatable: 1, 2, ..., last "
                                    "(ftbench list models NAME shows a model's blocks)", rich_help_panel="Model and method"),
    seed: int = typer.Option(0, help="run seed (few-shot draw and batch order)", rich_help_panel="Training"),
    lr: float = typer.Option(1e-3, help="learning rate", rich_help_panel="Training"),
    wd: float = typer.Option(1e-4, help="weight decay", rich_help_panel="Training"),
    steps: Optional[int] = typer.Option(None, help="optimizer steps (default 50)", rich_help_panel="Training"),
    epochs: Optional[int] = typer.Option(None, help="epochs over the target train split, instead of --steps", rich_help_panel="Training"),
    batch_size: int = typer.Option(64, help="batch size", rich_help_panel="Training"),
    optimizer: str = typer.Option("adam", help="adam or sgd", rich_help_panel="Training"),
    checkpoints: Optional[int] = typer.Option(None, help="also evaluate at N evenly spaced points of fine-tuning (early stopping on target val)", rich_help_panel="Training"),
    weights: Optional[str] = typer.Option(None, "--weights", "--checkpoint", help="pretrained weights: a state-dict file, or scratch (default: the model's hub weights, else trained on the source split)", rich_help_panel="Model and method"),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="method option, repeatable "
                                   "(ftbench list methods NAME shows a method's options)", rich_help_panel="Model and method"),
    recipe: Optional[str] = typer.Option(None, help="a paper's released defaults for every setting not given "
                                         "here (ftbench list recipes)", rich_help_panel="Model and method"),
    device: str = typer.Option("auto", help="auto, cpu or cuda", rich_help_panel="Where"),
    threads: int = typer.Option(1, help="torch CPU threads (CPU results depend on it; 1 as in sweeps, so a run "
                                "gives the same result from run and from sweep)", rich_help_panel="Where"),
    out_dir: Path = typer.Option(DEFAULT_OUT, "--out", help="results folder", rich_help_panel="Where"),
    protocol: str = typer.Option("few-shot", help="few-shot (fine-tune on --shots target images per class) or id-ood "
                                 "(fine-tune on ID train, score every OOD set); docs/protocols.md", rich_help_panel="Data"),
    head_init: Optional[str] = typer.Option(None, "--head-init", help="--protocol id-ood: how the new classifier of a "
                                            "method that trains it starts: fresh (LP-FT's baseline) or zero-shot "
                                            "(CLIP's zero-shot head, WiSE-FT's/FLYP's/AutoFT's standard fine-tuning); "
                                            "default: the method's own", rich_help_panel="Model and method"),
    schedule: Optional[str] = typer.Option(None, help="learning-rate schedule: constant (default) or cosine "
                                           "(half cosine to 0 after the warm-up, as wise-ft/FLYP/AutoFT)", rich_help_panel="Training"),
    warmup: Optional[int] = typer.Option(None, help="linear learning-rate warm-up over this many optimizer steps "
                                         "(wise-ft/FLYP/AutoFT: 500; default none)", rich_help_panel="Training"),
    clip_grad: Optional[float] = typer.Option(None, "--clip-grad", help="clip gradients to this global L2 norm "
                                              "(wise-ft: 1.0; default none)", rich_help_panel="Training"),
    train_precision: Optional[str] = typer.Option(None, "--train-precision", help="fp32 or bf16 autocast in training "
                                                  "(default: bf16 on CUDA, fp32 on CPU)", rich_help_panel="Training"),
    eval_precision: Optional[str] = typer.Option(None, "--eval-precision", help="fp32 or bf16 autocast in evaluation "
                                                 "(default: bf16 on CUDA, fp32 on CPU; the CLIP releases evaluate in fp32)",
                                                 rich_help_panel="Training"),
    augment: Optional[str] = typer.Option(None, help="training augmentation on the device: crop (RandomResizedCrop "
                                          "0.9-1, bicubic: CLIP's, as wise-ft/FLYP/AutoFT) or crop-flip (RandomResizedCrop "
                                          "0.08-1 + horizontal flip: LP-FT's); default none", rich_help_panel="Training"),
) -> None:
    """Fine-tune once and write one parquet row; prints the run's ID and OOD accuracy."""
    from ftbench.results.store import write_result
    from ftbench.sweep.task import set_threads
    from ftbench.spec import RunSpec
    from ftbench.plan.resolve import resolve
    from ftbench.execution.runner import discard_work, execute, pick_device, work_dir
    from ftbench.validate import check_output_dir, check_settings

    fields: dict[str, Any] = dict(
        benchmark=benchmark, shift=shift, corruption=corruption, severity=severity, shots=shots, model=model,
        method=method, blocks=tuple(block), lr=lr, wd=wd, steps=steps, epochs=epochs, batch_size=batch_size,
        optimizer=optimizer, seed=seed, options=_parse_sets(set_), checkpoints=checkpoints, weights=weights,
        protocol=protocol, head_init=head_init, schedule=schedule, warmup=warmup, clip_grad=clip_grad,
        train_precision=train_precision, eval_precision=eval_precision, augment=augment,
    )
    if recipe is not None:  # before resolution; what the command line gives wins
        from ftbench.papers.recipes import FIELDS, apply_recipe, get_recipe

        given = {f for f in FIELDS if ctx.get_parameter_source(f).name != "DEFAULT"}
        fields = apply_recipe(get_recipe(recipe), fields, given)
    spec = resolve(RunSpec(**fields))
    from ftbench.methods.base import get_method
    from ftbench.spec import HYPERPARAMETERS

    # what the command line gives and the run would ignore is refused, not dropped (a recipe's values are not given)
    get_method(spec.method).check_given(spec, [k for k, _ in _parse_sets(set_)],
                                        [f for f in (*HYPERPARAMETERS, "checkpoints")
                                         if ctx.get_parameter_source(f).name != "DEFAULT"])
    check_settings({"threads": threads})
    check_output_dir(out_dir, "--out")
    pick_device(device)  # validate before any work
    set_threads(threads)
    from ftbench.results.store import check_result_slots

    check_result_slots(out_dir, [spec.run_id])
    _print_notices([spec])
    rows = execute(spec, device, work_dir(out_dir, spec.run_id))
    path = write_result(out_dir, rows)
    discard_work(work_dir(out_dir, spec.run_id), rows)  # only now: a kill before the write resumes
    row = rows[-1]
    blocks = f" --block {' --block '.join(spec.blocks)}" if spec.blocks else ""
    from ftbench.protocols.base import get_protocol

    proto = get_protocol(spec.protocol)
    curve: list[str] = []
    if len(rows) > 1:  # WiSE-FT's alphas, --checkpoints: the headline is the row `report` selects on this run
        from ftbench.report.table import run_curve

        row, curve = run_curve(path, proto.selections["val"][1])
    out.print(f"run {row['run_id']}  {spec.benchmark}/{spec.shift}"
              f"{'/' + spec.corruption + '-' + str(spec.severity) if spec.corruption else ''}  {spec.method}{blocks}"
              f"  (protocol {spec.protocol})")
    out.print(escape(f"  {settings_line(spec)}"))
    out.print(f"  ID acc  {row['id_acc']:6.2f}%   ({proto.id_words})")
    out.print(f"  OOD acc {row['ood_acc']:6.2f}%   ({proto.ood_words})")
    for col in [k for k in row if k.startswith("ood.") and k.endswith("_acc") and "_" not in k[4:-4]]:
        out.print(escape(f"    {col[4:-4]:10s}{row[col]:6.2f}%"))  # one line per OOD test set
    extra = f"   OOD val acc {row['ood_val_acc']:.2f}%" if "ood_val_acc" in row else ""
    out.print(f"  val acc {row['val_acc']:6.2f}%   ({proto.selections['val'][1]}){extra}   status {row['status']}   "
              f"{row['n_trainable']:,}/{row['n_params']:,} params trained   {row['train_seconds']:.2f} s on {row['device']}")
    for line in curve:
        out.print(escape(f"  {line}"))
    out.print(f"  -> {path}")


def settings_line(spec: Any) -> str:
    """What a run was trained with: every hyperparameter and method option that applies, defaults included."""
    from ftbench.spec import HYPERPARAMETERS

    parts = spec.settings((*HYPERPARAMETERS, "schedule", "warmup", "clip_grad", "head_init", "train_precision",
                           "eval_precision", "augment", "shots", "checkpoints", "seed", "weights"))
    from ftbench.methods.base import get_method

    method = get_method(spec.method)  # options that do not apply under the others' values are not shown
    opts = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in spec.options
                    if k not in method.options or method.inapplicable(k, spec.options_dict) is None)
    return "settings " + " ".join(parts) + (f"; options {opts}" if opts else "")


@app.command(epilog="Examples:\n\n  ftbench sweep smoke --dry-run\n\n  ftbench sweep default --jobs 2\n\n  ftbench sweep default --executor slurm --partition gpu --gpus-per-job 1")
def sweep(
    ctx: typer.Context,
    suite: str = typer.Argument("default", help="suite name in the suites file"),
    suites: Optional[Path] = typer.Option(None, help="suites file (default: the bundled suites plus ./benchmarks.toml's, which win on a shared name)", rich_help_panel="Where"),
    out_dir: Path = typer.Option(DEFAULT_OUT, "--out", help="results folder", rich_help_panel="Where"),
    device: str = typer.Option("auto", help="auto, cpu or cuda", rich_help_panel="Where"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the expanded runs and counts, run nothing", rich_help_panel="Where"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="rerun runs recorded as failed or diverged", rich_help_panel="Where"),
    weights: Optional[str] = typer.Option(None, "--weights", help="a state-dict file every run of the suite starts "
                                          "from (e.g. paper-lpft's MoCo-v2 ResNet-50; the dry run says which a "
                                          "paper suite needs)", rich_help_panel="Where"),
    report_format: str = typer.Option("terminal", "--format", help="format of the final table: terminal, markdown, "
                                      "latex, html, csv or json", rich_help_panel="Where"),
    table: str = typer.Option("shifts", help="kind of the final table: shifts, blocks, methods, corruptions or "
                              "robustness (see ftbench report --table)", rich_help_panel="Where"),
    executor: str = typer.Option("local", help="local (worker processes), slurm (submitit job array) or ray", rich_help_panel="Local"),
    jobs: Optional[int] = typer.Option(None, help="local: worker processes (default one per GPU x --per-gpu, "
                                       "1 on CPU); slurm: array tasks at once; ray: runs in flight", rich_help_panel="Local"),
    per_gpu: int = typer.Option(1, help="runs sharing one GPU (local workers per GPU; ray: 1/K GPU per run)", rich_help_panel="Local"),
    threads: int = typer.Option(1, help="torch CPU threads per run (CPU results depend on it; fixed so they "
                                "do not depend on --jobs)", rich_help_panel="Local"),
    partition: Optional[str] = typer.Option(None, help="slurm: partition", rich_help_panel="Slurm"),
    time_limit: Optional[int] = typer.Option(None, "--time", help="slurm: time limit per array task, minutes", rich_help_panel="Slurm"),
    gpus_per_job: Optional[float] = typer.Option(None, help="slurm: GPUs per array task; ray: GPUs per run "
                                                 "(fractions share a GPU)", rich_help_panel="Slurm"),
    cpus_per_job: Optional[float] = typer.Option(None, help="slurm: CPUs per array task; ray: CPUs per run", rich_help_panel="Slurm"),
    mem_gb: Optional[float] = typer.Option(None, help="slurm: memory per array task, GB", rich_help_panel="Slurm"),
    runs_per_job: Optional[int] = typer.Option(None, help="slurm: runs per array task, run one after the other", rich_help_panel="Slurm"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="slurm: wait for the jobs (--no-wait: submit and exit)", rich_help_panel="Slurm"),
    address: Optional[str] = typer.Option(None, help="ray: address of an existing cluster (default: start a "
                                          "local one)", rich_help_panel="Ray"),
    grid: Optional[str] = typer.Option(None, help="a suite from the command line instead of a suites file: "
                                       "'KEY=V1,V2 KEY=V ...' with the suites file's keys (block=1+2: one block set "
                                       "of two; options.NAME=V: a method option), same expansion and run ids",
                                       rich_help_panel="Grid"),
    benchmark: Optional[str] = typer.Option(None, help="--grid: the benchmark (as the suite key)", rich_help_panel="Grid"),
    shift: Optional[str] = typer.Option(None, help="--grid: the shift", rich_help_panel="Grid"),
    corruption: Optional[str] = typer.Option(None, help="--grid: the corruption", rich_help_panel="Grid"),
    severity: Optional[int] = typer.Option(None, help="--grid: the corruption severity", rich_help_panel="Grid"),
    model: Optional[str] = typer.Option(None, help="--grid: the model", rich_help_panel="Grid"),
    protocol: Optional[str] = typer.Option(None, help="--grid: the protocol", rich_help_panel="Grid"),
) -> None:
    """Expand a suite into runs, run those without results, then print the report table."""
    from ftbench.results.store import completed_ids
    from ftbench.plan.suites import expand_suite_cached, suite_descriptions, suites_file_for
    from ftbench.sweep.executors import EXECUTORS, prepare, suite_settings
    from ftbench.sweep.executors import run as run_executor
    from ftbench.sweep.describe import describe_all
    from ftbench.validate import DEVICES, check_output_dir

    fixed = {k: v for k, v in (("benchmark", benchmark), ("shift", shift), ("corruption", corruption),
                               ("severity", severity), ("model", model), ("protocol", protocol)) if v is not None}
    if grid is None and fixed:
        raise UsageError(f"--{next(iter(fixed))} applies only with --grid (a suite sets it in the suites file)")
    if grid is not None:
        if ctx.get_parameter_source("suite").name != "DEFAULT" or suites is not None:
            raise UsageError("--grid is a suite of its own: give --grid or a suite name (and --suites), not both")
        from ftbench.plan.suites import GRID_SUITE, grid_runs

        (specs, notes), suite, path = grid_runs(grid, fixed), GRID_SUITE, Path("--grid")
    else:
        from ftbench.plan.suites import suite_notes_cached

        path, hides = (suites, False) if suites is not None else suites_file_for(suite)
        if hides:
            print(f"note: suite {suite!r} of {path} hides the bundled suite of that name", file=sys.stderr)
        specs = expand_suite_cached(suite, path)
        notes = suite_notes_cached(suite, path)
    for note in notes:  # grid values some of its methods ignore: said once each, not dropped in silence
        print(clean(f"note: {note}"), file=sys.stderr)
    if weights is not None:  # every run starts from this file: resolved again, so a bad file is one line now
        specs = _with_weights(specs, weights)
    _check_format(report_format)
    from ftbench.report import TABLES

    if table not in TABLES:
        raise unknown("table", table, TABLES)
    if executor not in EXECUTORS:
        raise unknown("executor", executor, EXECUTORS)
    if device not in DEVICES:
        raise unknown("device", device, DEVICES)
    flags = {"partition": partition, "time": time_limit, "gpus_per_job": gpus_per_job,
             "cpus_per_job": cpus_per_job, "mem_gb": mem_gb, "runs_per_job": runs_per_job, "address": address,
             "wait": None if wait else False}
    flags = {k: v for k, v in flags.items() if v is not None}
    settings = {**(suite_settings(suite, path, executor) if grid is None else {}), **flags}
    prepare(executor, settings, device=device, jobs=jobs, per_gpu=per_gpu, threads=threads)
    if not dry_run:  # a folder (or FIFO) named <run_id>.parquet: refused before the write probe and any run
        from ftbench.results.store import check_result_slots

        check_result_slots(out_dir, [s.run_id for s in specs])
    check_output_dir(out_dir, "--out", writable=not dry_run)  # a dry run only reads it
    if executor == "local" and (device == "cuda" or not dry_run):
        from ftbench.execution.runner import pick_device

        pick_device(device)  # Slurm and Ray runs find their GPUs on the nodes, not here
    if executor == "ray" and not dry_run and settings.get("address"):
        from ftbench.sweep.ray_executor import check_reachable

        check_reachable(settings["address"])  # within seconds, where Ray alone would retry for minutes
    done = completed_ids(out_dir, retry_failed) & {s.run_id for s in specs}
    # from a file or the command line: printed safely
    about = clean(suite_descriptions(path).get(suite, "") if grid is None else f"--grid {grid}", newlines=False)
    if dry_run:
        for s, about_run in zip(specs, describe_all(specs)):
            out.print(escape(clean(f"{s.run_id}  {'done ' if s.run_id in done else 'to do'}  {about_run}")))
        out.print(escape(f"suite {suite!r} ({path}): {len(specs)} runs, {len(done)} done, "
                         f"{len(specs) - len(done)} to do" + (f" — {about}" if about else "")))
        from ftbench.papers.estimate import describe_estimate

        out.print(escape(describe_estimate([s for s in specs if s.run_id not in done])))
        if grid is None:  # a paper suite: its setup, data, weights and the published cells it fills
            from ftbench.papers.setup import describe as describe_setup
            from ftbench.papers.setup import setups
            from ftbench.report.compare import load_published

            published = load_published("paper")[0] if suite in setups() else []
            for line in describe_setup(suite, specs, published, weights):
                out.print(escape(clean(line)))
        if report_format != "terminal" or table != "shifts":  # asked for a table: say why there is none
            print(f"note: --dry-run lists the runs and prints no table; for the table of what is done: "
                  f"ftbench report {out_dir} --format {report_format} --table {table}", file=sys.stderr)
        return
    print(f"suite {suite!r}{' — ' + about if about else ''}: {len(specs)} runs, {len(done)} already in {out_dir}, "
          f"{len(specs) - len(done)} to run", file=sys.stderr)
    _print_notices(specs)
    summary = run_executor(executor, specs, out_dir, device=device, threads=threads, retry_failed=retry_failed,
                           jobs=jobs, per_gpu=per_gpu, settings=settings, name=f"ftbench-{suite}")
    if executor == "slurm" and not settings.get("wait", True):
        print(f"note: --no-wait prints no table (the runs are still to come); once the jobs are done: "
              f"ftbench report {out_dir} --format {report_format} --table {table}", file=sys.stderr)
        return
    print(f"ran {summary.done + summary.failed} runs in {summary.seconds:.1f} s "
          f"({summary.failed} failed, {summary.skipped} skipped as done)", file=sys.stderr)
    for f in summary.failures:
        print(clean(f"failed: {f}"), file=sys.stderr)
    _report(out_dir, report_format, run_ids={s.run_id for s in specs}, title=f"suite {suite}", table=table)


def _with_weights(specs: list[Any], weights: str) -> list[Any]:
    """``specs`` with every run starting from the weights file ``weights`` (resolved: its run id says so)."""
    import dataclasses

    from ftbench.plan.resolve import resolve

    out: dict[str, Any] = {}
    for s in specs:
        r = resolve(dataclasses.replace(s, weights=weights))
        out.setdefault(r.run_id, r)
    return list(out.values())


def _print_notices(specs: list[Any]) -> None:
    """Each distinct warning the specs' methods give about their settings, once, on stderr."""
    from ftbench.methods.base import get_method

    seen: list[str] = []
    for s in specs:
        note = get_method(s.method).notice(s)
        if note and note not in seen:
            seen.append(note)
            print(f"note: {note}", file=sys.stderr)


def _check_format(fmt: str) -> None:
    from ftbench.report import FORMATS

    if fmt not in FORMATS:
        raise unknown("format", fmt, FORMATS)


PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def _write_atomic(path: Path, text: str, what: str = "--output") -> None:
    """A file the user named: atomically if a regular file or new, streamed into a FIFO or device."""
    from ftbench.outfile import write_output

    write_output(path, text, what)


def _report(
    results: Path, fmt: str = "terminal", selection: str = "val", output: Optional[Path] = None,
    run_ids: Optional[set[str]] = None, title: str = "", table: str = "shifts", metric: str = "ood_acc",
    filters: tuple[str, ...] = (), group_by: Optional[str] = None, plot: Optional[Path] = None,
    baseline: Optional[Path] = None, tolerance: Optional[str] = None, summary: Optional[Path] = None,
    allow_missing: bool = False, checkpoint: str = "best", trend: str = "full", compare: Optional[str] = None,
    two_sided: bool = False, show_selected: bool = False, compare_methods: Optional[tuple[str, str]] = None,
    rows: Optional[str] = None, label: Optional[str] = None, caption: Optional[str] = None,
    panels: Optional[str] = None, plot_title: Optional[str] = None, mark_vs: Optional[str] = None,
    within: Optional[float] = None,
) -> int:
    """Print (or write) the tables; optionally plot and gate against a baseline. Returns the exit code."""
    from ftbench.report.table import (CHECKPOINTS, SELECTIONS, TABLES, apply_filters, build, mixed_settings, render,
                                      render_selected, rich_tables, split_groups)
    from ftbench.results.store import read_results

    # Validate every option before reading or writing anything.
    _check_format(fmt)
    if table not in TABLES:
        raise unknown("table", table, TABLES)
    from ftbench.report.table import check_within

    check_within(table, within)
    if selection not in SELECTIONS:
        raise unknown("selection", selection, list(SELECTIONS))
    if checkpoint not in CHECKPOINTS:
        raise unknown("checkpoint", checkpoint, CHECKPOINTS)
    trend_methods = tuple(m.strip() for m in trend.split(",") if m.strip())
    if not trend_methods:
        raise UsageError(f"--trend expects comma-separated method names, got {trend!r}")
    from ftbench.methods import check_method_name

    for m in trend_methods:
        check_method_name(m)  # an unknown name is one error line listing the methods
    if plot is not None and plot.suffix.lower() not in PLOT_SUFFIXES:
        raise UsageError(f"unsupported plot format {plot.suffix or plot.name!r}; accepted: {', '.join(PLOT_SUFFIXES)}")
    if baseline is None:  # the gate's options do nothing without the gate: refused, never ignored
        for given, flag in ((summary is not None, "--summary"), (two_sided, "--two-sided"),
                            (tolerance is not None, "--tolerance"), (allow_missing, "--allow-missing")):
            if given:
                raise UsageError(f"{flag} needs --baseline")  # it belongs to the regression gate
    if compare is not None:  # --compare prints its comparison instead of the tables: table options do not apply
        for given, flag in ((table != "shifts", f"--table {table}"), (group_by is not None, "--group-by"),
                            (show_selected, "--show-selected"), (metric != "ood_acc", f"--metric {metric}"),
                            (fmt not in ("terminal", "markdown", "latex"), f"--format {fmt}")):
            if given:
                raise UsageError(f"{flag} applies to the tables, which --compare replaces by the comparison with "
                                 "published numbers (printed as terminal text, --format markdown or --format latex); "
                                 "give one of them")
    # Paper-ready output: each option where it has an effect, refused elsewhere.
    row_names = None if rows is None else [r.strip() for r in rows.split(",")]
    if row_names is not None:
        if compare is not None or compare_methods is not None:
            raise UsageError("--rows chooses the rows of the tables, which --compare/--compare-methods replace; "
                             "leave one of them out")
        if not all(row_names):
            raise UsageError(f"--rows expects comma-separated row names (as the table prints them, e.g. "
                             f"'full,lp-ft,block 1'), got {rows!r}")
    for value, flag in ((label, "--label"), (caption, "--caption")):
        if value is not None and (fmt != "latex" or compare is not None or compare_methods is not None):
            raise UsageError(f"{flag} applies to --format latex tables only (got --format {fmt}"
                             + (", --compare" if compare is not None else "")
                             + (", --compare-methods" if compare_methods is not None else "") + ")")
    import re

    if label is not None and not re.fullmatch(r"[A-Za-z0-9:._/+-]+", label):
        raise UsageError(f"--label {label!r}: a LaTeX label of letters, digits and : . _ / + - (e.g. tab:ood); "
                         "no spaces or braces")
    if caption is not None and not caption.strip():
        raise UsageError("--caption is empty; give the caption text or leave --caption out (the table's title)")
    from ftbench.report import PANELS

    panel_names = None if panels is None else [x.strip() for x in panels.split(",")]
    if panel_names is not None:
        if plot is None:
            raise UsageError("--panels chooses the panels of the figure; it needs --plot FILE")
        bad = [x for x in panel_names if x not in PANELS]
        if bad or not panel_names:
            raise unknown("panel", bad[0] if bad else panels, PANELS)
        if table == "pareto":
            raise UsageError("--panels chooses the panels of the results figure; --table pareto draws one panel per "
                             "shift (OOD against training FLOPs): leave --panels out")
        if len(set(panel_names)) != len(panel_names):
            raise UsageError(f"--panels: a panel given twice in {panels!r}; accepted: {', '.join(PANELS)}")
    if plot_title is not None and plot is None and (fmt == "csv" or compare is not None or compare_methods is not None):
        raise UsageError("--title names the tables and the figure; here there is neither a titled table "
                         f"(--format {fmt}" + (", --compare" if compare is not None else "")
                         + (", --compare-methods" if compare_methods is not None else "") + ") nor --plot")
    if plot_title is not None and "\n" in plot_title:
        raise UsageError("--title is one line; it holds a line break")
    if trend != "full" and table != "robustness" and plot is None:
        raise UsageError(f"--trend {trend} applies to --table robustness and --plot (the ID-OOD trend line); give one "
                         "of them or leave --trend out")
    tol: Any = None
    if baseline is not None:
        from ftbench.report.regress import load_baseline, parse_tolerance

        tol = parse_tolerance("1.0" if tolerance is None else tolerance)
        base_df = load_baseline(baseline)
    from ftbench.validate import check_output_file

    for target, flag in ((output, "--output"), (plot, "--plot"), (summary, "--summary")):
        if target is not None:
            check_output_file(target, flag)  # before any work: a table is not computed to be lost

    if mark_vs is not None:
        if compare is not None or compare_methods is not None:
            raise UsageError("--mark-vs marks cells of the tables, which --compare/--compare-methods replace; give "
                             "it without them")
        if table == "blocks":
            raise UsageError("--mark-vs marks cells against a row of methods or tuned blocks; --table blocks has "
                             "shifts as rows: use it with --table shifts, methods, corruptions or robustness")
        if not mark_vs.strip():
            raise UsageError("--mark-vs expects a row name as the table prints it (e.g. full, lp-ft, 'block 1')")
    if compare_methods is not None:
        clash = [flag for flag, given in (("--baseline", baseline is not None), ("--compare", compare is not None),
                                          ("--plot", plot is not None), ("--show-selected", show_selected),
                                          ("--group-by", group_by is not None)) if given]
        if clash:
            raise UsageError(f"--compare-methods prints the paired differences only; it does not combine with "
                             f"{', '.join(clash)} (run them as separate reports)")
        if fmt not in ("terminal", "markdown", "csv", "json"):
            raise unknown("--format for --compare-methods", fmt, ("terminal", "markdown", "csv", "json"))
        if compare_methods[0] == compare_methods[1]:
            raise UsageError(f"--compare-methods: give two different rows, got {compare_methods[0]!r} twice")
    published: Any = None
    if compare is not None:
        from ftbench.report.compare import load_published

        published = load_published(compare)
    df, problems = read_results(results)
    for p in problems:
        print(clean(f"warning: skipped {p.path}: {p.reason}"), file=sys.stderr)
    if run_ids is not None:
        df = df[df["run_id"].isin(run_ids)]
    df = apply_filters(df, list(filters))
    if df.empty:
        raise UsageError(f"no readable ftbench results in {str(results)!r}" + (" after --filter" if filters else ""))
    if not (df["status"] == "ok").any():  # nothing to tabulate: say so plainly, once
        runs = df.drop_duplicates("run_id")["status"].fillna("no status").astype(str).value_counts()
        what = ", ".join(f"{n} {status}" for status, n in runs.items())
        if run_ids is not None:  # a sweep's closing table: its runs' failures are listed above; exit 0 as documented
            print(f"note: no table: none of the suite's {int(runs.sum())} run(s) is ok ({what})", file=sys.stderr)
            return 0
        raise UsageError(f"no successful runs to report in {str(results)!r}" + (" after --filter" if filters else "")
                         + f": {int(runs.sum())} run(s), {what}; the table uses runs with status ok (the results' "
                         "error column says why each run failed)")
    if compare is None:
        from ftbench.report.table import check_metric

        check_metric(df, metric)
    if row_names is not None:  # an unknown row is the only line said, before any note
        from ftbench.report.table import check_rows

        check_rows(df, table, row_names)
    failed = int((df["status"] != "ok").sum())
    if failed:
        print(f"note: {failed} run(s) not ok (failed or diverged) are left out of the table", file=sys.stderr)
    if compare is None:
        from ftbench.report.table import select_parts, unselectable_rows

        if compare_methods is None:  # the tables: one per protocol and model, each with a selection that applies
            parts, notice = select_parts(split_groups(df, group_by), selection, checkpoint, metric)
            if notice and (plot is not None or baseline is not None):  # these use one selection for every run
                raise UsageError(f"{notice.split(';')[0]}; {'--plot' if plot is not None else '--baseline'} uses one "
                                 "selection for every run: choose the runs it applies to with --filter (e.g. "
                                 "--filter protocol=...) or leave --select out")
            if notice:
                print(f"note: {notice}", file=sys.stderr)
            unscored = sum(unselectable_rows(part, sel, checkpoint, metric) for _, part, sel in parts)
        else:
            unscored = unselectable_rows(df, selection, checkpoint, metric)
        if unscored:
            print(f"note: {unscored} row(s) have no value of the --select {selection} split (NaN) and are left out of "
                  "the selection", file=sys.stderr)
    for w in mixed_settings(df):
        print(f"warning: {w}", file=sys.stderr)
    if compare_methods is not None:  # "does A beat B?": paired per-seed differences, instead of the tables
        from ftbench.report.paired import compare_methods as paired, render as render_paired

        a, b = compare_methods
        text = render_paired(paired(df, a, b, selection, checkpoint, metric), a, b,
                             "markdown" if fmt == "terminal" else fmt)
        if output is None:
            sys.stdout.write(text)
        else:
            _write_atomic(output, text)
        return 0
    if published is not None:  # the papers' numbers beside ftbench's, instead of the tables
        from ftbench.report.compare import compare as compare_published
        from ftbench.report.compare import render as render_comparison

        comparison = compare_published(df, published[0], selection, checkpoint)
        comparison.missing_tables = published[1]
        text = render_comparison(comparison, fmt if fmt in ("markdown", "latex") else "terminal")
        if output is None:
            sys.stdout.write(clean(text))
        else:
            _write_atomic(output, text)
        # then --plot and the gate, as with the tables
    else:
        table_title = title if plot_title is None else plot_title
        built, skipped = [], []
        for group, part, sel in parts:
            try:
                built.append(((group, part, sel), build(part, table, sel, metric, checkpoint=checkpoint,
                                                        title=" — ".join(x for x in (table_title, group) if x),
                                                        trend=trend_methods, within=within)))
            except UsageError as e:  # of several tables, one this kind cannot be made of is said and left out
                if len(parts) == 1:
                    raise
                skipped.append((group, e))
        if not built:
            raise skipped[0][1]
        for group, e in skipped:
            print(clean(f"note: no --table {table} for {group}: {e}"), file=sys.stderr)
        parts, grids = [x for x, _ in built], [g for _, g in built]
        from ftbench.report.table import rows_in, select_rows

        if mark_vs is not None:  # significance marks against a named row, in each table that has it
            from ftbench.report.paired import mark_against

            having = [g for g in grids if rows_in(g, [mark_vs])]
            for g in having or grids[:1]:  # no table has it: the first one's error names its rows
                mark_against(g, mark_vs)
            for (group, _, _), g in zip(parts, grids):
                if having and all(g is not h for h in having):
                    print(clean(f"note: --mark-vs {mark_vs}: no such row in the table for {group}; it is not marked"),
                          file=sys.stderr)
        for g in grids:
            if row_names is not None:  # with one table per protocol and model: the rows each one has
                select_rows(g, row_names if len(grids) == 1 else rows_in(g, row_names))
            g.label, g.short_caption = label or "", caption or ""
        if row_names is not None and len(grids) > 1:  # a table none of whose rows --rows names is left out
            parts, grids = [p for p, g in zip(parts, grids) if g.rows], [g for g in grids if g.rows]
        if fmt == "terminal" and output is None:
            for g in grids:
                for part in rich_tables(g, out.width):  # split to fit the terminal, never cut
                    out.print(part, soft_wrap=False)  # the caption and note of a split table wrap
                if show_selected:
                    out.print(escape(render_selected(g, fmt)))
        else:
            texts = [render(g, fmt, show_selected) for g in grids]
            if fmt == "markdown" and any(group for group, _, _ in parts):
                texts = [f"### {group}\n\n{t}" for (group, _, _), t in zip(parts, texts)]
            if fmt == "json" and len(texts) > 1:
                text = "[\n" + ",\n".join(t.strip() for t in texts) + "\n]\n"
            else:
                text = "\n".join(texts)
            if output is None:
                sys.stdout.write(clean(text))
            else:
                _write_atomic(output, text)
    if plot is not None and table == "pareto" and published is None:  # the front: OOD against FLOPs
        from ftbench.report.plots import plot_pareto

        plot_pareto(grids, plot, plot_title)
        print(f"plot written to {plot}", file=sys.stderr)
    elif plot is not None:
        from ftbench.report.plots import plot_results

        plot_results(df, plot, selection, metric, trend=trend_methods,
                     panels=tuple(panel_names) if panel_names else PANELS, title=plot_title)
        print(f"plot written to {plot}", file=sys.stderr)
    if baseline is not None:
        from ftbench.report.regress import compare, render_summary, render_text

        # The same filters on both sides, so filtered-out cells do not count as vanished.
        comparison = compare(df, apply_filters(base_df, list(filters), refuse_empty=False), tol, selection, two_sided=two_sided)
        # On stderr: stdout may carry a table in a machine format (markdown, csv, json, ...).
        print(render_text(comparison, allow_missing).rstrip("\n"), file=sys.stderr)
        if summary is not None:
            _write_atomic(summary, render_summary(comparison, allow_missing), "--summary")
        if comparison.failed(allow_missing):
            return 1
    return 0


@app.command(epilog="Examples:\n\n  ftbench report ftbench-results --table blocks --format markdown\n\n  ftbench report new-results --baseline old-results --tolerance auto")
def report(
    results: Path = typer.Argument(DEFAULT_OUT, help="results folder (or one parquet file)"),
    table: str = typer.Option("shifts", help="shifts, blocks (surgical paper), methods (LP-FT/PETL style), corruptions, "
                              "robustness (effective robustness, Taori et al. 2020) or pareto (OOD against "
                              "trainable parameters, seconds and FLOPs, the Pareto front marked)", rich_help_panel="Table"),
    within: Optional[float] = typer.Option(None, "--within", metavar="X", help="--table pareto: also mark the "
                                           "cheapest row within X OOD points of the best", rich_help_panel="Table"),
    fmt: str = typer.Option("terminal", "--format", help="terminal, markdown, latex, html, csv or json", rich_help_panel="Table"),
    select: str = typer.Option("val", help="model selection: val (the protocol's own: target val in few-shot, ID val "
                               "in id-ood), target-val, id-val, ood-val (id-ood), source-val (few-shot) or oracle", rich_help_panel="Table"),
    trend: str = typer.Option("full", help="--table robustness: comma-separated methods whose runs (every "
                              "hyperparameter, seed and checkpoint) fit the ID-OOD trend line", rich_help_panel="Table"),
    checkpoint: str = typer.Option("best", help="best: select among --checkpoints rows too (early stopping); final: end of training only", rich_help_panel="Table"),
    metric: str = typer.Option("ood_acc", help="target metric column to tabulate (e.g. ood_acc)", rich_help_panel="Table"),
    filter_: list[str] = typer.Option([], "--filter", metavar="COLUMN=VALUE", help="keep runs with column=value, repeatable", rich_help_panel="Table"),
    group_by: Optional[str] = typer.Option(None, help="one table per value of this column (e.g. model)", rich_help_panel="Table"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="write the table to this file", rich_help_panel="Table"),
    plot: Optional[Path] = typer.Option(None, help="also draw ID-vs-OOD and by-block plots (.png, .svg, .pdf)", rich_help_panel="Table"),
    baseline: Optional[Path] = typer.Option(None, help="gate against this baseline results folder or parquet file", rich_help_panel="Regression gate"),
    tolerance: Optional[str] = typer.Option(None, help="with --baseline: allowed drop in accuracy points, or 'auto' "
                                            "(t-test over seeds) [default: 1.0]", rich_help_panel="Regression gate"),
    summary: Optional[Path] = typer.Option(None, help="write a Markdown summary of the gate (e.g. $GITHUB_STEP_SUMMARY)", rich_help_panel="Regression gate"),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="cells missing from the results do not fail the gate", rich_help_panel="Regression gate"),
    compare: Optional[str] = typer.Option(None, "--compare", help="'paper': the papers' published numbers beside "
                                          "ftbench's, with the difference (or a TOML file of published numbers)", rich_help_panel="Table"),
    two_sided: bool = typer.Option(False, "--two-sided", help="an improvement beyond the tolerance fails the gate too "
                                   "(a deterministic baseline must be refreshed in the commit that moves the numbers)", rich_help_panel="Regression gate"),
    show_selected: bool = typer.Option(False, "--show-selected", help="also print which run (and checkpoint or "
                                       "WiSE-FT alpha) each cell chose per seed, with its hyperparameters "
                                       "and, for a tie, what broke it (json output always carries them)",
                                       rich_help_panel="Table"),
    compare_methods: Optional[tuple[str, str]] = typer.Option(None, "--compare-methods", metavar="A B",
                                                              help="does row A beat row B? the paired per-seed "
                                                              "difference A - B per column with a 95% t interval over "
                                                              "seeds and a plain verdict (row names as the tables print "
                                                              "them: lp-ft, full, 'block 1')", rich_help_panel="Table"),
    rows: Optional[str] = typer.Option(None, "--rows", metavar="ROW,ROW", help="only these table rows, in this "
                                       "order (as the table names them, or their display names: 'full,lp-ft,block 1')",
                                       rich_help_panel="Paper output"),
    label: Optional[str] = typer.Option(None, "--label", help="--format latex: \\label{} of the table (e.g. tab:ood)",
                                        rich_help_panel="Paper output"),
    caption: Optional[str] = typer.Option(None, "--caption", help="--format latex: the caption (default: the "
                                          "table's title; the protocol details go in a note under the table)",
                                          rich_help_panel="Paper output"),
    panels: Optional[str] = typer.Option(None, "--panels", metavar="PANEL,PANEL", help="with --plot: scatter "
                                         "(ID vs OOD), bars (OOD by tuned block) or scatter,bars [default: both]",
                                         rich_help_panel="Paper output"),
    plot_title: Optional[str] = typer.Option(None, "--title", help="one-line title of the tables and of the --plot "
                                             "figure ('' for none: the figure then has no title and no protocol "
                                             "lines; put them in the paper's caption)", rich_help_panel="Paper output"),
    mark_vs: Optional[str] = typer.Option(None, "--mark-vs", metavar="ROW", help="mark each cell ahead of (↑) or "
                                          "behind (↓) this row in its column: the paired per-seed difference's 95% t "
                                          "interval excludes 0, as --compare-methods computes it", rich_help_panel="Table"),
) -> None:
    """Print the paper-style tables of a results folder; plot; gate against a baseline (exit 1 on regression)."""
    code = _report(results, fmt, select, output, table=table, metric=metric, filters=tuple(filter_),
                   group_by=group_by, plot=plot, baseline=baseline, tolerance=tolerance, summary=summary,
                   allow_missing=allow_missing, checkpoint=checkpoint, trend=trend, compare=compare,
                   two_sided=two_sided, show_selected=show_selected, compare_methods=compare_methods,
                   rows=rows, label=label, caption=caption, panels=panels, plot_title=plot_title, mark_vs=mark_vs,
                   within=within)
    if code:
        raise typer.Exit(code)


@app.command(epilog="Examples:\n\n  ftbench advise --shift corruption --corruption contrast --severity 5\n\n  "
             "ftbench advise --shift label-flip --method surgical --method full --format json")
def advise(
    benchmark: str = typer.Option("digits", help="benchmark name (ftbench list benchmarks)", rich_help_panel="Data"),
    shift: Optional[str] = typer.Option(None, help="shift of the benchmark, as ftbench run's --shift", rich_help_panel="Data"),
    corruption: Optional[str] = typer.Option(None, help="corruption name for --shift corruption", rich_help_panel="Data"),
    severity: Optional[int] = typer.Option(None, help="corruption severity 1..5", rich_help_panel="Data"),
    shots: Optional[int] = typer.Option(None, help="labelled target examples per class", rich_help_panel="Data"),
    protocol: str = typer.Option("few-shot", help="few-shot or id-ood (docs/protocols.md)", rich_help_panel="Data"),
    model: Optional[str] = typer.Option(None, help="model name (default: the benchmark's)", rich_help_panel="Model and method"),
    method: list[str] = typer.Option([], "--method", help="candidate method, repeatable (default: surgical, whose "
                                     "candidates are the model's blocks)", rich_help_panel="Model and method"),
    strategy: str = typer.Option("halving", help="halving (successive halving over block and lr on the selection "
                                 "split) or rgn (Auto-RGN's relative gradient norm per block)", rich_help_panel="Advice"),
    seed: int = typer.Option(0, help="run seed of the advisor's runs", rich_help_panel="Training"),
    steps: Optional[int] = typer.Option(None, help="optimizer steps of a full run (default 50)", rich_help_panel="Training"),
    device: str = typer.Option("auto", help="auto, cpu or cuda", rich_help_panel="Where"),
    threads: int = typer.Option(1, help="torch CPU threads (1, as run and sweep, so the rows are theirs)", rich_help_panel="Where"),
    out_dir: Path = typer.Option(DEFAULT_OUT, "--out", help="results folder: the advisor's runs land here as "
                                 "ordinary rows, and runs already there are read, not rerun", rich_help_panel="Where"),
    fmt: str = typer.Option("terminal", "--format", help="terminal or json", rich_help_panel="Advice"),
) -> None:
    """Which block (and method) to tune for this shift: rank the candidates with a fraction of the grid's compute."""
    import json

    from ftbench.advise.advisor import STRATEGIES, advise as run_advice, as_json, as_text
    from ftbench.execution.runner import pick_device
    from ftbench.methods import check_method_name
    from ftbench.plan.resolve import resolve
    from ftbench.spec import RunSpec
    from ftbench.sweep.task import set_threads
    from ftbench.validate import check_output_dir, check_settings

    if fmt not in ("terminal", "json"):
        raise unknown("--format for advise", fmt, ("terminal", "json"))
    if strategy not in STRATEGIES:
        raise unknown("strategy", strategy, list(STRATEGIES))
    for m in method:
        check_method_name(m)
    if len(set(method)) != len(method):
        raise UsageError(f"--method: a method given twice in {' '.join(method)}")
    base = resolve(RunSpec(benchmark=benchmark, shift=shift, corruption=corruption, severity=severity, shots=shots,
                           model=model, method="surgical", protocol=protocol, seed=seed, steps=steps,
                           lr=1e-3, wd=1e-4, batch_size=64, optimizer="adam"))
    check_settings({"threads": threads})
    check_output_dir(out_dir, "--out")
    pick_device(device)
    set_threads(threads)
    a = run_advice(base, out_dir, list(method) or None, strategy, device)
    if fmt == "json":
        sys.stdout.write(json.dumps(as_json(a), indent=2) + "\n")
    else:
        out.print(escape(as_text(a).rstrip("\n")))


@app.command(epilog="Examples:\n\n  ftbench fetch --list\n\n  ftbench fetch cifar10-c --mirror /data/archives")
def fetch(
    names: list[str] = typer.Argument(None, help="datasets to fetch (default: list them)"),
    list_: bool = typer.Option(False, "--list", help="list known datasets with size, licence and status on disk"),
    root: Optional[Path] = typer.Option(None, help="data root (default: $FTBENCH_DATA, else $XDG_CACHE_HOME/ftbench/data, ~/.cache/ftbench/data)"),
    mirror: Optional[str] = typer.Option(None, help="fetch archives from this URL or local folder instead (by file name)"),
) -> None:
    """Download, verify and extract benchmark data; validate data that must be placed by hand."""
    from ftbench.data.fetch import DATASETS, data_root, fetch as fetch_one, status

    base = data_root(root)
    from ftbench.validate import check_output_dir

    check_output_dir(base, "data root", writable=False)  # a file in the way: say so, also when only listing
    if list_ or not names:
        out.print(f"data root: {escape(str(base))}")
        out.print(escape(f"{'digits':12s} {'0 MB':>8s}  bundled with scikit-learn, nothing to fetch   — "
                         "embedded benchmark (BSD-3-Clause, UCI optdigits)"))
        for n in DATASETS.names():
            ds = DATASETS.get(n)
            out.print(escape(f"{n:12s} {ds.size:>8s}  {status(ds, base):45s} — {ds.help}; licence: {ds.licence}"))
        return
    for n in names:
        if n != "digits" and n not in DATASETS:
            raise unknown("dataset", n, ["digits", *DATASETS.names()])
    for n in names:
        if n == "digits":
            out.print("digits: bundled with scikit-learn, nothing to fetch")
            continue
        out.print(escape(fetch_one(n, base, mirror, say=lambda m: out.print(escape(m)))))


@app.command("list", epilog="Examples:\n\n  ftbench list methods lora\n\n  ftbench list models timm/resnet18\n\n  ftbench list suites")
def list_(
    what: str = typer.Argument("methods", help="benchmarks, models, methods, corruptions, recipes, suites or protocols"),
    name: Optional[str] = typer.Argument(None, help="with models or methods: only this one, in full (a timm/NAME "
                                         "model included)"),
    suites: Optional[Path] = typer.Option(None, help="suites file for 'list suites' (default: the bundled suites plus ./benchmarks.toml's)"),
) -> None:
    """Show the registries: benchmarks (with shifts), models (with blocks), methods (with options)."""
    targets = ["benchmarks", "models", "methods", "corruptions", "recipes", "suites", "protocols"]
    if what not in targets:
        raise unknown("list target", what, targets)
    if name is not None and what not in ("methods", "models"):
        raise UsageError(f"'ftbench list {what}' takes no name; 'list methods NAME' and 'list models NAME' do")
    # Recipes and protocols need no torch. The other listings need the registries (torch, timm): their
    # lines come from the catalog cache (ftbench/catalog.py) in a fresh process once computed.
    if what in ("recipes", "protocols"):
        lines = _listing(what, name, None)
    else:
        from ftbench.catalog import cached, markup_lines

        key: tuple[Any, ...] = ("list", what, name)
        path = None
        if what == "suites":
            from ftbench.plan.suites import bundled_suites_file, local_suites_file, suites_file_key

            path = suites
            files = [suites] if suites is not None else [bundled_suites_file(), local_suites_file()]
            for f in files:
                if f is not None:
                    key += suites_file_key(f) or ("unreadable",)  # the listing itself then says what is wrong
        elif what == "corruptions":
            key += (os.environ.get("FTBENCH_FROST_DIR", ""),)
        lines = cached(key, lambda: _listing(what, name, path), markup_lines)
    for line in lines:
        out.print(line)


def _listing(what: str, name: Optional[str], suites: Optional[Path]) -> list[str]:
    """The lines (rich markup) of ``ftbench list WHAT [NAME]``."""
    lines: list[str] = []
    if what == "methods":
        from ftbench.methods.base import all_methods, get_method

        for m in ([get_method(name)] if name is not None else all_methods()):
            blocks = " (takes --block)" if m.takes_blocks else ""
            lines.append(f"[bold]{m.name}[/]" + escape(f"{blocks}: trains {m.help}"))
            if m.paper:
                lines.append(escape(f"    paper: {m.paper}"))
            lines.append(escape(f"    uses: {', '.join(sorted(m.uses)) or 'no hyperparameters'}"))
            for k, o in m.options.items():
                choices = f" {{{', '.join(map(str, o.choices))}}}" if o.choices else ""
                lines.append(escape(f"    --set {k}={o.default}{choices}: {o.help}"))
    elif what == "benchmarks":
        from ftbench.data.base import BENCHMARKS, get_benchmark

        get_benchmark("digits")
        for n in BENCHMARKS.names():
            b = get_benchmark(n)
            shots = f", shots {b.default_shots}" if b.few_shot else ""
            lines.append(f"[bold]{n}[/]: " + escape(f"{b.help} (default model {b.default_model}{shots})"))
            for s in b.shifts.values() if b.few_shot else ():
                lines.append(escape(f"    --shift {s.name} [{s.level} level]: {s.help}"))
            if b.id_ood_shift is not None:
                sets = ", ".join(f"{k} ({v} level)" for k, v in b.id_ood_sets.items())
                val = "; OOD val set" if b.id_ood_has_val else "; no OOD val set"
                lines.append(escape(f"    --protocol id-ood --shift {b.id_ood_shift.name}: {b.id_ood_shift.help}; "
                                    f"OOD test sets: {sets}{val}"))
    elif what == "protocols":
        from ftbench.protocols.base import get_protocol, protocol_names

        for n in protocol_names():
            p = get_protocol(n)
            lines.append(f"[bold]{n}[/]" + escape(f": {p.help}"))
            lines.append(escape(f"    papers: {p.papers}"))
            lines.append(escape(f"    --select: {', '.join(p.selections)}"))
    elif what == "models":
        from ftbench.models.base import MODELS, block_parameter_counts, get_model_entry, register_builtin_models

        register_builtin_models()
        for n in ([name] if name is not None else MODELS.names()):
            e = get_model_entry(n)
            counts = block_parameter_counts(e)
            weights = "hub" if e.weights else "trained on the source split"
            lines.append(f"[bold]{escape(n)}[/]: " + escape(f"{e.help}; blocks: {', '.join(e.block_names)}"))
            lines.append(escape(f"    parameters ({e.native[0]}-channel input, {e.native[1]} classes): "
                                + ", ".join(f"{b} {c:,}" for b, c in counts.items())
                                + f"; total {sum(counts.values()):,}; weights: {weights}"))
            if name is not None:  # the input transform its pretraining defines (ftbench/data/preprocess.py)
                t = e.transform
                if t is None:
                    lines.append(escape("    input transform: none; it takes the benchmark's images as the benchmark "
                                        "resizes and normalises them"))
                else:
                    when = ("its hub weights or --weights FILE (an open_clip state dict)" if e.zero_shot
                            else "its hub weights (not --weights FILE or scratch)")
                    lines += [escape("    " + ln) for ln in t.describe()]
                    lines.append(escape(f"    applied to the benchmark's images with {when}; column input_transform"))
        if name is None:
            lines.append("[bold]timm/NAME[/]" + escape("[:key=value,...]: any timm model (e.g. timm/resnet18, "
                         "timm/efficientnet_b0); blocks by family (resnet, vit, convnext) or derived from its stages"))
            lines.append(escape("    weights: any model takes --weights PATH (a state dict) or --weights scratch "
                                "(trained on the source split)"))
    elif what == "corruptions":
        from ftbench.data import corruptions

        lines.append(escape(", ".join(corruptions.names())))
        lines.append(escape(f"frost: {corruptions.frost_source()}"))
    elif what == "recipes":
        from ftbench.papers.recipes import describe, recipes

        for rname, r in recipes().items():
            lines.append(f"[bold]{escape(rname)}[/] (--recipe {escape(rname)}; suite key recipe = \"{escape(rname)}\")")
            lines.extend(escape(f"    {line}") for line in describe(r))
    elif what == "suites":
        from ftbench.plan.suites import bundled_suites_file, expand_suite, local_suites_file, suite_descriptions

        # Without --suites: the bundled suites, then ./benchmarks.toml's, which add to them (a name in
        # both: the local one is what `sweep NAME` runs).
        local = local_suites_file() if suites is None else None
        listed = [(suites, "")] if suites is not None else [(bundled_suites_file(), "")]
        if local is not None:
            listed.append((local, f" [{local}]"))
        shadowed = set(suite_descriptions(local)) if local is not None else set()
        bundled = set(suite_descriptions(bundled_suites_file())) if local is not None else set()
        for path, where in listed:
            for sname, about in suite_descriptions(path).items():
                if not where and sname in shadowed:
                    continue  # listed with the local file, which sweep runs
                hides = " (hides the bundled one)" if where and sname in bundled else ""
                lines.append(f"[bold]{escape(clean(sname, newlines=False))}[/]{escape(clean(where, newlines=False))}"
                             f"{hides} ({len(expand_suite(sname, path))} runs): {escape(clean(about, newlines=False))}")
    return lines


def _given_options(command: Any, argv: list[str], keep: Any) -> tuple[Optional[str], list[tuple[str, Any, Optional[str]]]]:
    """The subcommand of ``argv``, and each option of it given in ``argv`` whose click parameter ``keep``
    accepts: (the option as typed, its parameter, its value: after ``=`` or the next word; None at the end)."""
    sub = next((a for a in argv if not a.startswith("-")), None)
    cmd = getattr(command, "commands", {}).get(sub)
    if cmd is None:
        return sub, []
    params = {o: p for p in cmd.params if getattr(p, "param_type_name", "") == "option" and keep(p)
              for o in (*p.opts, *p.secondary_opts)}
    rest = argv[argv.index(sub) + 1:]
    given = []
    for i, a in enumerate(rest):
        if a == "--":
            break
        opt, eq, value = a.partition("=")
        if opt in params:
            given.append((opt, params[opt], value if eq else (rest[i + 1] if i + 1 < len(rest) else None)))
    return sub, given


def refuse_repeated_options(command: Any, argv: list[str]) -> None:
    """A single-valued option given twice is an error, not "the last one wins": ``run --seed 0 --seed 1``
    would silently run seed 1 only. Options meant to repeat (``--block``, ``--set``) and flags pass."""
    sub, given = _given_options(command, argv, lambda p: not p.multiple and not p.is_flag)
    seen: dict[Any, list[str]] = {}
    names: dict[Any, str] = {}
    for opt, p, value in given:
        names.setdefault(p, opt)
        seen.setdefault(p, []).append("" if value is None else value)
    for p, values in seen.items():
        if len(values) > 1:
            grid = (" for a grid of runs, write a suite and use `ftbench sweep` (docs/sweeps.md)"
                    if sub == "run" else "")
            raise UsageError(f"{names[p]} given {len(values)} times ({', '.join(values)}); `ftbench {sub}` "
                             f"takes one value for it;{grid or ' give it once'}")


INTEGER_TEXT = r"\s*[+-]?\d+(?:_\d+)*\s*"  # what Python's int() reads; no '5.0', '1e3', '0x10'


def refuse_non_integers(command: Any, argv: list[str]) -> None:
    """An integer option takes an integer as written: ``--steps 5.0`` is refused as the suites key
    ``steps = 5.0`` is (ftbench/validate.py), with the same words, instead of being read as 5."""
    import re

    _, given = _given_options(command, argv, lambda p: not p.is_flag and getattr(
        getattr(p, "type_descriptor", None), "annotation", None) is int)
    for opt, p, value in given:
        if value is not None and not re.fullmatch(INTEGER_TEXT, value):
            from ftbench.validate import RUN_NUMBERS, SETTING_NUMBERS

            rule = RUN_NUMBERS.get(p.name) or SETTING_NUMBERS.get(p.name) or SETTING_NUMBERS.get(opt.lstrip("-"))
            words = rule.words() if rule is not None else "an integer"
            raise UsageError(f"{opt} must be {words}, got {value!r} (not an integer)")


def main(argv: Optional[list[str]] = None) -> int:
    """Console entry point: every usage problem is one ``error:`` line on stderr and exit code 2."""
    command = typer.main.get_command(app)
    try:
        refuse_repeated_options(command, list(sys.argv[1:] if argv is None else argv))
        refuse_non_integers(command, list(sys.argv[1:] if argv is None else argv))
        from ftbench.environment import check_environment

        check_environment()  # every FTBENCH_* value, before any command reads one (docs/cli.md)
        rv = command.main(args=argv, prog_name="ftbench", standalone_mode=False)
    except UsageError as e:
        print(f"error: {clean(' '.join(str(e).split()), newlines=False)}", file=sys.stderr)
        return 2
    except ClickException as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `ftbench`: show help, like --help
            print(e.format_message().strip())
            return 0
        print(f"error: {clean(' '.join(e.format_message().split()), newlines=False)}", file=sys.stderr)
        return 2
    except typer.Exit as e:
        if e.exit_code == 130:
            print("interrupted", file=sys.stderr)
        return int(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        return 130
    if rv == 130:  # typer turns KeyboardInterrupt into exit code 130
        print("interrupted", file=sys.stderr)
    return rv if isinstance(rv, int) else 0


def entry() -> None:
    """``ftbench`` console script."""
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
