"""Report figures: static PNG plots of consistency scores, activations, editing metrics and sweeps.

Headless (matplotlib Agg backend), deterministic, written atomically. See
:mod:`knowloc.report.figures`.
"""

from knowloc.report.figures import activation_heatmaps, grouped_bars, heatmap_grid, line_plot, violin_cs

__all__ = ["activation_heatmaps", "grouped_bars", "heatmap_grid", "line_plot", "violin_cs"]
