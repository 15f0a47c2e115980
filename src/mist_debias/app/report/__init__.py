"""The HTML report: evaluation and debias-run folders → one self-contained page with plots and image grids."""

from mist_debias.app.report.build import build_report
from mist_debias.app.report.sources import EvaluationSource, ReportSourceError, RunSource, read_source

__all__ = ["EvaluationSource", "ReportSourceError", "RunSource", "build_report", "read_source"]
