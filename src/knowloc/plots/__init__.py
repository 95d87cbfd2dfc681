"""Static PNG figures of study results: consistency scores, activations, editing metrics, sweeps, specificity.

Headless (matplotlib Agg backend), deterministic and written atomically; drawn by the study's experiments and
embedded by the report. See :mod:`knowloc.plots.figures`.
"""

from knowloc.plots.figures import (activation_heatmaps, findings_forest, frontier_plot, grouped_bars, heatmap_grid,
                                   layer_curves, not_written, specification_curve, specificity_scatter, tracing_panels,
                                   violin_cs)

__all__ = ["activation_heatmaps", "findings_forest", "frontier_plot", "grouped_bars", "heatmap_grid", "layer_curves",
           "not_written", "specification_curve", "specificity_scatter", "tracing_panels", "violin_cs"]
