"""The self-contained HTML report of a study directory, by idea:

- :mod:`~knowloc.report.page`: reads the study directory, assembles the sections (:func:`build_report`).
- :mod:`~knowloc.report.tables`: the study's table specs (:mod:`knowloc.study.tables`) as escaped HTML.
- :mod:`~knowloc.report.figures`: the study's PNGs, assigned to their experiments and embedded.
- :mod:`~knowloc.report.findings`: the findings section.
- :mod:`~knowloc.report.drilldown`: the per-fact drill-down and the heatmaps' neurons, from the results store.
- :mod:`~knowloc.report.config`: the stored configuration (:func:`stored_config`), the environment, their section.
- ``assets/``: the page's style sheet and print helper, inlined into the page.

:mod:`knowloc.report.html` re-exports the entry points under their former module name.
"""

from knowloc.report.config import environment_info, stored_config
from knowloc.report.page import build_report, render_report

__all__ = ["build_report", "environment_info", "render_report", "stored_config"]
