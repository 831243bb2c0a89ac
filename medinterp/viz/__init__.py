"""Plotly figures, circuitsvis views and the self-contained HTML report."""

from medinterp.viz.html import figures_to_html
from medinterp.viz import geometry as _geometry  # noqa: F401  (registers its renderers)

__all__ = ["figures_to_html"]
from medinterp.viz import patching as _patching  # noqa: F401  (registers its renderers)
