"""Memory and time plan of each technique and the full map for a model on a set of GPUs.

A first-order model, from the HF config alone (no weights, no hub):

* **weights** per device: a ``device_map`` split by whole blocks (embedding on the first device,
  final norm and unembedding on the last), so the busiest device holds ``ceil(L / n)`` blocks plus one end.
* **activations** per device: the working set of one block for one batch (residual copies, eager
  attention scores, MLP / routed-expert hidden), the logits of the batch, plus what the technique keeps:
  geometry and patching and lesion cache the residual at every layer of the batch (spread over the
  devices with their blocks); saliency keeps every block's saved tensors for the backward.
* **gradients**: saliency frees each gradient inside its hook, so the peak is one block's weight
  gradients (plus the float32 statistics, negligible).
* **time**: each forward costs ``max(FLOPs / (peak × mfu), bytes of weights read / HBM bandwidth)``
  (small batches are bound by reading the weights); a ``device_map`` runs the devices one after the
  other, so more GPUs add memory, not speed. Backward = 2 × forward. Prefix reuse (hooked backend) runs
  half the blocks on average for lesion and patching; the bridge's hook path runs them all.
* **host RAM** to load: the hooked backend streams a local safetensors folder onto the device one piece
  at a time (:mod:`medinterp.models.lean`: the embedding matrix, then one layer), so the host holds one
  piece in flight (counted twice: the read and its cast); a hub name, or a checkpoint the lean path cannot
  stream (multimodal Gemma 3, quantized), goes through TransformerLens's own path, which holds the HF
  model, TL's converted state dict and the TL model at once (3 × weights); the bridge wraps the HF module
  (1 ×; with ``device_map`` HF loads straight to the GPUs). Loaded onto the CPU, the lean path's peak is
  the model plus one piece: measured 1.07 × the weights for a 64M-parameter bf16 Llama
  (tests/unit/test_lean_load.py, verify off), 1.20 × for a 1.4B Llama-3.3-70B-shaped checkpoint and 1.65 ×
  for Gemma 3 1B (tied embedding stored twice by TL, +0.3) with the logits check on; TL's path 3.2-4.0 ×
  (``benchmarks/lean_load.py``, CPU, under load). Streaming onto a GPU has not been run yet.

Checked against measured peak RSS on CPU, float32, load + one forward of 16 × 48 tokens (2 shared
cores, under load; RSS above the bare interpreter):

==================  =======  ==============  ===============  =========================
model               backend  peak load       load + forward   plan (weights + acts)
==================  =======  ==============  ===============  =========================
Gemma 3 270M        hooked   3.44 GiB        3.76 GiB         host 3.0; 1.00 + 0.82
Gemma 3 270M        bridge   0.78 GiB        2.47 GiB         host 1.0; 1.00 + 0.82
SmolLM2-135M        hooked   1.43 GiB        1.43 GiB         host 1.5; 0.50 + 0.22
SmolLM2-135M        bridge   0.32 GiB        0.96 GiB         host 0.5; 0.50 + 0.22
==================  =======  ==============  ===============  =========================

The plan's per-device total is ~25 % under the bridge's measured load + forward (the rest is the
tokenizer, allocator slack and torch's own buffers), so keep the 8 % head-room it already leaves.

The numbers are estimates (±30 % on memory, a factor of 2 on time); the work sizes default to the
``full`` map of :data:`medinterp.maps.SIZES` and can be overridden.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medinterp.errors import MedinterpError

GiB = 1024**3
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# H100 SXM 80GB: dense tensor-core peak (bf16/fp16), fp32 without TF32 (torch's default), HBM bandwidth.
GPU_PEAK_TFLOPS = {"bfloat16": 989.0, "float16": 989.0, "float32": 67.0}
GPU_BANDWIDTH = 3.35e12
TECHNIQUES = ("geometry", "saliency", "lesion", "patching")


@dataclass(frozen=True)
class Shape:
    """What sizes a decoder-only transformer, read from an HF config."""

    name: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv: int
    head_dim: int
    d_mlp: int
    vocab: int
    tied: bool
    n_experts: int = 0
    top_k: int = 0
    qkv_bias: bool = False

    @property
    def attn_params(self) -> int:
        q = self.n_heads * self.head_dim
        kv = self.n_kv * self.head_dim
        return self.d_model * (q + 2 * kv) + q * self.d_model + (q + 2 * kv if self.qkv_bias else 0)

    @property
    def mlp_params(self) -> int:
        one = 3 * self.d_model * self.d_mlp
        return one * self.n_experts + self.d_model * self.n_experts if self.n_experts else one

    @property
    def mlp_active_params(self) -> int:
        return 3 * self.d_model * self.d_mlp * self.top_k if self.n_experts else self.mlp_params

    @property
    def layer_params(self) -> int:
        return self.attn_params + self.mlp_params + 4 * self.d_model

    @property
    def embed_params(self) -> int:
        return self.vocab * self.d_model

    @property
    def unembed_params(self) -> int:
        return 0 if self.tied else self.vocab * self.d_model

    @property
    def total_params(self) -> int:
        return self.embed_params + self.unembed_params + self.n_layers * self.layer_params + self.d_model

    @property
    def active_params(self) -> int:
        """Weights a token multiplies through (MoE: the routed experts only), unembedding included."""
        return self.n_layers * (self.attn_params + self.mlp_active_params) + self.vocab * self.d_model


def shape_from_config(cfg: dict[str, Any], name: str = "model") -> Shape:
    """A :class:`Shape` from an HF ``config.json`` dict (multimodal Gemma 3: its ``text_config``)."""
    if "text_config" in cfg and "hidden_size" not in cfg:
        cfg = {**cfg["text_config"], "tie_word_embeddings": cfg.get("tie_word_embeddings", True)}
    try:
        d = int(cfg["hidden_size"])
        h = int(cfg["num_attention_heads"])
        return Shape(
            name=name, n_layers=int(cfg["num_hidden_layers"]), d_model=d, n_heads=h,
            n_kv=int(cfg.get("num_key_value_heads") or h), head_dim=int(cfg.get("head_dim") or d // h),
            d_mlp=int(cfg.get("intermediate_size") or cfg.get("moe_intermediate_size") or 4 * d),
            vocab=int(cfg["vocab_size"]), tied=bool(cfg.get("tie_word_embeddings", False)),
            n_experts=int(cfg.get("num_local_experts") or cfg.get("num_experts") or 0),
            top_k=int(cfg.get("num_experts_per_tok") or 0),
            qkv_bias=bool(cfg.get("attention_bias", cfg.get("model_type") == "qwen2")))
    except KeyError as e:
        raise MedinterpError(f"{name}: config has no {e.args[0]!r} field (expected an HF decoder config)") from None


@dataclass(frozen=True)
class Gpus:
    """``n`` devices of ``mem_gb`` GB each (``"4x80GB"``)."""

    n: int
    mem_gb: float

    @classmethod
    def parse(cls, text: str) -> "Gpus":
        m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+(?:\.\d+)?)\s*(GB|GiB|G)?\s*", text)
        if not m:
            raise MedinterpError(f"--gpus: expected COUNTxMEMORY like '4x80GB'; got {text!r}")
        n, mem = int(m.group(1)), float(m.group(2))
        if n < 1 or mem <= 0:
            raise MedinterpError(f"--gpus {text!r}: expected at least 1 device of more than 0 GB, like '4x80GB'")
        return cls(n, mem)

    @property
    def usable_bytes(self) -> float:
        """Per device, less ~8 % for the CUDA context and allocator fragmentation."""
        return self.mem_gb * 1e9 * 0.92


@dataclass
class Workload:
    """Work sizes (defaults: the ``full`` map, six families)."""

    seq_len: int = 48
    batch_size: int = 16
    geometry_prompts: int = 300
    saliency_prompts: int = 16
    lesion_prompts: int = 48
    lesion_modes: int = 1
    patching_pairs: int = 40
    n_families: int = 6
    mfu: float = 0.35

    def __post_init__(self) -> None:
        for name in ("seq_len", "batch_size", "n_families"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                opt = "--families" if name == "n_families" else "--" + name.replace("_", "-")
                raise MedinterpError(f"{opt} {v!r}: expected a positive whole number")
        for name in ("geometry_prompts", "saliency_prompts", "lesion_prompts", "lesion_modes", "patching_pairs"):
            if getattr(self, name) < 0:
                raise MedinterpError(f"Workload.{name} {getattr(self, name)!r}: expected 0 or more")
        if not 0 < self.mfu <= 1:
            raise MedinterpError(f"Workload.mfu {self.mfu!r}: expected a fraction in (0, 1]")


@dataclass
class Row:
    """One technique's estimate (bytes are per busiest device)."""

    technique: str
    weights: float
    activations: float
    gradients: float
    total: float
    fits: bool
    seconds: float
    passes: float
    advice: str = ""


@dataclass
class Plan:
    """The estimate for one model, device set, dtype and backend."""

    model: str
    gpus: str
    dtype: str
    backend: str
    params_total: int
    params_active: int
    host_ram_to_load: float
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _weights_per_device(s: Shape, n: int, b: int) -> float:
    k = math.ceil(s.n_layers / n)
    layers = k * s.layer_params
    if n == 1:
        return s.total_params * b
    return max(s.embed_params + layers, layers + (s.unembed_params or s.embed_params)) * b


def _block_working_set(s: Shape, B: int, T: int, b: int) -> float:
    hidden = s.d_mlp * (s.top_k if s.n_experts else 1)
    per_tok = 6 * s.d_model + (s.n_heads + 2 * s.n_kv) * s.head_dim + 3 * hidden
    scores = B * s.n_heads * T * T * (b + 4)  # eager scores + float32 softmax
    return B * T * per_tok * b + scores


def _logits(s: Shape, B: int, T: int) -> float:
    return B * T * s.vocab * 4  # float32 logits (upcast)


def _forward_seconds(s: Shape, tokens: int, b: int, dtype: str, mfu: float, frac_layers: float = 1.0) -> float:
    flops = 2 * s.active_params * tokens * frac_layers
    compute = flops / (GPU_PEAK_TFLOPS[dtype] * 1e12 * mfu)
    read = s.total_params * b * frac_layers / GPU_BANDWIDTH
    return max(compute, read) + 0.002 * s.n_layers * frac_layers  # ~2 ms per block of launch/hook overhead


def host_ram_to_load(shape: Shape, b: int, backend: str, *, streamed: bool = True) -> float:
    """Peak host RAM (bytes) to load ``shape`` onto GPUs at ``b`` bytes per weight (see the module doc).

    Example:
        >>> s = Shape("m", n_layers=10, d_model=8, n_heads=2, n_kv=2, head_dim=4, d_mlp=16, vocab=100, tied=False)
        >>> host_ram_to_load(s, 2, "hooked") == 2 * max(s.embed_params, s.layer_params) * 2
        True
        >>> host_ram_to_load(s, 2, "hooked", streamed=False) == 3 * s.total_params * 2
        True
    """
    if backend == "hooked" and streamed:
        return 2 * max(shape.embed_params, shape.layer_params) * b
    return shape.total_params * b * (3 if backend == "hooked" else 1)


def plan_model(shape: Shape, gpus: Gpus, *, dtype: str = "bfloat16", backend: str = "hooked",
               work: Workload | None = None, streamed: bool = True) -> Plan:
    """Estimate memory per device and time of each technique and the full map.

    Args:
        shape: the model's sizes (:func:`shape_from_config`).
        gpus: devices (``Gpus.parse("4x80GB")``).
        dtype: ``"bfloat16"``, ``"float16"`` or ``"float32"``.
        backend: ``"hooked"`` (prefix reuse) or ``"bridge"`` (hook path; ``device_map``).
        work: work sizes.
        streamed: the hooked backend loads a local safetensors folder lean (``False``: a hub name or a
            checkpoint the lean path cannot stream: TL's path, 3 × the weights in host RAM).
    """
    if dtype not in BYTES:
        raise MedinterpError(f"dtype must be one of {', '.join(BYTES)}; got {dtype!r}")
    w = work or Workload()
    b, n, T, B = BYTES[dtype], gpus.n, w.seq_len, w.batch_size
    weights = _weights_per_device(shape, n, b)
    layers_per_dev = math.ceil(shape.n_layers / n)
    resid_cache = layers_per_dev * B * T * shape.d_model * b
    block = _block_working_set(shape, B, T, b)
    reuse = backend == "hooked"
    frac = 0.5 if reuse else 1.0
    f1 = _forward_seconds(shape, B * T, b, dtype, w.mfu)
    geometry_passes = math.ceil(w.geometry_prompts / B)
    lesion_passes = math.ceil(w.lesion_prompts / B) * (1 + w.lesion_modes * shape.n_layers * frac)
    patch_passes = math.ceil(w.patching_pairs / B) * (2 + shape.n_layers * frac)
    sal_fwd = _forward_seconds(shape, T, b, dtype, w.mfu)
    specs = {
        "geometry": (block + resid_cache + _logits(shape, B, T), 0.0, geometry_passes * f1, geometry_passes),
        "lesion": (block + resid_cache + _logits(shape, B, T), 0.0, lesion_passes * f1, lesion_passes),
        "patching": (block + 2 * resid_cache + _logits(shape, B, T), 0.0, patch_passes * f1, patch_passes),
        # one prompt per backward (per-prompt statistics); every block's saved tensors live until backward
        "saliency": (layers_per_dev * _block_working_set(shape, 1, T, b) + _logits(shape, 1, T),
                     shape.layer_params * b, 3 * w.saliency_prompts * sal_fwd, 3 * w.saliency_prompts),
    }
    host = host_ram_to_load(shape, b, backend, streamed=streamed)
    p = Plan(model=shape.name, gpus=f"{n}x{gpus.mem_gb:g}GB", dtype=dtype, backend=backend,
             params_total=shape.total_params, params_active=shape.active_params, host_ram_to_load=host)
    for tech in TECHNIQUES:
        act, grad, secs, passes = specs[tech]
        tot = weights + act + grad
        p.rows.append(Row(tech, weights, act, grad, tot, tot <= gpus.usable_bytes, secs * w.n_families, passes))
    worst = max(p.rows, key=lambda r: r.total)
    p.rows.append(Row("map (all four x families)", weights, max(r.activations for r in p.rows),
                      max(r.gradients for r in p.rows), worst.total, worst.fits, sum(r.seconds for r in p.rows),
                      sum(r.passes for r in p.rows)))
    for r in p.rows:
        if not r.fits:
            r.advice = _advice(shape, gpus, dtype, r, b, weights)
    if n > 1 and backend == "hooked":
        p.notes.append("hooked backend: TL's n_devices split is naive; use backend='bridge' with device_map='auto'")
    if n > 1:
        p.notes.append("device_map runs devices in sequence: more GPUs add memory, not speed")
    if backend == "bridge":
        p.notes.append("bridge: no start_at_layer, lesion and patching rerun the prefix (hook path)")
    if backend == "hooked" and streamed:
        p.notes.append(f"host RAM {host / GiB:.1f} GiB: streamed from a local safetensors folder, one piece at a "
                       f"time (download it, then load_model(folder)); a hub name goes through TransformerLens's "
                       f"own path: ~{3 * shape.total_params * b / GiB:.0f} GiB (3x the weights)")
    elif backend == "hooked":
        p.notes.append("host RAM: this checkpoint cannot be streamed (multimodal or quantized): TransformerLens's "
                       "own path, 3x the weights")
    return p


def _advice(s: Shape, gpus: Gpus, dtype: str, r: Row, b: int, weights: float) -> str:
    cap = gpus.usable_bytes
    if weights > cap:
        if dtype == "float32" and weights / 2 <= cap:
            return "use dtype=bfloat16 (halves the weights)"
        need = math.ceil(s.total_params * (2 if dtype == "float32" else b) / (cap * 0.85))
        return f"weights do not fit: backend=bridge, device_map=auto over >= {need} x {gpus.mem_gb:g}GB in bfloat16"
    free = cap - weights - r.gradients
    if r.activations > free and r.technique != "saliency":
        return f"fewer prompts per batch (activations {r.activations / GiB:.1f} GiB > {free / GiB:.1f} GiB free)"
    if dtype == "float32":
        return "use dtype=bfloat16"
    return f"device_map over more GPUs (needs {r.total / GiB:.0f} GiB on one device)"


def plan_spec(spec: str, gpus: str = "1x80GB", *, dtype: str = "bfloat16", backend: str | None = None,
              work: Workload | None = None) -> Plan:
    """:func:`plan_model` for a seed model name or a local HF ``config.json`` / folder (no hub)."""
    from .backends import in_hooked_registry
    from .seeds import find_seed

    if backend not in (None, "hooked", "bridge"):
        raise MedinterpError(f"--backend {backend!r}: expected hooked or bridge (or leave it out)")
    if dtype not in BYTES:
        raise MedinterpError(f"--dtype {dtype!r}: expected one of {', '.join(BYTES)}")
    g = Gpus.parse(gpus)
    seed = find_seed(spec)
    if seed is not None:
        shape = shape_from_config(seed.config, seed.name)
        auto = "hooked" if in_hooked_registry(seed.hf_name) else "bridge"
    else:
        path = Path(spec).expanduser()
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            from .seeds import SEED_MODELS

            raise MedinterpError(f"plan: {spec!r} is neither a seed model ({', '.join(SEED_MODELS)}) "
                                 "nor a local HF config.json / model folder")
        try:
            cfg = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise MedinterpError(f"{path}, line {e.lineno}: invalid JSON ({e.msg})") from None
        shape = shape_from_config(cfg, path.parent.name)
        auto = "hooked" if in_hooked_registry(str(cfg.get("_name_or_path", ""))) else "bridge"
    chosen = backend or ("bridge" if g.n > 1 else auto)
    # the lean path reads transformers' own parameter names; a multimodal checkpoint stores others
    streamed = seed is None or not seed.note.startswith("multimodal")
    return plan_model(shape, g, dtype=dtype, backend=chosen, work=work, streamed=streamed)
