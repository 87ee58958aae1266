"""The plan floor: a RunSpec's defaults filled in (``resolve``) and suites expanded (``suites``)."""
