"""The one readout: residual stream → logits at chosen positions (final norm, unembedding, soft-cap),
and the one :class:`Target` (what is scored and where it is read) of saliency and lesioning.

Every technique that scores tokens (saliency, lesion, patching) reads logits through
:func:`unembed_at`, so the final norm, the unembedding and Gemma's logit soft-cap are applied in one
place, and only at the positions (and vocabulary columns) that are read.

Example:
    >>> import torch
    >>> from medinterp.testing import tiny_model
    >>> m = tiny_model(n_layers=2)
    >>> toks = m.to_tokens(["a patient with angina"])
    >>> resid = m(toks, stop_at_layer=m.cfg.n_layers)
    >>> full = m(toks)
    >>> pos = torch.tensor([toks.shape[1] - 1])
    >>> bool(torch.allclose(unembed_at(m, resid, pos), full[:, -1], atol=1e-5))
    True
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from medinterp.errors import MedinterpError, clip
from medinterp.precision import is_low_precision
from medinterp.models.chat import answer_text, chat_setting, check_bos, wrap_prefix, wrap_text


#: columns of the unembedding upcast at once by the float32 readout of a low-precision model (2**26 elements:
#: 256 MB of float32 temporaries at most, instead of a float32 copy of all of W_U, 5.6 GB on Gemma-3-27B)
_UNEMBED_COLS_ELEMENTS = 1 << 26


class _Float32Unembed(torch.autograd.Function):
    """``x @ W + b`` in float32 for low-precision ``x`` / ``W`` / ``b``, a block of vocabulary columns at a time.

    Autograd would keep every float32 block of ``W`` for the backward (a float32 copy of W_U); this
    function keeps ``W`` as it is and upcasts its blocks again in the backward. Gradients come back in
    the inputs' own dtypes.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, W: Tensor, b: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, W)
        ctx.b_dtype = b.dtype
        xf = x.float()
        out = torch.empty(x.shape[0], W.shape[1], dtype=torch.float32, device=x.device)
        step = max(1, _UNEMBED_COLS_ELEMENTS // max(1, W.shape[0]))
        for c in range(0, W.shape[1], step):
            torch.addmm(b[c : c + step].float(), xf, W[:, c : c + step].float(), out=out[:, c : c + step])
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:  # type: ignore[override]
        x, W = ctx.saved_tensors
        gx = gW = gb = None
        g = g.float()
        if ctx.needs_input_grad[0]:
            gx = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
            step = max(1, _UNEMBED_COLS_ELEMENTS // max(1, W.shape[0]))
            for c in range(0, W.shape[1], step):
                gx.addmm_(g[:, c : c + step], W[:, c : c + step].float().T)
            gx = gx.to(x.dtype)
        if ctx.needs_input_grad[1]:
            gW = (x.float().T @ g).to(W.dtype)
        if ctx.needs_input_grad[2]:
            gb = g.sum(0).to(ctx.b_dtype)
        return gx, gW, gb


def final_logits(
    model: Any,
    x: Float[Tensor, "n d_model"],
    token_ids: Int[Tensor, "n_ids"] | None = None,
    on_unembed: Callable[[Tensor, Tensor], None] | None = None,
) -> Float[Tensor, "n vocab"]:
    """``ln_final`` (if any), unembedding (only ``token_ids`` columns when given) and soft-cap.

    ``x`` is the residual after the last block, one row per read position. The unembedding is
    ``x @ W_U + b_U`` (TransformerLens' ``Unembed`` module copies ``W_U.T`` on every call). The logits
    are float32 when the model is bf16 / fp16 (every log-prob, KL and logit difference downstream is
    then computed from unrounded logits), else in the model's dtype. When
    ``on_unembed`` is given it is called during backward with ``(x, ∂L/∂logits)`` (before the
    soft-cap), from which ``∂L/∂W_U = xᵀ·∂L/∂logits`` (saliency uses it to avoid holding that gradient).
    """
    if model.cfg.normalization_type is not None:
        x = model.ln_final(x.unsqueeze(0))[0]
    W, b = model.unembed.W_U, model.unembed.b_U
    if token_ids is not None:
        W, b = W[:, token_ids], b[token_ids]
    if W.device != x.device:  # sharded models: read on the unembedding's device
        x = x.to(W.device)
    if is_low_precision(W.dtype) or is_low_precision(x.dtype):
        # bf16 / fp16 models: logits rounded to 8 (bf16) mantissa bits are off by ~0.06 at |logit| 16-32,
        # as large as the logit differences and log-prob drops the techniques measure, so the readout
        # is float32 (with x upcast after the final norm, W_U a block of columns at a time)
        logits = _Float32Unembed.apply(x, W, b)
        x = x.float()
    else:
        logits = x @ W + b
    if on_unembed is not None and logits.requires_grad:
        xd = x.detach()
        logits.register_hook(lambda d_logits: on_unembed(xd, d_logits))
    cap = getattr(model.cfg, "output_logits_soft_cap", None)
    if cap is not None and cap > 0:
        logits = cap * torch.tanh(logits / cap)
    return logits


def unembed_at(
    model: Any,
    resid: Float[Tensor, "batch pos d_model"],
    positions: Int[Tensor, "batch"] | Int[Tensor, "batch k"] | str = "last",
    token_ids: Int[Tensor, "n_ids"] | None = None,
    *,
    rows: Int[Tensor, "batch"] | None = None,
    on_unembed: Callable[[Tensor, Tensor], None] | None = None,
) -> Float[Tensor, "batch ... vocab"]:
    """Logits at ``positions`` of each row of ``resid`` (the residual after the last block).

    Args:
        model: a HookedTransformer-like model (``cfg``, ``ln_final``, ``unembed``).
        resid: ``[batch, pos, d_model]`` residual stream after the last block (before ``ln_final``).
        positions: ``"last"``; a ``[batch]`` tensor (one read position per row); a ``[batch, k]``
            tensor (k positions per row); or, with ``rows``, a flat ``[n]`` list of (row, position)
            pairs.
        token_ids: only these vocabulary columns (e.g. the two answers of a patching pair).
        rows: row index per entry of a flat ``positions`` tensor.
        on_unembed: see :func:`final_logits`.

    Returns:
        ``[batch, vocab]`` for ``"last"`` or ``[batch]`` positions; ``[batch, k, vocab]`` for
        ``[batch, k]``; ``[n, vocab]`` with ``rows``. ``vocab`` is ``len(token_ids)`` when given.
    """
    B, T = resid.shape[0], resid.shape[1]
    if isinstance(positions, str):
        if positions != "last":
            raise ValueError(f"positions must be 'last' or a tensor, not {positions!r}")
        return final_logits(model, resid[:, T - 1, :], token_ids, on_unembed)
    positions = positions.to(resid.device)
    if rows is not None:
        return final_logits(model, resid[rows.to(resid.device), positions], token_ids, on_unembed)
    if positions.ndim == 1:
        return final_logits(model, resid[torch.arange(B, device=resid.device), positions], token_ids, on_unembed)
    k = positions.shape[1]
    r = torch.arange(B, device=resid.device).repeat_interleave(k)
    out = final_logits(model, resid[r, positions.reshape(-1)], token_ids, on_unembed)
    return out.reshape(B, k, -1)


# ============================================================================ what is scored, where it is read
@dataclasses.dataclass(frozen=True)
class Target:
    """One prompt resolved to tokens: what is scored and which positions read it.

    Saliency and lesioning both score ``log p(target tokens | preceding tokens)`` (teacher-forced) and
    build their targets with :func:`make_target`, so a prompt means the same thing to both.

    Attributes:
        text: the prompt as given (for a span prompt, the whole text).
        tokens: ``[T]`` context tokens (with the model's BOS rule) followed by the target tokens.
        n_context: number of context tokens; tokens ``n_context..T-1`` are scored.
        read_pos: the position whose next-token distribution lesioning compares (KL, top-1) and where
            greedy continuations start: the last context token for an answer or a span (the last
            token of the prompt, or of the item: always after the item), the last token for a plain
            string.
        target: the scored target as text (e.g. ``" aspirin"``).
    """

    text: str
    tokens: Int[Tensor, "T"]
    n_context: int
    read_pos: int
    target: str

    @property
    def predict_positions(self) -> list[int]:
        """Positions whose logits predict the target tokens (``n_context - 1 .. T - 2``)."""
        return list(range(self.n_context - 1, int(self.tokens.shape[0]) - 1))

    @property
    def target_ids(self) -> Int[Tensor, "n_target"]:
        """The scored token ids (``tokens[n_context:]``)."""
        return self.tokens[self.n_context :]

    @property
    def context(self) -> Int[Tensor, "n"]:
        """The tokens up to and including the read position (a continuation's prompt)."""
        return self.tokens[: self.read_pos + 1]

    def content_hash(self) -> dict[str, Any]:
        """What identifies this target's numbers (used by :func:`medinterp.store.fingerprint`)."""
        return {"tokens": self.tokens.tolist(), "n_context": self.n_context, "read_pos": self.read_pos,
                "text": self.text, "target": self.target}


class NothingAfterItem(MedinterpError):
    """A prompt ends on its item: there is no token after the item to score."""


#: the first word after an item, with the whitespace before it (``" today."``, ``"."``, ``", and"`` → ``","``)
_NEXT_WORD = re.compile(r"\s*\S+")


def tokens_of(model: Any, text: str, bos: bool) -> Int[Tensor, "T"]:
    """``text`` as 1-D token ids (BOS by the model's rule when ``bos``); empty text gives BOS or nothing.

    With ``bos`` the text is a whole prompt: under a chat template (:mod:`medinterp.models.chat`) it is
    wrapped first, and its leading BOS tokens are checked (exactly one where the model expects one).
    """
    if bos and text != "":
        toks = _raw_tokens(model, wrap_text(model, text)[0], bos=True)
        check_bos(model, toks.tolist(), f"prompt {clip(text)}")
        return toks
    return _raw_tokens(model, text, bos)


def _raw_tokens(model: Any, text: str, bos: bool) -> Int[Tensor, "T"]:
    """``text`` tokenized as given (no chat template), BOS by the model's rule when ``bos``."""
    if text == "":
        tok = getattr(model, "tokenizer", None)
        if bos and model.cfg.default_prepend_bos and tok is not None and tok.bos_token_id is not None:
            return torch.tensor([tok.bos_token_id], dtype=torch.long)
        return torch.zeros(0, dtype=torch.long)
    # truncate=False: TL cuts at n_ctx by default, which would hide a too-long prompt from _check_len
    # BOS by the model's rule (its default_prepend_bos), never forced: prepend_bos=True here gave SmolLM2, whose
    # rule is no BOS, a "<|im_start|>" in front of every saliency and lesion prompt (geometry and patching had none)
    kw = {} if bos else {"prepend_bos": False}
    return model.to_tokens(text, move_to_device=False, truncate=False, **kw)[0].cpu()


def _check_len(model: Any, tokens: Tensor, where: str) -> None:
    n_ctx = getattr(model.cfg, "n_ctx", None)
    if n_ctx is not None and tokens.shape[0] > n_ctx:
        raise MedinterpError(f"{where}: {tokens.shape[0]} tokens exceed the model's context of {n_ctx}")


def make_target(
    model: Any,
    text: str,
    answer: str | None = None,
    span: Sequence[int] | None = None,
    *,
    where: str = "prompt",
) -> Target:
    """THE constructor of a :class:`Target`: an answer, the item's own tokens, or a plain string's own LM loss.

    * ``answer`` given: the context is ``text``, the target ``answer`` (a space is put in front when
      neither ``text`` ends nor ``answer`` starts with whitespace, as sentencepiece tokenizers give a
      word with and without its leading space different tokens); read at the last context token.
    * ``span=(start, end)`` (character offsets of the item in ``text``): the context is the text up to
      and including the item, the target the first word *after* the item (with its leading whitespace
      and punctuation, e.g. ``" today."`` or ``"."``); read at the item's last token. A text that ends
      on its item has nothing after it to score: :class:`NothingAfterItem` is raised (the item's own
      tokens after a generic prefix would measure how predictable the name is, not what follows it).
    * neither: ``text``'s own tokens after the first are scored; read at its last token.

    Under a chat template (:func:`medinterp.models.chat.use_chat_template`) ``text`` is the user's turn:
    an answer (the same tokens as without the template, or its leading whitespace dropped under
    ``strip_answer_space``) follows the generation prompt, so it is read where the assistant's first token
    is produced; a span's next word stays inside the user's turn (the context is
    the wrapped text up to the item); a plain string is scored unwrapped. Leading BOS tokens are checked
    (:func:`medinterp.models.chat.check_bos`: one where the model expects one, never two).

    Raises:
        NothingAfterItem: a span that ends the text (only whitespace after the item).
        MedinterpError: empty answer, a span outside the text, a target that tokenizes to nothing, no
            context token to predict the first target token from, or too many tokens.
    """
    chat = chat_setting(model) is not None
    if answer is not None:
        if chat:  # read where the assistant's first token is produced: after the generation prompt
            return _with_answer(model, wrap_text(model, text)[0], answer_text(model, answer, after=text),
                                where=where, original=text, chat=True)
        return _with_answer(model, text, answer, where=where, original=text)
    if span is not None:
        try:
            start, end = int(span[0]), int(span[1])
        except (TypeError, ValueError, IndexError):
            raise MedinterpError(f"{where}: span {span!r} is not a (start, end) pair of character offsets") from None
        if not (0 <= start < end <= len(text)):
            raise MedinterpError(f"{where}: span ({start}, {end}) is outside the text of length {len(text)}")
        nxt = _NEXT_WORD.match(text[end:])
        if nxt is None:
            raise NothingAfterItem(
                f"{where}: the text ends on its item {clip(text[start:end])}, so nothing after the item can be "
                "scored; give the template an answer or a word after the item")
        if chat:  # the word after the item stays inside the user's turn: the wrapped text up to the item
            return _with_answer(model, wrap_prefix(model, text, end), nxt.group(0), where=where, original=text,
                                chat=True)
        return _with_answer(model, text[:end], nxt.group(0), where=where, original=text)
    # a plain string's own LM loss: its own tokens, never wrapped (template tokens are not its text)
    toks = _raw_tokens(model, text, bos=True)
    check_bos(model, toks.tolist(), where)
    if toks.shape[0] < 2:
        raise MedinterpError(f"{where} ({clip(text)}): needs at least 2 tokens to score its own text")
    _check_len(model, toks, where)
    return Target(text=text, tokens=toks, n_context=1, read_pos=int(toks.shape[0]) - 1, target=text)


def _with_answer(model: Any, text: str, target: str, *, where: str, original: str, chat: bool = False) -> Target:
    """``text`` (already wrapped when ``chat``) as context, ``target`` tokenized after it."""
    if not isinstance(target, str) or target.strip() == "":
        raise MedinterpError(f"{where}: the target answer is empty; expected a non-empty string")
    if not chat and text and not text[-1].isspace() and not target[0].isspace():
        target = " " + target
    ctx = _raw_tokens(model, text, bos=True)
    if text:
        check_bos(model, ctx.tolist(), where)
    tgt = _raw_tokens(model, target, bos=False)
    if tgt.shape[0] == 0:
        raise MedinterpError(f"{where}: target {clip(target)} tokenizes to no tokens")
    if ctx.shape[0] == 0:
        # No BOS and no context: the first target token has nothing to be predicted from.
        ctx, tgt = tgt[:1], tgt[1:]
        if tgt.shape[0] == 0:
            raise MedinterpError(
                f"{where}: target {clip(target)} is a single token at the start of the text and the model "
                "prepends no BOS, so nothing predicts it; give the prompt some context")
    tokens = torch.cat([ctx, tgt])
    _check_len(model, tokens, where)
    n = int(ctx.shape[0])
    return Target(text=original, tokens=tokens, n_context=n, read_pos=n - 1, target=target)
