"""Output that goes into a paper as it is (issue 25 §5): LaTeX in display names with rows, label and
caption from the command line; figures with chosen panels, a one-line title or none, a distinct
marker per row, vector files."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from ftbench.report.names import METHOD_NAMES, column_name
from ftbench.report.plots import build_figure, plot_results
from ftbench.report.table import build, render_latex
from ftbench.results.store import read_results

DATA = Path(__file__).parent / "data" / "results_small"


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    return read_results(DATA)[0]


def _rows_of(df: pd.DataFrame, method: str, tag: str = "", **extra: object) -> pd.DataFrame:
    """Rows of another method, copied from the ok block-1 rows (new run ids)."""
    base = df[(df["status"] == "ok") & (df["method"] == "surgical") & (df["blocks"] == "1")]
    return base.assign(method=method, blocks="", run_id=base["run_id"] + method + tag, **extra)


def _body(tex: str) -> list[list[str]]:
    """The cells of the rows between \\midrule and \\bottomrule."""
    body = tex.split("\\midrule\n", 1)[1].split("\\bottomrule", 1)[0]
    return [[c.strip() for c in line.removesuffix(" \\\\").split(" & ")] for line in body.strip().splitlines()]


# --- LaTeX ------------------------------------------------------------------------------------
def test_every_builtin_method_has_a_display_name() -> None:
    from ftbench.methods import BUILTIN_ORDER

    assert set(METHOD_NAMES) == set(BUILTIN_ORDER)
    assert METHOD_NAMES["lp-ft"] == "LP-FT" and METHOD_NAMES["wise-ft"] == "WiSE-FT" and METHOD_NAMES["lora"] == "LoRA"


def test_column_display_names() -> None:
    assert column_name("corruption (gaussian_noise, s5)") == "Gaussian noise s5"
    assert column_name("corruption (contrast, s3)") == "contrast s3"
    assert column_name("label-flip") == "label flip" and column_name("style-noise") == "style noise"
    assert column_name("cifar10/corruption (fog, s2) [model=resnet18]") == "cifar10/fog s2 [model=resnet18]"
    assert column_name("gaussian_noise s5") == "Gaussian noise s5"  # the corruptions table's sub-columns


def test_latex_rows_label_caption_and_best_among_the_rows_shown(cli) -> None:
    r = cli("report", DATA, "--table", "methods", "--format", "latex", "--rows", "full,Block 1",
            "--label", "tab:ood", "--caption", "OOD accuracy of fine-tuning methods.")
    assert r.code == 0, r.err
    tex = r.out
    assert "\\caption{OOD accuracy of fine-tuning methods.}\\label{tab:ood}" in tex
    assert tex.index("\\toprule") < tex.index("\\midrule") < tex.index("\\bottomrule")
    assert "±" not in tex and "$\\pm$" in tex
    head = tex.split("\\toprule\n", 1)[1].split("\n", 1)[0]
    assert "{contrast s3}" in head and "{Gaussian noise s5}" in head and "{label flip}" in head
    rows = _body(tex)
    assert [row[0] for row in rows] == ["FT", "Block 1"]  # the order asked for, in display names
    # Columns: contrast ID, OOD | noise ID, OOD | label-flip ID, OOD | average ID, OOD. "last layer"
    # (97.0 contrast ID, best in the full table) is left out, so the best shown ID is block 1's 95.0.
    ft, b1 = rows
    assert b1[1] == "\\textbf{95.0 $\\pm$ 0.0}" and ft[1] == "93.0 $\\pm$ 0.0"
    assert ft[6] == "\\textbf{92.0 $\\pm$ 1.4}" and b1[6] == "53.0 $\\pm$ 2.8"
    assert sum(cell.startswith("\\textbf") for row in rows for cell in row[1:]) == 8  # one per column
    # The protocol details stay, in a note under the table.
    note = tex.split("\\end{tabular}", 1)[1]
    assert "hyperparameters chosen per seed on target validation accuracy" in note


def test_latex_without_caption_is_titled_by_the_table_and_unlabelled(cli) -> None:
    tex = cli("report", DATA, "--format", "latex", "--title", "ID vs OOD").out
    assert "\\caption{ID vs OOD}\n" in tex and "\\label" not in tex


def test_wiseft_with_one_alpha_is_named_with_it(df: pd.DataFrame) -> None:
    extra = pd.concat([_rows_of(df, "lp-ft"), _rows_of(df, "wise-ft", alpha=0.5, final=False),
                       _rows_of(df, "bitfit", "b", variant="lr_scale=2")], ignore_index=True)
    tex = render_latex(build(pd.concat([df, extra], ignore_index=True), "shifts"))
    names = [row[0] for row in _body(tex)]
    assert names == ["Block 1", "Last layer", "FT", "LP-FT", "WiSE-FT ($\\alpha$ = 0.5)", "BitFit (lr\\_scale=2)"]


def _compile(tmp_path: Path, tex: str) -> str:
    doc = tmp_path / "doc.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage[margin=1cm,landscape]{geometry}\n"
                   "\\begin{document}\nSee Table~\\ref{tab:ood}.\n" + tex + "\\end{document}\n")
    for _ in range(2):  # the second pass resolves \ref
        r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout[-2000:]
    return (tmp_path / "doc.log").read_text(errors="replace")


@pytest.mark.parametrize("table", ["shifts", "blocks", "methods", "corruptions"])
def test_latex_with_label_compiles_and_resolves(cli, tmp_path: Path, table: str) -> None:
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed (apt-get install texlive-latex-base texlive-latex-recommended)")
    r = cli("report", DATA, "--table", table, "--format", "latex", "--label", "tab:ood", "--caption", "100% α_1 & co")
    assert r.code == 0, r.err
    log = _compile(tmp_path, r.out)
    assert "undefined" not in log.lower() and "Missing character" not in log
    assert (tmp_path / "doc.pdf").read_bytes().startswith(b"%PDF")


# --- figures ----------------------------------------------------------------------------------
def _many_rows(df: pd.DataFrame) -> pd.DataFrame:
    """results_small plus 18 more methods: 21 rows in all, more than matplotlib has filled markers."""
    methods = [m for m in METHOD_NAMES if m not in ("surgical", "full", "none", "wise-ft")]
    extra = [_rows_of(df, m, ood_acc=50.0 + i, id_acc=60.0 + i) for i, m in enumerate(methods)]
    return pd.concat([df, *extra], ignore_index=True)


def test_every_row_has_its_own_marker(df: pd.DataFrame) -> None:
    fig = build_figure(_many_rows(df), panels=("scatter",), title="")
    markers: dict[str, object] = {}
    for ax in fig.axes:
        if (ax.get_gid() or "").startswith("scatter:"):
            for line in ax.get_lines():
                gid = line.get_gid() or ""
                if gid.startswith("point:"):
                    markers.setdefault(gid, str(line.get_marker()))
    assert len(markers) == 21
    assert len(set(markers.values())) == 21, markers
    legend = {t.get_text(): str(h.get_marker()) for t, h in zip(fig.legends[0].get_texts(), fig.legends[0].legend_handles)}
    assert len(set(legend.values())) == len(legend) == 21  # the legend shows the same, distinct markers


def test_panels_and_title(df: pd.DataFrame) -> None:
    both = build_figure(df)
    assert both._suptitle is not None and "hyperparameters selected per seed" in both._suptitle.get_text()
    bars = build_figure(df, panels=("bars",), title="Accuracy by tuned block")
    kinds = {(ax.get_gid() or ":").split(":")[0] for ax in bars.axes}
    assert kinds == {"bars"}
    assert bars._suptitle.get_text() == "Accuracy by tuned block"
    none = build_figure(df, panels=("scatter",), title="")
    assert {(ax.get_gid() or ":").split(":")[0] for ax in none.axes} - {"zoom"} == {"scatter"}
    assert none._suptitle is None
    assert "best bar" not in [t.get_text() for t in none.legends[0].get_texts()]  # no bars drawn


def test_cli_panels_title_and_vector_files(cli, df: pd.DataFrame, tmp_path: Path) -> None:
    wise = pd.concat([_rows_of(df, "wise-ft", str(a), alpha=a, final=a == 1.0, id_acc=99.0 - 10 * a,
                               ood_acc=65.0 + 10 * a) for a in (0.0, 0.5, 1.0)], ignore_index=True)
    results = tmp_path / "r"
    results.mkdir()
    for run_id, rows in pd.concat([df, wise], ignore_index=True).groupby("run_id"):  # one file per run
        rows.to_parquet(results / f"{run_id}.parquet", index=False)
    svg, pdf = tmp_path / "f.svg", tmp_path / "f.pdf"
    r = cli("report", results, "--plot", svg, "--panels", "scatter", "--title", "Digits: ID vs OOD")
    assert r.code == 0, r.err
    text = svg.read_text()
    assert text.startswith("<?xml") and "<path" in text and "<image" not in text  # drawn as vectors, no raster
    assert "Digits: ID vs OOD" in text and "hyperparameters selected per seed" not in text
    # WiSE-FT: one connected line through its three alphas in each scatter panel (two shift columns;
    # a zoomed inset, where drawn, repeats it).
    curves = re.findall(r'<g id="curve:wise-ft[^"]*">\s*<path d="([^"]*)"', text)
    assert len(curves) >= 2 and all(len(re.findall(r"[ML]", d)) == 3 for d in curves)
    assert "by tuned block" not in text  # no bar panels
    r = cli("report", results, "--plot", pdf, "--panels", "bars,scatter", "--title", "")
    assert r.code == 0, r.err
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF") and b"/Subtype /Image" not in data


def test_plot_rejects_unknown_panel(df: pd.DataFrame, tmp_path: Path) -> None:
    from ftbench.errors import UsageError

    with pytest.raises(UsageError, match="unknown panel 'pie'; accepted: scatter, bars"):
        plot_results(df, tmp_path / "f.png", panels=("pie",))
    assert not list(tmp_path.iterdir())


def test_the_documented_latex_example_is_what_the_command_prints(cli) -> None:
    """docs/report.md shows the LaTeX of its example command on tests/data/results_small."""
    doc = (Path(__file__).parents[1] / "docs" / "report.md").read_text()
    shown = doc.split("```latex\n", 1)[1].split("```", 1)[0]
    r = cli("report", DATA, "--format", "latex", "--rows", "full,block 1,last layer", "--label", "tab:ood",
            "--caption", "ID and OOD accuracy of surgical fine-tuning on digits.")
    assert r.code == 0 and r.out == shown
