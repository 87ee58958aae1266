"""The bad-input corpus: every input here gets exit code 2, exactly one ``error:`` line on stderr
(naming the bad value), no traceback, and no file written — run as the user runs it, ``ftbench``
in a process of its own (see tests/cli_server.py; ``FTBENCH_CORPUS_FRESH=1``: a fresh interpreter
per input).

A new bad input joins with one line in CORPUS: the command (placeholders below stand for files
the test makes in an empty folder, which is the working folder) and a part of the error line.
Leading ``NAME=value`` words of a command are environment variables of that command only.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMALL = REPO / "tests" / "data" / "results_small"

# Placeholders: {OUT} a folder that does not exist yet; {F} a regular file; {RO} a read-only folder;
# {R} a results folder (a copy of tests/data/results_small); {S} a suites file holding the case's
# third field, with its suite named s; {B} a binary (non-UTF-8) file; {STR} a results file with
# strings in ood_acc; {FOREIGN} a parquet file without ftbench columns; {CRC} / {UNSAFE} mirror
# folders holding a waterbirds archive with a bad gzip CRC / with an entry outside the folder;
# {FIFO} a named pipe nobody writes to.
# {P} a published-numbers file (report --compare) holding the case's third field; {BADMETA} a results
# file whose pandas metadata is malformed JSON; {FAILED} a results folder whose only run failed;
# {LOOP} a symlink that points at itself; {SLOT} a results folder in which a folder holds the name
# of the smoke suite's first result file.
# {DANGLING} a symbolic link to nothing; {PASSWD} a text file like /etc/passwd; {TRUNC} a legacy-format
# torch.save file cut short.


def _include_diamond(levels: int) -> str:
    """Suite s (the case text of {S}) and d1..dN, each including the next twice: 2**levels paths."""
    names = ["s", *(f"d{i}" for i in range(1, levels + 1))]
    tables = [f'include = ["{b}", "{b}"]' for b in names[1:]]
    return "\n".join([tables[0], *(f"[suites.{a}]\n{t}" for a, t in zip(names[1:], tables[1:])),
                      f'[suites.{names[-1]}]\nmethod = "none"'])


def _include_chain(length: int) -> str:
    """Suite s including c1, which includes c2, ... c{length}: a chain ``length`` includes deep."""
    return "\n".join(['include = "c1"', *(f'[suites.c{i}]\ninclude = "c{i + 1}"' for i in range(1, length)),
                      f'[suites.c{length}]\nmethod = "none"'])


_GRID_9M = (f'method = "none"\nseed = [{", ".join(map(str, range(3000)))}]\n'
            f'lr = [{", ".join(f"{(i + 1) * 1e-6:.6g}" for i in range(3000))}]')
_ALPHAS_1002 = ",".join(f"{i / 1001:.6f}" for i in range(1002))  # ascending, in [0, 1], one more than the limit

CORPUS: list[tuple[str, str, str | None]] = [
    # --- output paths: checked before any work -------------------------------------------------
    ("run --steps 5 --out {F}", "--out '{F}' is a file, not a folder", None),
    ("run --steps 5 --out {F}/sub", "--out '{F}/sub' lies under '{F}', which is a file", None),
    ("run --steps 5 --out {RO}", "--out '{RO}' is not writable", None),
    ("run --steps 5 --out {RO}/sub", "--out '{RO}/sub' is not writable", None),
    ("sweep smoke --out {F}", "--out '{F}' is a file, not a folder", None),
    ("sweep smoke --out {F}/sub", "lies under '{F}', which is a file", None),
    ("sweep smoke --out {RO}", "--out '{RO}' is not writable", None),
    ("report {R} -o {RO}/table.md", "--output '{RO}/table.md' cannot be written", None),
    ("report {R} -o {F}/table.md", "--output '{F}/table.md' lies under '{F}'", None),
    ("report {R} -o {R}", "--output '{R}' is a folder", None),
    ("report {R} --plot {RO}/plot.png", "--plot '{RO}/plot.png' cannot be written", None),
    ("report {R} --plot {F}/plot.png", "--plot '{F}/plot.png' lies under '{F}'", None),
    ("report {R} --baseline {R} --summary {RO}/gate.md", "--summary '{RO}/gate.md' cannot be written", None),
    ("report {R} --baseline {R} --summary {F}/gate.md", "--summary '{F}/gate.md' lies under '{F}'", None),
    ("fetch waterbirds --root {F} --mirror {CRC}", "data root '{F}' is a file", None),
    ("fetch waterbirds --root {RO} --mirror {CRC}", "data root '{RO}' is not writable", None),
    # --- numbers: one table of types and ranges (ftbench/validate.py) --------------------------
    ("run --seed 9223372036854775808 --out {OUT}", "seed must be an integer in 0..9223372036854775807, got 9223372036854775808", None),
    ("run --seed 18446744073709551616 --out {OUT}", "seed must be an integer in 0..9223372036854775807", None),
    ("run --seed -1 --out {OUT}", "seed must be an integer in 0..9223372036854775807, got -1", None),
    ("run --lr inf --out {OUT}", "lr must be a positive number, got inf", None),
    ("run --lr nan --out {OUT}", "lr must be a positive number, got nan", None),
    ("run --lr -0.001 --out {OUT}", "lr must be a positive number, got -0.001", None),
    ("run --lr 0 --out {OUT}", "lr must be a positive number, got 0.0", None),
    ("run --wd inf --out {OUT}", "wd must be a non-negative number, got inf", None),
    ("run --wd nan --out {OUT}", "wd must be a non-negative number, got nan", None),
    ("run --wd -1 --out {OUT}", "wd must be a non-negative number, got -1.0", None),
    ("run --steps 0 --out {OUT}", "steps must be a positive integer, got 0", None),
    ("run --steps 9223372036854775808 --out {OUT}", "steps must be an integer in 1..10000000, got 9223372036854775808", None),
    ("run --epochs 0 --out {OUT}", "epochs must be a positive integer, got 0", None),
    ("run --batch-size 0 --out {OUT}", "batch_size must be a positive integer, got 0", None),
    ("run --checkpoints 0 --out {OUT}", "checkpoints must be a positive integer, got 0", None),
    ("run --shots 0 --out {OUT}", "shots must be a positive integer, got 0", None),
    ("run --severity 6 --out {OUT}", "severity must be an integer in 1..5, got 6", None),
    ("run --threads 0 --out {OUT}", "--threads must be a positive integer, got 0", None),
    ("run --threads 99999999999999999999 --out {OUT}", "--threads must be an integer in 1..4096, got 99999999999999999999", None),
    ("run --method lp-ft --set lp_l2=inf --out {OUT}", "option lp_l2=inf of method 'lp-ft' must be a non-negative number", None),
    ("run --method lp-ft --set lp_l2=1e-2 --out {OUT}", "option lp_l2 of method 'lp-ft' applies only with "
     "lp_select=fixed (given: lp_select=val); set --set lp_select=fixed or drop it", None),
    ("run --method linear-probe --set select=fixed --set c_max=10 --out {OUT}",
     "option c_max of method 'linear-probe' applies only with select=val (given: select=fixed)", None),
    ("run --method linear-probe --lr 1e-2 --out {OUT}", "--lr has no effect with method 'linear-probe'", None),
    ("run --method linear-probe --wd 1e-2 --out {OUT}", "--wd of method 'linear-probe' applies only with select=fixed", None),
    ("run --method linear-probe --checkpoints 3 --out {OUT}", "--checkpoints has no effect with method 'linear-probe'", None),
    ("run --method autoft --lr 1e-2 --out {OUT}", "--lr of method 'autoft' applies only with lr_mode=fixed", None),
    ("sweep smoke --out {OUT} --jobs 0", "--jobs must be a positive integer, got 0", None),
    ("sweep smoke --out {OUT} --jobs 99999999999999999999", "--jobs must be an integer in 1..4096", None),
    ("sweep smoke --out {OUT} --threads 0", "--threads must be a positive integer, got 0", None),
    ("sweep smoke --out {OUT} --per-gpu 0", "--per-gpu must be a positive integer, got 0", None),
    ("sweep smoke --out {OUT} --executor slurm --cpus-per-job inf", "--cpus-per-job must be a positive number, got inf", None),
    ("sweep smoke --out {OUT} --executor slurm --mem-gb nan", "--mem-gb must be a positive number, got nan", None),
    ("sweep smoke --out {OUT} --executor slurm --gpus-per-job inf", "--gpus-per-job must be a non-negative number, got inf", None),
    ("sweep smoke --out {OUT} --executor ray --cpus-per-job nan", "--cpus-per-job must be a positive number, got nan", None),
    ("report {R} --compare-methods 'block 1' 'last layer' --baseline {R}", "--compare-methods prints the paired differences only; it does not combine with --baseline", None),
    ("report {R} --compare-methods 'block 1' 'block 1'", "--compare-methods: give two different rows, got 'block 1' twice", None),
    ("report {R} --compare-methods 'block 1' 'last layer' --format latex", "unknown --format for --compare-methods 'latex'", None),
    ("FTBENCH_PORTABLE=yes-please run --out {OUT}", "environment variable FTBENCH_PORTABLE='yes-please' is not accepted", None),
    # --- --head-init: only where it has an effect ---------------------------------------------------
    ("run --method full --head-init zero-shot --out {OUT}", "--head-init zero-shot applies only under --protocol id-ood", None),
    ("run --protocol id-ood --method lp-ft --head-init fresh --out {OUT}", "--head-init has no effect with method 'lp-ft'", None),
    ("run --protocol id-ood --method full --head-init zero-shot --out {OUT}", "--head-init zero-shot needs a model with a text tower", None),
    ("run --protocol id-ood --method full --head-init probe --out {OUT}", "unknown --head-init 'probe'; accepted: fresh, zero-shot", None),
    # --- --set features=raw: a CLIP model's raw features, under id-ood only ---------------------------
    ("run --protocol id-ood --method full --set features=raw --out {OUT}",
     "--set features=raw applies to CLIP models (clip-*, digits-clip); model 'digits-resnet' is not one", None),
    ("run --model digits-clip --method full --set features=raw --out {OUT}",
     "--set features=raw applies only under --protocol id-ood", None),
    ("run --model digits-clip --protocol id-ood --method full --set features=normalised --out {OUT}",
     "features", None),
    # --- a model that cannot take the benchmark's image size: before any training -----------------
    ("run --model timm/vit_tiny_patch16_224 --weights scratch --out {OUT}",
     "cannot take the digits benchmark's 1x8x8 images (Input height (8) doesn't match model (224).); build the ViT "
     "for this size: timm/vit_tiny_patch16_224:img_size=8,patch_size=2", None),
    ("run --model timm/convnext_atto --weights scratch --out {OUT}",
     "use a model made for small images (digits-resnet, resnet26-cifar, timm/resnet18)", None),
    # --- limits against runaway work: refused before anything is expanded, allocated or run ---------
    ("sweep s --suites {S} --dry-run --out {OUT}", "{S}:1: suite 's' expands to 134,217,728 runs (each included "
     "suite counted as often as it is included), more than ftbench's limit of 100,000", _include_diamond(27)),
    ("sweep s --suites {S} --dry-run --out {OUT}", "{S}:1: suite 's' expands to 9,000,000 runs, more than ftbench's "
     "limit of 100,000; split it into smaller suites", _GRID_9M),
    ("sweep s --suites {S} --dry-run --out {OUT}", "{S}:1: suite 's': includes nest more than 32 levels deep "
     "(s -> c1 -> c2 -> ... -> c32 -> c33)", _include_chain(1000)),
    ("sweep s --suites {S} --dry-run --out {OUT}", "suites file '{S}' is larger than 4 MiB",
     'method = "none"\n#' + "x" * 4 * 2**20),
    ("sweep s --suites /dev/zero --dry-run --out {OUT}", "suites file '/dev/zero' is a character device; give a "
     "regular file", None),
    ("sweep s --suites {FIFO} --dry-run --out {OUT}", "suites file '{FIFO}' is a FIFO (named pipe); give a regular "
     "file", None),
    ("list suites --suites {FIFO}", "suites file '{FIFO}' is a FIFO (named pipe)", None),
    ("run --method spottune --set policy_width=99999999999 --out {OUT}", "option policy_width=99999999999 of method "
     "'spottune' must be an integer in 1..512 (ftbench's limit", None),
    ("run --method lp-ft --set lp_c_steps=99999999999999999999999 --out {OUT}", "option "
     "lp_c_steps=99999999999999999999999 of method 'lp-ft' must be an integer in 1..1000", None),
    ("run --checkpoints 9223372036854775807 --out {OUT}", "checkpoints must be an integer in 1..10000, got "
     "9223372036854775807 (ftbench's limit", None),
    ("run --steps 10000001 --out {OUT}", "steps must be an integer in 1..10000000, got 10000001", None),
    ("run --epochs 10001 --out {OUT}", "epochs must be an integer in 1..10000, got 10001", None),
    ("run --batch-size 65537 --out {OUT}", "batch_size must be an integer in 1..65536, got 65537", None),
    ("run --shots 1000001 --out {OUT}", "shots must be an integer in 1..1000000, got 1000001", None),
    ("run --threads 2147483647 --out {OUT}", "--threads must be an integer in 1..4096, got 2147483647", None),
    ("run --model timm/vit_tiny_patch16_224:img_size=8,patch_size=2,embed_dim=99999999 --weights scratch --out {OUT}",
     "has 1,439,999,989,499,999,963 parameters, more than ftbench's limit of 2,000,000,000", None),
    ("sweep smoke --out {OUT} --per-gpu 4097", "--per-gpu must be an integer in 1..4096, got 4097", None),
    ("run --method wise-ft --set alphas=" + _ALPHAS_1002 + " --out {OUT}", "option alphas of method 'wise-ft' has "
     "1002 values; accepted: at most 1001", None),
    ("run --method autoft --set trials=10001 --out {OUT}", "option trials=10001 of method 'autoft' must be an "
     "integer in 1..10000", None),
    ("run --method lora --model digits-vit --set r=1025 --out {OUT}", "option r=1025 of method 'lora' must be an "
     "integer in 1..1024", None),
    ("run --method full --set decay=adamw --out {OUT}", "unknown value for option decay of method 'full': 'adamw'; accepted: decoupled, coupled", None),
    ("run --method bitfit --model digits-clip --set proj=yes --out {OUT}", "unknown value for option proj of method "
     "'bitfit': 'yes'; accepted: frozen, train", None),
    ("run --method lora --model digits-vit --set proj=train --out {OUT}", "option proj=train of method 'lora' trains "
     "CLIP's image projection visual.proj, which model 'digits-vit' does not have", None),
    ("run --method surgical --model digits-resnet --block last --set proj=train --out {OUT}", "option proj=train of "
     "method 'surgical' trains CLIP's image projection visual.proj, which model 'digits-resnet' does not have", None),
    ("run --method surgical --model digits-clip --block 1 --set proj=train --out {OUT}", "option proj=train of "
     "method 'surgical' applies only with --block last (given: --block 1)", None),
    ("run --method adapter --model digits-clip --set scale=0 --out {OUT}", "option scale=0.0 of method 'adapter' "
     "must be a positive number", None),
    ("run --method adapter --set scale=-0.01 --out {OUT}", "option scale=-0.01 of method 'adapter' must be a "
     "non-negative number", None),
    ("run --method adapter --set scale=nan --out {OUT}", "option scale=nan of method 'adapter' must be a "
     "non-negative number", None),
    ("run --method adapter --set init=kaiming --out {OUT}", "unknown value for option init of method 'adapter': "
     "'kaiming'", None),
    ("run --method vpt --model clip-rn50 --out {OUT}", "vpt needs a ViT", None),
    ("sweep s --suites {S} --dry-run --out {OUT}", "{S}:2: suite 's': option policy_width=99999999999 of method "
     "'spottune' must be an integer in 1..512", 'method = "spottune"\noptions = {policy_width = 99999999999}'),
    ("sweep s --suites {S} --dry-run --out {OUT}", "{S}:2: suite 's': checkpoints must be an integer in 1..10000",
     "checkpoints = 9223372036854775807"),
    # --- a Ray cluster that does not answer: refused within seconds, not after minutes of retries ----
    ("sweep smoke --out {OUT} --executor ray --address 127.0.0.1:1",
     "cannot connect to the Ray cluster at '127.0.0.1:1': Connection refused (waited at most 10 s)", None),
    # without Ray's client extra (this environment): 'needs Ray's client extra'; with it: 'Connection refused'
    ("sweep smoke --out {OUT} --executor ray --address ray://127.0.0.1:1", "Ray cluster at 'ray://127.0.0.1:1'", None),
    # --- methods of models with a text tower; benchmarks of one protocol ---------------------------
    ("run --method flyp --protocol id-ood --out {OUT}",
     "method 'flyp' needs a model with a text tower (a zero-shot head from class prompts); model 'digits-resnet' "
     "has none; models with one: clip-rn50, clip-vit-b16, clip-vit-b32, clip-vit-l14, digits-clip", None),
    ("run --method autoft --set terms=ce,flyp --out {OUT}", "needs a model with a text tower", None),
    ("run --benchmark imagenet --out {OUT}", "benchmark 'imagenet' has no few-shot target splits (its OOD sets are "
     "test sets only): run it with --protocol id-ood", None),
    # --- a host that refuses the connection: nothing downloaded, nothing claimed to be kept -----
    ("fetch waterbirds --root {OUT} --mirror http://127.0.0.1:9",
     "Connection refused); nothing was downloaded; run the same fetch again when the host is reachable", None),
    # --- a single-valued option given twice: refused, never "the last one wins" --------------------
    ("run --seed 0 --seed 1 --out {OUT}", "--seed given 2 times (0, 1); `ftbench run` takes one value", None),
    ("run --method surgical --method=full --out {OUT}", "--method given 2 times (surgical, full)", None),
    ("run --lr 1e-3 --steps 5 --lr 1e-2 --out {OUT}", "for a grid of runs, write a suite and use `ftbench sweep`", None),
    ("sweep smoke --jobs 1 --jobs 2 --out {OUT}", "--jobs given 2 times (1, 2); `ftbench sweep` takes one value", None),
    ("report {R} -o a.md --output b.md", "-o given 2 times (a.md, b.md)", None),
    # --- suites files: per-key types with file:line, before anything runs or is written -----------
    ("sweep s --suites {S} --out {OUT}", "{S}:2: suite 's': lr must be a positive number, got 'abc' (a string)", 'lr = "abc"'),
    ("sweep s --suites {S} --out {OUT}", "{S}:2: suite 's': lr must be a positive number, got 'fast' (a string)", 'lr = ["fast"]'),
    ("sweep s --suites {S} --out {OUT}", "{S}:2: suite 's': wd must be a non-negative number, got 'none'", 'wd = "none"'),
    ("sweep s --suites {S} --out {OUT}", "{S}:2: suite 's': steps must be a positive integer, got true (a boolean)", "steps = true"),
    ("sweep s --suites {S} --out {OUT}", "{S}:2: suite 's': seed must be an integer in 0..9223372036854775807", "seed = 9223372036854775808"),
    ("sweep s --suites {S} --out {OUT}", "{S}:2: suite 's': seed must be an integer in 0..9223372036854775807, got 1.5", "seed = 1.5"),
    ("sweep s --suites {S} --out {OUT}", "{S}:2: suite 's': lr must be a positive number, got inf", "lr = inf"),
    ("sweep s --suites {S} --out {OUT}", "{S}:2: suite 's': lr must be a positive number, got nan", "lr = [1e-3, nan]"),
    ("sweep s --suites {S} --out {OUT}", "{S}:2: suite 's': batch_size must be a positive integer, got 0", "batch_size = 0"),
    ("sweep s --suites {S} --out {OUT}", "{S}:2: suite 's': block must be a block name or number", "block = [true]"),
    ("sweep s --suites {S} --out {OUT}", "{S}:2: suite 's': method must be a string, got 3", "method = 3"),
    ("sweep s --suites {S} --out {OUT}", "{S}:2: suite 's': lr must be a value or a list of values", "lr = [[1e-3]]"),
    ("sweep s --suites {S} --out {OUT}", "{S}:3: suite 's': option 'lp_l2' must be a number, got true", 'method = "lp-ft"\noptions = {lp_l2 = true}'),
    ("sweep s --suites {S} --out {OUT}", "{S}:2: suite 's': option lp_l2='abc' of method 'lp-ft' must be a float", 'method = "lp-ft"\noptions = {lp_l2 = "abc"}'),
    ("sweep s --suites {S} --out {OUT} --executor slurm", "suite 's': slurm setting 'time' must be a positive integer, got 0", "method = \"none\"\n[suites.s.slurm]\ntime = 0"),
    ("sweep s --suites {B} --out {OUT}", "{B}: not a text (UTF-8) file: byte 0xff at offset 0", None),
    # --- results folders ------------------------------------------------------------------------
    ("report {STR}", "cannot use results file '{STR}': column 'ood_acc' holds string values, expected numbers", None),
    ("report {STR} --metric ood_acc --format csv", "column 'ood_acc' holds string values", None),
    ("report {FOREIGN}", "cannot use results file '{FOREIGN}': not an ftbench results file", None),
    ("report {BADMETA}", "cannot use results file '{BADMETA}': unreadable parquet", None),
    ("report {R} --baseline {BADMETA}", "cannot use baseline '{BADMETA}': unreadable parquet", None),
    ("report {FAILED}", "no successful runs to report in '{FAILED}': 1 run(s), 1 failed", None),
    ("report {FAILED} --baseline {R}", "no successful runs to report in '{FAILED}'", None),
    ("sweep smoke --out {SLOT}", "'{SLOT}/", None),  # ... <run_id>.parquet' is a folder
    # --- report options: every combination gates, or is refused ----------------------------------
    ("report {R} --tolerance 2", "--tolerance needs --baseline", None),
    ("report {R} --tolerance auto", "--tolerance needs --baseline", None),
    ("report {R} --allow-missing", "--allow-missing needs --baseline", None),
    ("report {R} --trend full,lp-ft", "--trend full,lp-ft applies to --table robustness and --plot", None),
    ("report {R} --within 1", "--within 1 applies to --table pareto", None),
    ("report {R} --table pareto --plot {OUT}.png --panels bars", "--table pareto draws one panel per shift", None),
    ("advise --strategy fastest", "unknown strategy 'fastest'", None),
    ("advise --format csv", "csv", None),
    ("advise --method nope", "nope", None),
    ("advise --method full --method full", "a method given twice", None),
    ("advise --strategy rgn --method full", "--strategy rgn ranks the blocks of surgical fine-tuning", None),
    ("advise --shift sideways", "sideways", None),
    ("report {R} --table pareto --within -0.5", "--within -0.5: give a number of accuracy points, 0 or more", None),
    ("report {R} --table pareto --within nan", "--within nan: give a number of accuracy points", None),
    ("report {R} --compare paper --format csv", "--format csv applies to the tables, which --compare replaces", None),
    ("report {R} --compare paper --table blocks", "--table blocks applies to the tables", None),
    ("report {R} --compare paper --group-by model", "--group-by applies to the tables", None),
    ("report {R} --compare paper --show-selected", "--show-selected applies to the tables", None),
    ("report {R} --compare paper --metric id_acc", "--metric id_acc applies to the tables", None),
    ("report {R} --filter method=ful,lp-ft -o {OUT}/t.md", "--filter method=ful,lp-ft matches no run; method has: full, surgical", None),
    ("report {R} --filter seed=1 --filter lr=0.1", "--filter lr=0.1 matches no run (after --filter seed=1); lr has: 0.001, 0.01", None),
    # --- report: paper-ready output options, each where it has an effect ---------------------------
    ("report {R} --label tab:ood", "--label applies to --format latex tables only (got --format terminal)", None),
    ("report {R} --format markdown --caption 'My table'", "--caption applies to --format latex tables only", None),
    ("report {R} --format latex --label 'tab ood'", "--label 'tab ood': a LaTeX label of letters, digits", None),
    ("report {R} --format latex --caption ' '", "--caption is empty", None),
    ("report {R} --panels bars", "--panels chooses the panels of the figure; it needs --plot FILE", None),
    ("report {R} --plot {OUT}/fig.png --panels pie", "unknown panel 'pie'; accepted: scatter, bars", None),
    ("report {R} --plot {OUT}/fig.png --panels bars,bars", "--panels: a panel given twice in 'bars,bars'", None),
    ("report {R} --rows 'full,nope' -o {OUT}/t.md", "--rows: no row 'nope' in the table; accepted: 'block 1', 'last layer', 'full'", None),
    ("report {R} --rows 'full,FT'", "--rows: row 'full' given twice", None),
    ("report {R} --rows 'full,'", "--rows expects comma-separated row names", None),
    ("report {R} --compare-methods 'block 1' full --rows full", "--rows chooses the rows of the tables, which --compare/--compare-methods replace", None),
    ("report {R} --format csv --title 'Table 1'", "--title names the tables and the figure; here there is neither", None),
    # --- report --metric: numeric, and not a column the table groups by ---------------------------
    ("report {R} --metric run_id", "unknown metric 'run_id' (a column the table groups by, not a number to average); accepted: ood_acc, id_acc, val_acc", None),
    ("report {R} --metric status", "unknown metric 'status' (not a numeric column); accepted: ood_acc, id_acc", None),
    ("report {R} --metric seed", "unknown metric 'seed' (a column the table groups by", None),
    ("report {R} --metric timestamp", "unknown metric 'timestamp' (not a numeric column)", None),
    ("report {R} --metric options", "unknown metric 'options' (not a numeric column)", None),
    ("report {R} --metric final --format csv", "unknown metric 'final' (not a numeric column)", None),
    ("report {R} --metric nope", "unknown metric 'nope' (no such column); accepted: ood_acc", None),
    # --- report --compare FILE: a malformed published-numbers file ---------------------------------
    ("report {R} --compare {P}", "{P}: published entry 1: unknown metric 'bogus'; accepted: ood_acc",
     'metric = "bogus"'),
    ("report {R} --compare {P}", "{P}: published entry 1: unknown metric 3 (an integer)", "metric = 3"),
    ("report {R} --compare {P}", "{P}: published must be a list of [[published]] tables, got 3 (an integer)", "@published = 3"),
    ("report {R} --compare {P}", "{P}: published must be a list of [[published]] tables, got 1", "@published = [1, 2]"),
    ("report {R} --compare {P}", "{P}: missing must be a list of [[missing]] tables, got 3", "@missing = 3"),
    ("report {R} --compare {P}", "{P}: missing must be a list of [[missing]] tables, got 'x'", '@missing = ["x"]'),
    ("report {R} --compare {P}", "{P}: missing entry 1: why must be a string, got [1] (a list)", "@[[missing]]\nwhy = [1]"),
    ("report {R} --compare {P}", "{P}: published entry 1: value True is not a number", "value = true"),
    ("report {R} --compare {P}", "{P}: published entry 1: cell value blocks = [1] (a list) must be a string or a number", "cell = {blocks = [1]}"),
    ("report {R} --compare {P}", "{P}: published entry 1: paper must be a string", "paper = {a = 1}"),
    ("report {R} --compare {P}", "{P}: published entry 1 needs exactly one of a cell table (the ftbench results it "
     "corresponds to) and not_comparable (why no ftbench result matches), got both", 'not_comparable = "a 336 px model"'),
    ("report {R} --compare {P}", "{P}: published entry 1: cell must be a table of result columns and values, got 3 "
     "(an integer)", "cell = 3"),
    ("report {R} --compare {P}", "{P}: published entry 1: ci 'wide' is not a number", 'ci = "wide"'),
    ("report {R} --compare {P}", "{P}: published entry 1: ci -0.5 must be a number >= 0", "ci = -0.5"),
    ("report {R} --compare {P}", "{P}: published entry 1: ci_level without ci (the interval's half-width)", "ci_level = 90"),
    ("report {R} --compare {B}", "{B}: not a text (UTF-8) file: byte 0xff at offset 0", None),
    # --- report outputs that cannot be looked at ----------------------------------------------------
    ("report {R} -o {LOOP}", "--output '{LOOP}' cannot be written: Too many levels of symbolic links", None),
    ("report {R} --plot {LOOP}.png", "--plot '{LOOP}.png' cannot be written: Too many levels of symbolic links", None),
    # --- accepted, then run differently or failed late: refused when given ------------------------
    ("run --protocol id-ood --shift corruption --out {OUT}",
     "unknown shift for benchmark 'digits' in protocol id-ood: 'corruption'; accepted: style-noise", None),
    ("run --benchmark waterbirds --shift corruption --out {OUT}",
     "unknown shift for benchmark 'waterbirds': 'corruption'; accepted: spurious-background", None),
    ("run --recipe lp-ft --method surgical --out {OUT}",
     "recipe 'lp-ft' is not for method 'surgical': it sets the released defaults of methods linear-probe, full, lp-ft", None),
    ("sweep s --suites {S} --out {OUT} --dry-run", "{S}:3: suite 's': recipe 'lp-ft' is not for method 'surgical'",
     'recipe = "lp-ft"\nmethod = ["full", "surgical"]'),
    ("run --method autoft --set objective=bogus --out {OUT}",
     "option objective='bogus' of method 'autoft' is not a metric of benchmark 'digits'; accepted: main, acc", None),
    ("sweep s --suites {S} --out {OUT} --dry-run", "option objective='bogus' of method 'autoft' is not a metric",
     'method = "autoft"\noptions = {objective = "bogus"}'),
    ("sweep s --suites {S} --out {OUT} --dry-run", "{S}:3: suite 's': block sets must name at least one block, got an "
     "empty set []", 'method = "surgical"\nblock = [[]]'),
    ("sweep s --suites {S} --out {OUT} --dry-run", "block sets must name at least one block", 'method = "surgical"\nblock = [1, []]'),
    ("sweep s --suites {S} --out {OUT} --dry-run", "{S}:2: suite 's': lr is an empty list; a grid axis needs at least one value", "lr = []"),
    ("run --steps 5.0 --out {OUT}", "--steps must be a positive integer, got '5.0' (not an integer)", None),
    ("run --seed=1e3 --out {OUT}", "--seed must be an integer in 0..9223372036854775807, got '1e3' (not an integer)", None),
    ("sweep smoke --jobs 2.0 --out {OUT}", "--jobs must be a positive integer, got '2.0' (not an integer)", None),
    ("sweep s --suites {S} --out {OUT}", "{S}:2: suite 's': steps must be a positive integer, got 5.0 (a float)", "steps = 5.0"),
    ("fetch --root {F}", "data root '{F}' is a file, not a folder", None),
    ("fetch --list --root {F}", "data root '{F}' is a file, not a folder", None),
    ("fetch waterbirds --root {F}", "data root '{F}' is a file, not a folder", None),
    # --- environment variables: one line each, before any work --------------------------------------
    ("FTBENCH_FASTPATH=garbage run --out {OUT}", "environment variable FTBENCH_FASTPATH='garbage' is not accepted; "
     "accepted: auto (the default), 1/on/all, 0/off/none, or a comma-separated list of prefix, fused", None),
    ("FTBENCH_FASTPATH=prefix,fuzed sweep smoke --out {OUT}", "FTBENCH_FASTPATH='prefix,fuzed' is not accepted", None),
    ("FTBENCH_GPU_TFLOPS=abc sweep smoke --dry-run --out {OUT}",
     "FTBENCH_GPU_TFLOPS='abc' is not accepted; accepted: a finite number > 0 (unset: 100)", None),
    ("FTBENCH_GPU_TFLOPS=0 sweep smoke --dry-run --out {OUT}", "FTBENCH_GPU_TFLOPS='0' is not accepted", None),
    ("FTBENCH_FUSE_MAX=abc run --out {OUT}", "FTBENCH_FUSE_MAX='abc' is not accepted; accepted: a positive integer (unset: 64)", None),
    ("FTBENCH_PREFIX_CACHE_MB=inf run --out {OUT}",
     "FTBENCH_PREFIX_CACHE_MB='inf' is not accepted; accepted: a finite number >= 0 (unset: 4096)", None),
    ("FTBENCH_PREFIX_CACHE_MB=abc run --out {OUT}", "FTBENCH_PREFIX_CACHE_MB='abc' is not accepted", None),
    ("FTBENCH_CACHE={F} run --out {OUT}", "FTBENCH_CACHE='{F}' is not accepted; accepted: a folder (it is created if "
     "missing); '{F}' is a file", None),
    ("FTBENCH_CACHE={F}/sub sweep smoke --dry-run --out {OUT}", "'{F}/sub' lies under '{F}', which is a file", None),
    ("FTBENCH_DATA={F} fetch --list", "FTBENCH_DATA='{F}' is not accepted", None),
    ("FTBENCH_COMPILE=maybe run --out {OUT}", "FTBENCH_COMPILE='maybe' is not accepted; accepted: 1 (or on, true, yes) "
     "or 0 (or off, false, no)", None),
    ("FTBENCH_CHANNELS_LAST=2 run --out {OUT}", "FTBENCH_CHANNELS_LAST='2' is not accepted", None),
    ("FTBENCH_WORKERS=-1 run --out {OUT}", "FTBENCH_WORKERS='-1' is not accepted; accepted: an integer >= 0", None),
    ("FTBENCH_PROGRESS=loud run --out {OUT}", "FTBENCH_PROGRESS='loud' is not accepted; accepted: auto, bar, lines, off", None),
    ("FTBENCH_DEVICE_DECODE=yes run --out {OUT}", "FTBENCH_DEVICE_DECODE must be 0 or 1, got 'yes'", None),
    # --- models and weights files -------------------------------------------------------------------
    ("run --model timm/resnet18:drop_rate=-5 --weights scratch --out {OUT}",
     "model 'timm/resnet18:drop_rate=-5': drop_rate must be a number in [0, 1] (a dropout probability), got -5", None),
    ("run --model timm/resnet18:drop_rate=abc --weights scratch --out {OUT}", "drop_rate must be a number in [0, 1] "
     "(a dropout probability), got 'abc'", None),
    ("run --weights {PASSWD} --out {OUT}", "is not a readable PyTorch checkpoint (torch.save format): not a weights "
     "file; accepted: a state dict (tensors by name) saved by torch.save", None),
    ("run --weights {TRUNC} --out {OUT}", "trunc.pt' is not a readable PyTorch checkpoint (torch.save format): not a "
     "weights file", None),
    ("sweep s --suites {S} --out {OUT}", "{S}:2: suite 's': weights file '", 'weights = "passwd"\nmethod = "none"'),
    # --- output folders through a symbolic link that leads nowhere ----------------------------------
    ("run --out {LOOP}", "--out '{LOOP}' is a symbolic link that leads nowhere (a loop of symbolic links)", None),
    ("run --out {DANGLING}", "--out '{DANGLING}' is a symbolic link that leads nowhere (its target 'nowhere' does "
     "not exist); give a folder, or a link to one", None),
    ("run --out {DANGLING}/sub", "--out '{DANGLING}/sub' lies under '{DANGLING}', which is a symbolic link that leads "
     "nowhere", None),
    ("sweep smoke --out {LOOP}", "--out '{LOOP}' is a symbolic link that leads nowhere", None),
    ("sweep smoke --out {DANGLING}", "--out '{DANGLING}' is a symbolic link that leads nowhere", None),
    ("fetch waterbirds --root {DANGLING} --mirror {CRC}", "data root '{DANGLING}' is a symbolic link that leads nowhere", None),
    ("fetch --root {LOOP}", "data root '{LOOP}' is a symbolic link that leads nowhere", None),
    # --- fetch: archives that fail verification --------------------------------------------------
    ("fetch waterbirds --root {OUT} --mirror {CRC}", "archive waterbirds_v1.0.tar.gz is truncated or corrupt (BadGzipFile: CRC check failed", None),
    ("fetch waterbirds --root {OUT} --mirror {UNSAFE}", "archive waterbirds_v1.0.tar.gz has an unsafe entry '../evil.txt'", None),
]


def _readonly_folder(base: Path) -> Path | None:
    """A folder nobody here can write to, or None: as root (who may write anywhere) a read-only
    tmpfs or bind mount, else a folder without write permission."""
    d = base / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
    elif sys.platform.startswith("linux") and shutil.which("mount"):
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=16k", "tmpfs", str(d)], capture_output=True, check=False)
        if ok.returncode != 0:
            return None
    try:  # it must really refuse a write, or the cases using it prove nothing
        (d / "probe").write_text("x")
    except OSError:
        return d
    return None


@pytest.fixture(scope="module")
def readonly(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("readonly")
    d = _readonly_folder(base)
    yield d
    if d is not None and os.geteuid() == 0:
        subprocess.run(["umount", str(d)], capture_output=True, check=False)
    elif d is not None:
        d.chmod(0o755)


class Cli:
    """Runs ``ftbench ARGV`` in its own process: forked from a warm server, or a fresh interpreter."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.fresh = os.environ.get("FTBENCH_CORPUS_FRESH") == "1"
        self.server = None
        if not self.fresh:
            self.server = subprocess.Popen([sys.executable, str(REPO / "tests" / "cli_server.py")], env=env,
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert json.loads(self.server.stdout.readline()) == {"ready": True}

    def __call__(self, argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        if self.fresh:
            r = subprocess.run([sys.executable, "-m", "ftbench.cli", *argv], cwd=cwd, env={**self.env, **(env or {})},
                               capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, check=False)
            return r.returncode, r.stdout, r.stderr
        out, err = cwd.parent / f"{cwd.name}.stdout", cwd.parent / f"{cwd.name}.stderr"
        req = {"argv": argv, "cwd": str(cwd), "env": env or {}, "stdout": str(out), "stderr": str(err), "timeout": 300}
        self.server.stdin.write(json.dumps(req) + "\n")
        self.server.stdin.flush()
        code = json.loads(self.server.stdout.readline())["code"]
        return code, out.read_text(), err.read_text()

    def close(self) -> None:
        if self.server is not None:
            self.server.stdin.close()
            self.server.wait(30)


@pytest.fixture(scope="module")
def ftbench():
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "COLUMNS": "200"}
    cli = Cli(env)
    yield cli
    cli.close()


def _waterbirds_archive(entries: dict[str, bytes]) -> bytes:
    import gzip

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as t:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), compresslevel=0, mtime=0)


def _make(name: str, base: Path, case_text: str | None) -> str:
    """Create what placeholder ``name`` stands for under ``base``; return its path (relative)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if name == "OUT":
        return "out"
    if name == "F":
        (base / "afile").write_text("not a folder\n")
        return "afile"
    if name == "R":
        if not (base / "r").exists():
            shutil.copytree(SMALL, base / "r")
        return "r"
    if name == "S":
        (base / "s.toml").write_text(f"[suites.s]\n{case_text}\n")
        if "passwd" in (case_text or ""):
            _make("PASSWD", base, None)
        return "s.toml"
    if name == "LOOP":  # loop.png too: report --plot {LOOP}.png
        (base / "loop").symlink_to("loop")
        (base / "loop.png").symlink_to("loop.png")
        return "loop"
    if name == "DANGLING":
        (base / "dangling").symlink_to("nowhere")
        return "dangling"
    if name == "PASSWD":
        (base / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")  # IndexError in torch.load
        return "passwd"
    if name == "TRUNC":
        import torch

        raw = io.BytesIO()
        torch.save({"w": torch.zeros(4)}, raw, _use_new_zipfile_serialization=False)
        (base / "trunc.pt").write_bytes(raw.getvalue()[:30])  # struct.error in torch.load
        return "trunc.pt"
    if name == "B":
        (base / "bin.toml").write_bytes(b"\xff\xfe\x00\x01binary\x80")
        return "bin.toml"
    if name == "STR":
        t = pq.read_table(next(iter(sorted(SMALL.glob("*.parquet")))))
        t = t.set_column(t.column_names.index("ood_acc"), "ood_acc", pa.array(["70.0"] * t.num_rows))
        pq.write_table(t, base / "strings.parquet")
        return "strings.parquet"
    if name == "FIFO":
        os.mkfifo(base / "pipe.toml")
        return "pipe.toml"
    if name == "FOREIGN":
        pq.write_table(pa.table({"a": [1, 2]}), base / "foreign.parquet")
        return "foreign.parquet"
    if name in ("CRC", "UNSAFE"):
        folder = base / name.lower()
        folder.mkdir(exist_ok=True)
        files = {"RELEASE_v1.0.txt": b"v1.0\n", "metadata.csv": b"img_id,y\n" + b"1,0\n" * 300}
        if name == "UNSAFE":
            files["../evil.txt"] = b"pwned"
        data = bytearray(_waterbirds_archive(files))
        if name == "CRC":
            data[-8] ^= 0x01  # the CRC-32 of the gzip trailer; every byte of the tar is intact
        (folder / "waterbirds_v1.0.tar.gz").write_bytes(bytes(data))
        return name.lower()
    if name == "P":  # one complete entry; a key given in the case replaces the entry's own
        entry = {"paper": '"p"', "table": '"t"', "row": '"r"', "column": '"c"', "value": "1.0", "protocol": '"x"',
                 "cell": '{method = "surgical"}'}
        text = case_text or ""
        if text.startswith("@"):  # the whole file
            body = text[1:] + "\n"
        else:
            for line in filter(None, text.splitlines()):
                key, _, value = line.partition(" = ")
                entry[key] = value
            body = "[[published]]\n" + "".join(f"{k} = {v}\n" for k, v in entry.items())
        (base / "published.toml").write_text(body)
        return "published.toml"
    if name == "BADMETA":
        t = pq.read_table(next(iter(sorted(SMALL.glob("*.parquet")))))
        pq.write_table(t.replace_schema_metadata({**(t.schema.metadata or {}), b"pandas": b"{not json"}),
                       base / "badmeta.parquet")
        return "badmeta.parquet"
    if name == "FAILED":
        t = pq.read_table(next(iter(sorted(SMALL.glob("*.parquet")))))
        row = {**t.to_pylist()[0], "status": "failed", "error": "RuntimeError: boom", "id_acc": None,
               "ood_acc": None, "val_acc": None}
        (base / "failed").mkdir()
        pq.write_table(pa.Table.from_pylist([row], schema=t.schema), base / "failed" / f"{row['run_id']}.parquet")
        return "failed"
    if name == "SLOT":
        from ftbench.plan.suites import expand_suite

        first = expand_suite("smoke", REPO / "ftbench" / "benchmarks.toml")[0].run_id  # the CLI's default suites
        (base / "slot" / f"{first}.parquet").mkdir(parents=True)
        return "slot"
    raise KeyError(name)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    import stat

    # lstat: a symbolic link is itself (it may lead nowhere), never what it points at
    return {str(p.relative_to(root)): (s.st_size if stat.S_ISREG(s.st_mode) else -1, s.st_mtime_ns)
            for p in sorted(root.rglob("*")) for s in [p.lstat()]}


@pytest.mark.parametrize("command, message, text", CORPUS,
                         ids=[f"{i:02d}-{c.split()[0]}-{(t or c).splitlines()[-1][:40]}" for i, (c, m, t) in enumerate(CORPUS)])
def test_a_bad_input_is_one_error_line_exit_2_and_nothing_written(ftbench, readonly, tmp_path: Path, command: str,
                                                                  message: str, text: str | None) -> None:
    import re

    work = tmp_path / "work"
    work.mkdir()
    names = set(re.findall(r"\{([A-Z]+)\}", command + message))
    if "RO" in names and readonly is None:
        pytest.skip("no read-only folder can be made here (root without mount rights)")
    values = {n: (str(readonly) if n == "RO" else _make(n, work, text)) for n in sorted(names)}
    argv = [a.format(**values) for a in shlex.split(command)]
    env = {}
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):  # NAME=value: this command's environment
        name, _, value = argv.pop(0).partition("=")
        env[name] = value
    before = _snapshot(work)
    code, out, err = ftbench(argv, work, env)
    assert code == 2, (code, out, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message.format(**values) in lines[0], lines[0]
    assert _snapshot(work) == before  # nothing written, not even an empty folder
    if readonly is not None:
        assert not list(readonly.iterdir())
