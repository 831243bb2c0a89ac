"""Plotly figures, circuitsvis views and the self-contained HTML report.

``viz`` reads results and maps; nothing below it imports it. Importing it registers the renderers
(:func:`medinterp.results.register_renderer`) that ``figure()`` / ``to_html()`` of results and maps
use. Each technique's figures live in ``viz/<technique>.py``, imported below (one line each).
"""

from medinterp.results import register_renderer
from medinterp.viz import figures as _figures
from medinterp.viz import geometry as _geometry  # noqa: F401  (registers its renderers)
from medinterp.viz import lesion as _lesion  # noqa: F401  (registers its renderers)
from medinterp.viz import patching as _patching  # noqa: F401  (registers its renderers)
from medinterp.viz import report as _report
from medinterp.viz import saliency as _saliency  # noqa: F401  (registers its renderers)
from medinterp.viz import validate as _validate  # noqa: F401  (registers its renderers)
from medinterp.viz.html import escape, figures_to_html

register_renderer("page", figures_to_html)
register_renderer("knowledge_map", _figures.map_figure)
register_renderer("knowledge_map_heatmaps", _figures.curve_heatmaps)
register_renderer("knowledge_map_page", _report.render_report)
register_renderer("knowledge_map_compare_page", _report.render_compare)

__all__ = ["escape", "figures_to_html"]
