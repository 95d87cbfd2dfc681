"""The self-contained HTML report of a study directory (:mod:`knowloc.report.html`)."""

from knowloc.report.html import build_report, environment_info

__all__ = ["build_report", "environment_info"]
