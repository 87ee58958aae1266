"""The seed papers' released recipes (``recipes.toml``) and published numbers (``published.toml``),
each with its source; read by :mod:`ftbench.papers.recipes` and :mod:`ftbench.papers.published`."""
