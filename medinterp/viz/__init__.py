"""Plotly figures, circuitsvis views and the self-contained HTML report.

Importing this package registers the renderer of every shipped result kind
(:func:`medinterp.techniques.base.register_renderer`).
"""

from medinterp.viz import geometry as _geometry  # noqa: F401  (registers its renderers)
from medinterp.viz import lesion as _lesion  # noqa: F401  (registers its renderers)
from medinterp.viz import patching as _patching  # noqa: F401  (registers its renderers)
from medinterp.viz import saliency as _saliency  # noqa: F401  (registers its renderers)
from medinterp.viz.html import figures_to_html

__all__ = ["figures_to_html"]
