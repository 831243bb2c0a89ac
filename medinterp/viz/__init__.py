"""Plotly figures, circuitsvis views and the self-contained HTML report."""

from medinterp.viz.html import figures_to_html

__all__ = ["figures_to_html"]
from medinterp.viz import saliency as _saliency  # noqa: F401  (registers its renderers)
from medinterp.viz import lesion as _lesion  # noqa: F401  (registers its renderers)
