"""Per-layer embeddings: centring, PCA, exact kNN, UMAP (30-d for metrics, 2-d for plots), the
Procrustes alignment of the 2-d embeddings across layers, and the joblib worker pool.

Example:
    >>> import numpy as np
    >>> is_constant(np.ones((4, 3), np.float32) + np.float32(1e-9)), is_constant(np.eye(3))
    (True, False)
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
from jaxtyping import Float

#: A layer whose RMS spread around its mean is below this share of its RMS norm is "constant"
#: (all prompts give one vector up to float32 rounding, e.g. the embedding output when every prompt
#: ends on the same token). float32 rounding is ~1e-7 relative; the smallest real spread seen on
#: Gemma 3 270M blocks is orders of magnitude above 1e-5.
CONSTANT_REL_SPREAD = 1e-5


def is_constant(X: Float[np.ndarray, "n d"], rel: float = CONSTANT_REL_SPREAD) -> bool:
    """True when the points are identical up to rounding: RMS spread < ``rel`` × RMS norm."""
    X = np.asarray(X, dtype=np.float64)
    spread = float(np.sqrt(np.mean(np.sum((X - X.mean(0)) ** 2, axis=1))))
    scale = float(np.sqrt(np.mean(np.sum(X**2, axis=1))))
    return spread <= rel * scale


def _pca(X: np.ndarray, n_components: int | None, seed: int) -> np.ndarray:
    if not n_components or n_components >= min(X.shape):
        return X
    from sklearn.decomposition import PCA

    return PCA(n_components=n_components, random_state=seed).fit_transform(X)


def _exact_knn(X: np.ndarray, n_neighbors: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours (self first), as UMAP's own small-data path computes them.

    UMAP (n < 4096) would compute all pairwise distances through a per-pair Python callback
    (measured: 2 of 3 s of a 456-point fit); sklearn's vectorised distances are ~50x faster, and
    the neighbour graph is shared by the 30-d and the 2-d fit.
    """
    from sklearn.metrics import pairwise_distances

    D = pairwise_distances(X, metric=metric).astype(np.float32)
    np.fill_diagonal(D, -1.0)
    idx = np.argsort(D, axis=1, kind="stable")[:, :n_neighbors]
    dist = np.take_along_axis(D, idx, axis=1)
    dist[:, 0] = np.where(idx[:, 0] == np.arange(len(X)), 0.0, dist[:, 0])
    return idx.astype(np.int32), np.clip(dist, 0, None)


def _umap_one(
    X: np.ndarray, n_components: int, *, n_neighbors: int, min_dist: float, metric: str, n_epochs: int | None,
    seed: int, knn: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    import umap

    n = X.shape[0]
    nc = int(min(n_components, max(1, n - 2)))
    init = "spectral" if n > nc + 2 else "random"
    k = int(min(n_neighbors, n - 1))
    kw = dict(n_components=nc, n_neighbors=k, min_dist=min_dist, metric=metric, n_epochs=n_epochs,
              random_state=seed, low_memory=True, n_jobs=1, verbose=False)
    if knn is not None and k >= 2:
        kw["precomputed_knn"] = (knn[0][:, :k], knn[1][:, :k])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            emb = umap.UMAP(init=init, **kw).fit_transform(X)
        except Exception:  # noqa: BLE001 - degenerate input (e.g. identical points): retry without spectral init
            emb = umap.UMAP(init="random", **kw).fit_transform(X)
    if nc < n_components:
        emb = np.concatenate([emb, np.zeros((n, n_components - nc), emb.dtype)], axis=1)
    return emb.astype(np.float32)


def _embed_layer(X: np.ndarray, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, float]:
    """UMAP-``n_components`` and UMAP-2 of one layer (module level so joblib workers can run it)."""
    with _one_blas_thread():
        return _embed_layer_inner(X, params)


def _one_blas_thread():
    """Single-threaded BLAS for the many small matrix ops here.

    Measured on a loaded 2-core machine: a 480×480 ``eigh`` took 11 s with OpenBLAS's 2 threads
    (spin-waiting against other processes) and 0.09 s with one. Parallelism comes from worker
    processes (``n_jobs``) instead.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _embed_layer_inner(X: np.ndarray, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, float]:
    t0 = time.perf_counter()
    X = np.asarray(X, dtype=np.float32)
    Xs = X - X.mean(0, keepdims=True)
    if is_constant(X):  # all prompts identical at this layer (up to rounding): nothing to embed
        n = X.shape[0]
        return (np.zeros((n, params["n_components"]), np.float32), np.zeros((n, 2), np.float32),
                time.perf_counter() - t0)
    Xp = _pca(Xs, params["pca"], params["seed"]).astype(np.float32)
    kw = {k: params[k] for k in ("n_neighbors", "min_dist", "metric", "n_epochs", "seed")}
    kw["knn"] = _exact_knn(Xp, min(params["n_neighbors"], Xp.shape[0] - 1), params["metric"])
    e_hi = _umap_one(Xp, params["n_components"], **kw)
    e_2 = _umap_one(Xp, 2, **kw)
    return e_hi, e_2, time.perf_counter() - t0


def _align_2d(embs: np.ndarray) -> np.ndarray:
    """Rotate/reflect each layer's 2-D embedding onto the previous one (orthogonal Procrustes)."""
    from scipy.linalg import orthogonal_procrustes

    out = embs.copy()
    for i in range(1, len(out)):
        a = out[i] - out[i].mean(0)
        b = out[i - 1] - out[i - 1].mean(0)
        if not (np.abs(a).sum() and np.abs(b).sum()):
            continue
        R, _ = orthogonal_procrustes(a, b)
        out[i] = a @ R
    return out


def embed_layers(
    values: Float[np.ndarray, "layers n d"],
    *,
    n_components: int = 30,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "euclidean",
    pca: int | None = 50,
    n_epochs: int | None = 200,
    seed: int = 0,
    n_jobs: int = 1,
    progress: bool = True,
    desc: str = "UMAP",
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """UMAP every layer to ``n_components`` dims (metrics) and 2 dims (plots).

    Each layer is centred, optionally reduced with PCA (``pca`` components; None/0 = off), then
    embedded twice with a fixed ``seed``. ``n_jobs > 1`` runs layers in joblib worker processes
    (each compiles numba once and is reused across calls). The 2-D embeddings are aligned layer to
    layer with an orthogonal Procrustes rotation so a layer slider does not spin the picture.

    Returns:
        ``(emb [layers, n, n_components], emb2 [layers, n, 2], seconds per layer)``.
    """
    params = dict(n_components=n_components, n_neighbors=n_neighbors, min_dist=min_dist, metric=metric,
                  pca=pca, n_epochs=n_epochs, seed=seed)
    out = _run_jobs(_embed_layer, [(values[i], params) for i in range(len(values))], n_jobs, progress, desc)
    e_hi = np.stack([o[0] for o in out])
    e_2 = _align_2d(np.stack([o[1] for o in out]))
    return e_hi, e_2, [o[2] for o in out]


def _run_jobs(fn: Any, jobs: list[tuple], n_jobs: int, progress: bool, desc: str) -> list:
    """``[fn(*job) for job in jobs]``, in joblib worker processes when ``n_jobs > 1``, in order."""
    from tqdm.auto import tqdm

    if n_jobs == 1 or len(jobs) <= 1:
        return [fn(*job) for job in tqdm(jobs, desc=desc, disable=not progress, leave=False)]
    from joblib import Parallel, delayed

    par = Parallel(n_jobs=n_jobs, backend="loky", return_as="generator")
    gen = par(delayed(fn)(*job) for job in jobs)
    return list(tqdm(gen, total=len(jobs), desc=desc, disable=not progress, leave=False))

