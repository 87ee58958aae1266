"""Results into tables, plots and regression gates (``ftbench report``)."""

# The accepted values of ``--format`` and ``--table``, here so that ``sweep`` checks them without
# importing pandas (ftbench/report/table.py uses these).
FORMATS = ("terminal", "markdown", "latex", "html", "csv", "json")
TABLES = ("shifts", "blocks", "methods", "corruptions", "robustness", "pareto")
# The panels of a --plot figure (--panels): ID-vs-OOD scatter per shift column, and bars by tuned block.
PANELS = ("scatter", "bars")
