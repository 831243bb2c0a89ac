"""Causal validation of a band of layers (METHOD.md, "Causal validation of a band").

:func:`validate_band` intervenes on a band of blocks *as a unit* and compares the effect with random layer
sets of the same width (every other contiguous band of that width plus ``n_random`` random sets of that many
blocks), on the pairs of a family the model knows (patching's rule):

* **necessity**: every block of the set mean-ablated at once (its output replaced by the cross-fitted mean
  output of the other half of the items; block skip beside it): fraction of the clean logit difference lost
  (ratio of sums, the lesion technique's ``ld_frac`` unit), with the next-token KL as generic damage;
* **selectivity**: the band's fraction lost on the family minus on its matched control family;
* **sufficiency**: the set's block outputs restored at the item span of the corrupted prompt (clean values):
  fraction of ``LD_clean - LD_corrupted`` recovered.

Each check has an item-bootstrap CI, a percentile and a permutation p against the random sets, and a verdict
(``supports`` / ``does not`` / ``inconclusive``). Layout: ``engine`` (stacked layer-set runs), ``run``
(:func:`validate_band`), ``result`` (:class:`BandValidation`). Figure: :mod:`medinterp.viz.validate`.
Opt-in parts (``parts=(..., "steering", "erasure")``, issue 22 parts 3-4):

* **steering** (:mod:`~medinterp.techniques.validate.steering`): the cross-fitted difference of answer-class
  means added at the band over a grid of scales; slope of the LD with an item-bootstrap CI against random
  directions of equal norm and the same direction at a band elsewhere;
* **erasure** (:mod:`~medinterp.techniques.validate.erasure`): LEACE of the answer class at every block of the
  band; fraction of LD lost and a downstream probe, against random subspaces of equal rank and the same
  erasure elsewhere (needs ``concept-erasure``; otherwise "not run").

Example:
    >>> null_sets((2, 3), 6, 0, 0)[0]
    [[2, 3], [0, 1], [1, 2], [3, 4], [4, 5]]
"""

from medinterp.techniques.validate.result import PARTS, RUN_PARTS, VERDICTS, BandValidation
from medinterp.techniques.validate.run import ALPHA, DEFAULT_PARTS, band_arg, null_sets, validate_band
from medinterp.techniques.validate.steering import ALPHAS

__all__ = ["ALPHA", "ALPHAS", "DEFAULT_PARTS", "PARTS", "RUN_PARTS", "VERDICTS", "BandValidation", "band_arg", "null_sets",
           "validate_band"]
