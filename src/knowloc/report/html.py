"""The report's entry points under their former module name (the report is now the modules of
:mod:`knowloc.report`); kept for the importers of ``knowloc.report.html``."""

from knowloc.report.config import environment_info
from knowloc.report.page import build_report, render_report

__all__ = ["build_report", "environment_info", "render_report"]
