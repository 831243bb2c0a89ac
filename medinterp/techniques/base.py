"""The technique contract: every technique is one room of the same shape.

A :class:`Technique` is a named, registered object with

* ``run(model, family, **params) -> TechniqueResult``: explicit parameters, no hidden state;
* ``presets``: the parameters of a ``"quick"`` and a ``"full"`` map run (overridable per call);
* ``needs``: which inputs of a :class:`Family` it reads (``"concepts"`` and/or ``"pairs"``);
* ``interval_rule``: how the paper-style map marks its curve (``"rise"`` or ``"percentile"``);
* optional ``run_many(model, families, **params)`` when several families share work (one worker pool)
  and optional ``extras(model, result) -> dict`` for report decorations that need the model.

Every result is a :class:`TechniqueResult`: a dataclass with the same field names everywhere
(``concept_set``, ``params``, ``timings``, ``provenance``) and the same methods (``layer_curve()``,
``layer_curve_ci()``, ``curve_label``, ``summary() -> str``, ``to_dataframe()``, ``save()``/``load()``,
``figure()``, ``to_html()``, a one-line ``repr`` and a small ``_repr_html_`` table for notebooks). Figures
are drawn by ``medinterp.viz``, which registers one renderer per result kind with
:func:`register_renderer`; nothing here imports it. :meth:`Technique.with_presets` gives the technique's
public function a ``preset="quick"|"full"`` keyword that applies the map's parameters.

:data:`medinterp.techniques.REGISTRY` lists the techniques; the knowledge map reads only it.

Example:
    >>> import dataclasses, numpy as np
    >>> @dataclasses.dataclass
    ... class ToyResult(TechniqueResult):
    ...     kind = "toy_doc"
    ...     values: np.ndarray = None
    ...     def layer_curve(self):
    ...         return self.values
    ...     def layer_curve_ci(self):
    ...         return self.values - 1, self.values + 1
    >>> toy = Technique("toy_doc", lambda model, family, **p: ToyResult(values=np.arange(3.0)),
    ...                 presets={"quick": {}, "full": {}}, needs=("concepts",))
    >>> toy.run(None, Family("drugs", concepts="drugs")).layer_curve().tolist()
    [0.0, 1.0, 2.0]
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
from jaxtyping import Float

from medinterp.errors import MedinterpError
# The renderer registry lives on the lowest floor (results.py) so Result.to_html can use it too.
from medinterp.results import Result, register_renderer, renderer_for, sig3  # noqa: F401  (re-exported)

INPUTS = ("concepts", "pairs")
INTERVAL_RULES = ("rise", "percentile")
SIZES = ("quick", "full")

class MissingInput(MedinterpError):
    """A technique cannot run for a family because an input it needs is absent (shown in the map)."""


@dataclasses.dataclass
class Family:
    """One map row: its name, the concept set (or prompts) and the pair set that feed the techniques.

    ``concepts`` and ``pairs`` are shipped names, file paths, or loaded ``ConceptSet`` / ``PairSet``
    objects; either may be None (the techniques that need it are then "not run").
    """

    name: str
    concepts: Any = None
    pairs: Any = None
    label: str = ""
    #: lexical-cue-free variants of the concept set (shipped names, e.g. ``age_words``) whose findings
    #: statistics a technique that declares ``reads_variants`` adds to its result; the map sets them on the
    #: model's own rows only (never on a control family or the random twin)
    variants: tuple = ()

    def __post_init__(self) -> None:
        self.label = self.label or self.name

    def require(self, technique: str, needs: Sequence[str]) -> None:
        for need in needs:
            if getattr(self, need) is None:
                raise MissingInput(f"{technique}: family {self.name!r} has no {need} input")


@dataclasses.dataclass(frozen=True)
class Technique:
    """One technique: how to run it on a family, its size presets and what it reads.

    Args:
        name: registry key and map column name.
        run: ``run(model, family, *, progress=True, **params) -> TechniqueResult``.
        presets: ``{"quick": {...}, "full": {...}}`` default parameters of a map run.
        needs: the :class:`Family` inputs it reads.
        interval_rule: the paper-style marking rule for its curve (METHOD.md §5).
        run_many: optional; runs several families at once (shared work), same parameters.
        extras: optional; ``extras(model, result) -> dict`` of report decorations.
        description: one line for listings.
        extras_on_controls: ``extras`` also runs on the control-family and random-twin results (only its
            ``"findings"`` are kept there): True for a cheap extras that reads statistics from the result; leave
            False where extras runs the model (an attention view costs ~2-5 s a family on Gemma 3 270M).
        reads_variants: its run reads :attr:`Family.variants` (the variants then enter its job fingerprint,
            and its extras may return ``{"findings_of": {variant: {KEY: STAT}}}``, stored as findings rows of
            their own).
    """

    name: str
    run_fn: Callable[..., "TechniqueResult"]
    presets: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=lambda: {"quick": {}, "full": {}})
    needs: tuple[str, ...] = ("concepts",)
    interval_rule: str = "percentile"
    run_many_fn: Callable[..., list["TechniqueResult"]] | None = None
    extras: Callable[[Any, "TechniqueResult"], dict[str, Any]] | None = None
    description: str = ""
    extras_on_controls: bool = False
    reads_variants: bool = False

    def __post_init__(self) -> None:
        bad = [n for n in self.needs if n not in INPUTS]
        if bad:
            raise MedinterpError(f"technique {self.name!r}: unknown input(s) {bad}; known {list(INPUTS)}")
        if self.interval_rule not in INTERVAL_RULES:
            raise MedinterpError(f"technique {self.name!r}: interval_rule must be one of {INTERVAL_RULES}")
        missing = [s for s in SIZES if s not in self.presets]
        if missing:
            raise MedinterpError(f"technique {self.name!r}: presets lack {missing}")

    def params(self, size: str = "full", overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The preset of ``size`` updated with ``overrides``."""
        if size not in SIZES:
            raise MedinterpError(f"{self.name}: preset must be one of {SIZES} (or None: the function's own "
                                 f"defaults), not {size!r}")
        return {**dict(self.presets[size]), **dict(overrides or {})}

    def with_presets(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` (the technique's public function) with a keyword ``preset="quick"|"full"|None``.

        ``preset="quick"`` / ``"full"`` calls ``fn`` with exactly the parameters the knowledge map's
        ``quick`` / ``full`` cell uses (:meth:`params`), so ``fn(model, inputs, preset="full")`` on a
        family's input reproduces that map cell; keyword arguments given explicitly still override the
        preset. ``preset=None`` (default) leaves ``fn``'s own defaults.

        Args:
            fn: the function to wrap; it must accept every parameter of both presets.

        Returns:
            The wrapped function (same name and docstring; its signature shows ``preset``).

        Raises:
            MedinterpError: at wrap time when a preset names a parameter ``fn`` does not take; at call
                time for an unknown preset.
        """
        sig = inspect.signature(fn)
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
        for size in SIZES:
            unknown = sorted(set(self.presets[size]) - set(sig.parameters))
            if unknown and not takes_any:
                raise MedinterpError(f"{self.name}: preset {size!r} sets {unknown}, which {fn.__name__}() does not take")

        @functools.wraps(fn)
        def wrapper(*args: Any, preset: str | None = None, **kwargs: Any) -> Any:
            if preset is not None:
                kwargs = self.params(preset, kwargs)
            return fn(*args, **kwargs)

        params = list(sig.parameters.values())
        at = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))
        params.insert(at, inspect.Parameter("preset", inspect.Parameter.KEYWORD_ONLY, default=None,
                                            annotation="str | None"))
        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__doc__ = (fn.__doc__ or "") + (
            f"\n\n    ``preset``: ``\"quick\"`` or ``\"full\"`` runs with the knowledge map's {self.name} preset "
            "(explicit keyword arguments still override it); None: the defaults above.\n")
        wrapper.technique = self  # type: ignore[attr-defined]
        return wrapper

    def run(self, model: Any, family: Family, **params: Any) -> "TechniqueResult":
        """Run on one family (raises :class:`MissingInput` when an input it needs is absent)."""
        family.require(self.name, self.needs)
        return self.run_fn(model, family, **params)

    def run_many(self, model: Any, families: Sequence[Family], *,
                 on_result: Callable[[int, "TechniqueResult"], None] | None = None,
                 **params: Any) -> list["TechniqueResult"]:
        """Run on several families; shares work when the technique supports it.

        ``on_result(i, result)`` is called as soon as family ``i`` is finished (the map saves it
        there, so an interruption loses only unfinished families).
        """
        for fam in families:
            fam.require(self.name, self.needs)
        if self.run_many_fn is not None:
            return list(self.run_many_fn(model, list(families), on_result=on_result, **params))
        out = []
        for i, fam in enumerate(families):
            out.append(self.run_fn(model, fam, **params))
            if on_result is not None:
                on_result(i, out[-1])
        return out


@dataclasses.dataclass
class UnitScores:
    """Per-prompt, per-layer evidence with the unit of inference of each prompt.

    The map's effect-over-control statistics (``medinterp.stats.layer_effects``) resample *units*
    (items: all templates of an item move together), never prompts.

    Fields:
        values: ``[n_prompts, n_layers]`` evidence per prompt and block (higher = more evidence;
            comparable between a family, its control family and the random-init twin).
        units: the item id of each prompt (its cluster).
        templates: the template index of each prompt (for template resamples), or None.
        description: what a value is, in words (e.g. "out-of-fold probe correctness, chance-corrected").
        covariates: ``{name: [n_prompts]}`` per-prompt covariates that move the technique with no
            medicine involved (names from :data:`medinterp.covariates.COVARIATES`: token counts, answer
            prior, intact confidence, task structure); the map checks their balance between medicine and
            its control before marking (``medinterp.maps.balance``). Empty: no balance check possible.
    """

    values: np.ndarray
    units: list
    templates: list | None = None
    description: str = ""
    covariates: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=float)
        if self.values.ndim != 2 or len(self.units) != self.values.shape[0]:
            raise MedinterpError(f"UnitScores: values must be [n_prompts, n_layers] with one unit per prompt; "
                                 f"got values {self.values.shape} and {len(self.units)} units")
        if self.templates is not None and len(self.templates) != self.values.shape[0]:
            raise MedinterpError("UnitScores: one template index per prompt expected")
        from medinterp.covariates import as_columns

        self.covariates = as_columns(self.covariates, self.values.shape[0])


@dataclasses.dataclass
class ControlContrast:
    """A technique's own per-layer comparison with its controls, for a technique whose unit scores are not
    independent units (e.g. out-of-fold probe scores): the map then marks from this instead of item-level
    tests (:meth:`TechniqueResult.control_contrast`).

    Fields (``[n_layers]`` arrays; ``p`` values uncorrected and one-sided, "medicine greater"):
        effect, ci_low, ci_high, se, p: medicine over its control family.
        effect_twin, twin_low, twin_high, p_twin: medicine over the random twin (None: no twin given).
        n_items, n_control: units compared.
        balance: ``{"covariates": [...], "medicine": {...}, "control": {...}, "matched": {...}, "method": str}``
            (covariate means before matching per group and the common value after; empty: none).
    """

    effect: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    se: np.ndarray
    p: np.ndarray
    n_items: int
    n_control: int
    effect_twin: np.ndarray | None = None
    twin_low: np.ndarray | None = None
    twin_high: np.ndarray | None = None
    p_twin: np.ndarray | None = None
    balance: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class TechniqueResult(Result):
    """Base of every technique's result: same fields, same methods.

    Fields:
        concept_set: name of the concept or pair set the result was computed on.
        params: the technique parameters of the run (enough to rerun it).
        timings: wall-clock seconds by stage.
        provenance: model identity, parameters, package versions (see ``make_provenance``).

    Subclasses implement :meth:`layer_curve`, :meth:`layer_curve_ci`, :attr:`curve_label` and
    :meth:`summary`; :meth:`figure` asks the renderer registry.
    """

    kind: ClassVar[str] = "technique"

    concept_set: str = ""
    params: dict = dataclasses.field(default_factory=dict)
    timings: dict = dataclasses.field(default_factory=dict)
    provenance: dict = dataclasses.field(default_factory=dict)

    def layer_curve(self) -> Float[np.ndarray, "n_layers"]:
        """One value per block (higher = more evidence); the map's curve."""
        raise NotImplementedError(f"{type(self).__name__}.layer_curve")

    def layer_curve_ci(self) -> tuple[Float[np.ndarray, "n_layers"], Float[np.ndarray, "n_layers"]]:
        """``(low, high)`` confidence band of :meth:`layer_curve`."""
        raise NotImplementedError(f"{type(self).__name__}.layer_curve_ci")

    def unit_scores(self) -> UnitScores:
        """Per-prompt evidence per layer with item ids: what the map compares against its controls.

        A technique that does not provide it is drawn with the paper's rules only (``rule="paper"``).
        """
        raise NotImplementedError(f"{type(self).__name__}.unit_scores")

    def control_contrast(self, control: "TechniqueResult", twin: "TechniqueResult | None", *, seed: int = 0,
                         n_boot: int = 200, balance: bool = True, quick: bool = False) -> "ControlContrast | None":
        """The technique's own comparison with its control family and twin, or None (the default): the map
        then tests :meth:`unit_scores` item by item. ``quick``: a cheaper redo for robustness resamples.

        Raises:
            MedinterpError: the comparison cannot be made (the message is the cell's reason).
        """
        return None

    def unavailable(self) -> str | None:
        """Why this result has no curve although it ran (e.g. "not known by the model: ..."), else None.

        The map shows this reason in the cell instead of a band.
        """
        return None

    @property
    def curve_label(self) -> str:
        """What :meth:`layer_curve` measures, in words."""
        return f"{self.kind} layer curve"

    def summary(self) -> str:
        """A few lines a person reads first (numbers to 3 significant digits, each labelled)."""
        curve = np.asarray(self.layer_curve(), float)
        if not np.isfinite(curve).any():
            return f"{self.kind} on {self.concept_set or '?'}: no finite layer values"
        top = int(np.nanargmax(curve))
        return f"{self.kind} on {self.concept_set or '?'}: peak at layer {top} ({self.curve_label} {sig3(curve[top])})"

    def _repr_fields(self) -> list[tuple[str, str]]:
        rows = super()._repr_fields()
        try:
            why = self.unavailable()
            curve = np.asarray(self.layer_curve(), float)
        except Exception:  # noqa: BLE001 - a repr never raises (a half-built or foreign result)
            return rows
        rows.append(("layers", str(len(curve))))
        if why:
            rows.append(("unavailable", why))
        elif np.isfinite(curve).any():
            top = int(np.nanargmax(curve))
            rows.append(("peak", f"layer {top} ({self.curve_label} {sig3(curve[top])})"))
        return rows

    def to_dataframe(self):
        """The result as one pandas DataFrame: its long table where it has one (the ``table`` field), else
        the layer curve with its CI (columns ``layer, value, ci_low, ci_high, measure``)."""
        import pandas as pd

        table = getattr(self, "table", None)
        if type(table).__name__ == "DataFrame":
            return table.copy()
        curve = np.asarray(self.layer_curve(), float)
        lo, hi = (np.asarray(a, float) for a in self.layer_curve_ci())
        layers = getattr(self, "layers", None)
        layers = list(layers) if layers is not None and len(layers) == len(curve) else list(range(len(curve)))
        return pd.DataFrame({"layer": layers, "value": curve, "ci_low": lo, "ci_high": hi,
                             "measure": [self.curve_label] * len(curve)})

