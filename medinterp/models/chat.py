"""How a prompt's text becomes the model's tokens: the BOS policy, and prompts wrapped in the chat template.

**BOS.** A model expects one beginning-of-sequence token or none. medinterp never adds one itself: the
model's tokenization (``model.to_tokens``, TransformerLens's ``prepend_bos`` rule) does, and
:func:`bos_policy` records who prepends it, its token and id in every result's provenance. A doubled BOS
(a text that already starts with the BOS string, or a tokenizer that adds one while TransformerLens
prepends another) changes every number silently, so it is an error here (:func:`check_bos`,
:func:`verify_bos`), never a warning.

**Chat template** (``load_model(..., chat_template=True)``, :func:`use_chat_template`). The paper's seed
checkpoints are instruct models used through their chat template. With the option on, every concept
prompt is the user turn of a one-turn conversation rendered by ``tokenizer.apply_chat_template`` with
the generation prompt added (and ``enable_thinking=False``, so a Qwen3 template opens the answer
directly). The item's character span is moved into the wrapped text, so its tokens are the item's; an
answer is read where the assistant's first token would be produced (after the generation prompt). The
answer's tokens are those of the plain run (a pair's ``" angina"`` keeps its leading space), so a chat
run and a plain run score the same tokens and every shipped pair stays a single-token pair (SmolLM2: all
230; with ``strip_answer_space=True``, the reply's first word as a chat model writes it, 51 of the 184
drug, diagnosis, symptom and dosage pairs). BOS then follows the template: a template that starts with the BOS string
has exactly one (the model prepends it and the string is removed from the text, or, for a model that
prepends none, the text keeps it); a template without one gets none. The setting is recorded in
``model.medinterp_info["chat_template"]``, so provenance and every job fingerprint tell chat runs from
plain ones.

Example:
    >>> from medinterp.testing import tiny_model
    >>> m = tiny_model(n_layers=1)
    >>> p = bos_policy(m)
    >>> p["bos_token"], p["prepended_by"], p["measured_leading_bos"], p["chat_template"]
    ('<bos>', 'tokenizer (TransformerLens prepend_bos=True)', 1, None)
    >>> wrap_text(m, "a patient with angina", (15, 21))   # no chat template: unchanged
    ('a patient with angina', (15, 21))
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

from medinterp.errors import MedinterpError, clip

#: key of :attr:`model.medinterp_info` that holds the chat-template setting (absent: plain prompts)
CHAT_KEY = "chat_template"
#: stands for the user's text when the template is rendered once to describe it
_PROBE = "\x00medinterp-probe\x00"


def _tokenizer(model: Any) -> Any:
    return getattr(model, "tokenizer", None)


def _name(model: Any) -> str:
    info = getattr(model, "medinterp_info", None) or {}
    return str(info.get("spec") or getattr(getattr(model, "cfg", None), "model_name", None) or "the model")


def chat_setting(model: Any) -> dict | None:
    """The model's chat-template setting (see :func:`use_chat_template`), or None for plain prompts."""
    info = getattr(model, "medinterp_info", None)
    s = info.get(CHAT_KEY) if isinstance(info, dict) else None
    return s if isinstance(s, dict) and s.get("enabled") else None


# ============================================================================ BOS
def leading_bos(model: Any, ids: Sequence[int]) -> int:
    """How many of ``ids``' first tokens are the tokenizer's BOS id (0 when it has none)."""
    bos = getattr(_tokenizer(model), "bos_token_id", None)
    if bos is None:
        return 0
    n = 0
    for t in ids:
        if int(t) != int(bos):
            break
        n += 1
    return n


def bos_expected(model: Any) -> bool:
    """Whether the model's prompts start with one BOS token: the model prepends it (TransformerLens
    ``default_prepend_bos``), or, with a chat template, the template's text starts with it."""
    s = chat_setting(model)
    if s is not None and s.get("bos_in_text"):
        return True
    cfg = getattr(model, "cfg", None)
    return bool(getattr(cfg, "default_prepend_bos", False)) and getattr(_tokenizer(model), "bos_token_id", None) is not None


def check_bos(model: Any, ids: Sequence[int], where: str) -> None:
    """Exactly one leading BOS where the model expects one, never two.

    Raises:
        MedinterpError: two or more leading BOS tokens (the text starts with the BOS string and the
            model prepends another), or none where the model expects one.
    """
    n = leading_bos(model, ids)
    tok = _tokenizer(model)
    if n > 1:
        raise MedinterpError(
            f"{where}: starts with {n} BOS tokens ({getattr(tok, 'bos_token', None)!r}, id "
            f"{getattr(tok, 'bos_token_id', None)}); expected exactly one. The text itself begins with the BOS "
            "string while the model prepends one: remove it from the text")
    if n == 0 and bos_expected(model) and len(ids) > 0:
        raise MedinterpError(
            f"{where}: has no BOS token ({getattr(tok, 'bos_token', None)!r}); {_name(model)} expects one "
            f"(default_prepend_bos={getattr(model.cfg, 'default_prepend_bos', None)})")


def bos_policy(model: Any) -> dict[str, Any]:
    """Who puts the BOS token in front of a prompt, which token, and how many a prompt gets (measured).

    Recorded in every result's provenance (:func:`medinterp.results.make_provenance`, key ``tokenization``).

    Returns:
        ``bos_token``, ``bos_token_id``, ``expected`` (:func:`bos_expected`), ``prepended_by`` (``"tokenizer
        (TransformerLens prepend_bos=True)"``, ``"TransformerLens (prepend_bos=True)"``, ``"chat template"``
        or ``"none"``), ``default_prepend_bos``, ``tokenizer_prepends_bos``, ``measured_leading_bos`` (BOS
        tokens in front of a short prompt tokenized as medinterp does; None where it cannot be measured)
        and ``chat_template`` (the setting, or None).
    """
    tok, cfg = _tokenizer(model), getattr(model, "cfg", None)
    prepend = getattr(cfg, "default_prepend_bos", None)
    tok_adds = getattr(cfg, "tokenizer_prepends_bos", None)
    s = chat_setting(model)
    if s is not None and s.get("bos_in_text"):
        by = "chat template"
    elif prepend and getattr(tok, "bos_token_id", None) is not None:
        by = "tokenizer (TransformerLens prepend_bos=True)" if tok_adds else "TransformerLens (prepend_bos=True)"
    else:
        by = "none"
    measured = None
    if tok is not None and hasattr(model, "to_tokens"):
        try:
            text, _ = wrap_text(model, "a")
            measured = leading_bos(model, model.to_tokens(text, move_to_device=False)[0].tolist())
        except Exception:  # a stub tokenizer: the policy is still recorded, the count is not
            measured = None
    bos_id = getattr(tok, "bos_token_id", None)
    return {"bos_token": getattr(tok, "bos_token", None), "bos_token_id": None if bos_id is None else int(bos_id),
            "expected": bos_expected(model), "prepended_by": by,
            "default_prepend_bos": None if prepend is None else bool(prepend),
            "tokenizer_prepends_bos": None if tok_adds is None else bool(tok_adds),
            "measured_leading_bos": measured, "chat_template": dict(s) if s is not None else None}


def verify_bos(model: Any) -> dict[str, Any]:
    """:func:`bos_policy`, raising where a short prompt gets two BOS tokens or none that is expected."""
    p = bos_policy(model)
    n = p["measured_leading_bos"]
    if n is not None and (n > 1 or (n == 0 and p["expected"])):
        raise MedinterpError(
            f"{_name(model)}: a prompt tokenizes with {n} BOS tokens ({p['bos_token']!r}, id {p['bos_token_id']}; "
            f"default_prepend_bos={p['default_prepend_bos']}, tokenizer_prepends_bos={p['tokenizer_prepends_bos']}); "
            f"expected {'exactly one' if p['expected'] else 'none'}: the tokenizer and TransformerLens both add "
            "one, or neither does")
    return p


# ============================================================================ chat template
def _render(tok: Any, text: str, thinking: bool) -> str:
    kw = {} if thinking else {"enable_thinking": False}  # templates that do not know it ignore it
    out = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True, **kw)
    if not isinstance(out, str):
        raise MedinterpError(f"chat template rendered {type(out).__name__}, expected text")
    return out


def _basic_info(model: Any) -> dict[str, Any]:
    """:func:`medinterp.models.loader.model_info`'s record of a model that :func:`load_model` did not load
    (repeated here: the loader imports this module)."""
    from medinterp.models.backends import capabilities

    cfg, caps = model.cfg, capabilities(model)
    return {"spec": None, "model_name": getattr(cfg, "model_name", None), "source": {"kind": "unknown"},
            "backend": caps.backend, "capabilities": caps.to_dict(), "n_layers": cfg.n_layers, "d_model": cfg.d_model,
            "n_heads": cfg.n_heads, "d_vocab": cfg.d_vocab, "architecture": getattr(cfg, "original_architecture", None),
            "dtype": str(getattr(cfg, "dtype", "")).replace("torch.", ""),
            "normalization_type": getattr(cfg, "normalization_type", None)}


def use_chat_template(model: Any, enabled: bool = True, *, thinking: bool = False,
                      strip_answer_space: bool = False) -> Any:
    """Turn chat-template wrapping of prompts on (or off again) for ``model``; returns the model.

    On: checks that the tokenizer has a chat template, renders it once to learn whether it starts with
    the BOS string, sets ``model.cfg.default_prepend_bos`` so that a wrapped prompt has exactly the
    template's BOS (one or none), and records the setting in ``model.medinterp_info["chat_template"]``
    (template sha256, generation prompt, the text before and after the user's turn, BOS handling), which
    enters provenance and every job fingerprint. Off: restores the model's own BOS rule and removes it.

    Args:
        model: a model from :func:`medinterp.load_model` (or any TransformerLens model with a tokenizer).
        enabled: on or off.
        thinking: leave the template's thinking switch at its default (Qwen3: the answer opens with a
            ``<think>`` block); False (the default) renders with ``enable_thinking=False``.
        strip_answer_space: score an answer without its leading whitespace (``"angina"``, the reply's
            first word as a chat model writes it; many answers then take several tokens, and such pairs
            are dropped). False (the default): the plain run's answer tokens (``" angina"``).

    Raises:
        MedinterpError: the tokenizer has no chat template, or the template does not contain the prompt's
            text as it was given (then an item's span cannot be located in the wrapped text).
    """
    info = getattr(model, "medinterp_info", None)
    if not isinstance(info, dict):  # a model built by hand: what loader.model_info records for one, then the setting
        info = model.medinterp_info = _basic_info(model)
    old = chat_setting(model)
    if not enabled:
        if old is not None:
            model.cfg.default_prepend_bos = bool(old["plain_prepend_bos"])
            if "default_prepend_bos" in info:
                info["default_prepend_bos"] = model.cfg.default_prepend_bos
        info.pop(CHAT_KEY, None)
        return model
    if old is not None:
        use_chat_template(model, False)
    tok = _tokenizer(model)
    template = getattr(tok, "chat_template", None) if tok is not None else None
    if not template:
        raise MedinterpError(
            f"chat_template=True: the tokenizer of {_name(model)} has no chat template (tokenizer.chat_template is "
            "empty); expected an instruct/chat model's tokenizer (e.g. gemma-3-27b-it, Llama-3.3-70B-Instruct), or "
            "leave the option off for a base model")
    if not isinstance(template, str):  # several named templates: the default one is what chat use renders
        template = dict(template).get("default") or next(iter(dict(template).values()))
    rendered = _render(tok, _PROBE, thinking)
    if rendered.count(_PROBE) != 1:
        raise MedinterpError(f"chat template of {_name(model)}: the user's text appears {rendered.count(_PROBE)} "
                             "times in the rendered conversation; expected once")
    before, after = rendered.split(_PROBE)
    bos = getattr(tok, "bos_token", None)
    starts_bos = bool(bos) and before.startswith(bos)
    plain = bool(model.cfg.default_prepend_bos)
    # The model prepends the template's BOS where it would anyway (the string leaves the text); a model that
    # prepends none keeps the template's own; a template without one gets none (Qwen3, gpt-oss).
    model.cfg.default_prepend_bos = starts_bos and plain
    info[CHAT_KEY] = {
        "enabled": True,
        "template_sha256": hashlib.sha256(template.encode()).hexdigest()[:16],
        "add_generation_prompt": True,
        "enable_thinking": bool(thinking),
        "strip_answer_space": bool(strip_answer_space),
        "before_user_text": before,
        "after_user_text": after,
        "template_bos": starts_bos,
        "bos_in_text": starts_bos and not plain,
        "plain_prepend_bos": plain,
    }
    if "default_prepend_bos" in info:  # load_model's record of the rule, now the template's
        info["default_prepend_bos"] = model.cfg.default_prepend_bos
    verify_bos(model)
    return model


def finish_load(model: Any, *, chat_template: bool = False) -> Any:
    """What :func:`medinterp.load_model` does last: the BOS check (:func:`verify_bos`) and the chat setting."""
    if chat_template:
        return use_chat_template(model)
    verify_bos(model)
    return model


def same_chat_setting(source: Any, model: Any) -> Any:
    """Give ``model`` (a random-init twin) the chat setting of ``source``; returns ``model``."""
    s = chat_setting(source)
    if s is None:
        return model
    return use_chat_template(model, thinking=bool(s.get("enable_thinking")),
                             strip_answer_space=bool(s.get("strip_answer_space")))


def _wrap(model: Any, s: dict, text: str) -> tuple[str, int]:
    """``(wrapped, shift)``: character ``c`` of the stripped text is at ``c + shift`` in ``wrapped``."""
    out = _render(_tokenizer(model), text, bool(s.get("enable_thinking")))
    core = text.strip()
    pos = out.rfind(core) if core else -1
    if pos < 0:
        raise MedinterpError(f"prompt {clip(text)}: the chat template of {_name(model)} does not contain the text as "
                             "given, so the item cannot be located in the wrapped prompt")
    shift = pos - (len(text) - len(text.lstrip()))
    bos = getattr(_tokenizer(model), "bos_token", None)
    if s.get("template_bos") and not s.get("bos_in_text") and bos and out.startswith(bos):
        out, shift = out[len(bos):], shift - len(bos)  # the model prepends it: one BOS, not two
    return out, shift


def wrap_text(model: Any, text: str, span: Sequence[int] | None = None) -> tuple[str, tuple[int, int] | None]:
    """``text`` as the model reads it, and the item's ``span`` moved into it.

    Without a chat template: both unchanged. With one: the rendered one-turn conversation ending in the
    generation prompt (a template's leading BOS string removed where the model prepends the BOS), and
    the span's character offsets in it, so ``wrapped[a:b] == text[span[0]:span[1]]``.

    Raises:
        MedinterpError: the template does not contain the text as given.
    """
    s = chat_setting(model)
    sp = None if span is None else (int(span[0]), int(span[1]))
    if s is None:
        return text, sp
    out, shift = _wrap(model, s, text)
    return out, None if sp is None else (sp[0] + shift, sp[1] + shift)


def wrap_prefix(model: Any, text: str, end: int) -> str:
    """The wrapped text up to the original character ``end`` (the context of a word after the item)."""
    s = chat_setting(model)
    if s is None:
        return text[:end]
    out, shift = _wrap(model, s, text)
    return out[: end + shift]


def answer_text(model: Any, answer: str, after: str | None = None) -> str:
    """An answer as it is scored after the generation prompt: its leading whitespace dropped where the chat
    setting says ``strip_answer_space``; else as the plain run scores it after ``after`` (the prompt as given:
    a space is put in front where neither ends nor starts with whitespace, :func:`medinterp.readout.make_target`'s
    rule). Unchanged without a chat template."""
    s = chat_setting(model)
    if s is None or not answer.strip():
        return answer
    if s.get("strip_answer_space"):
        return answer.lstrip()
    if after and not after[-1].isspace() and not answer[0].isspace():
        return " " + answer
    return answer


def wrap_prompts(model: Any, texts: Sequence[str], spans: Sequence[Sequence[int] | None]
                 ) -> tuple[list[str], list[tuple[int, int] | None]]:
    """:func:`wrap_text` over prompts, each checked for a doubled BOS (a text starting with the BOS string
    where the model prepends one)."""
    out_t, out_s = [], []
    tok = _tokenizer(model)
    bos = getattr(tok, "bos_token", None)
    prepends = bool(getattr(getattr(model, "cfg", None), "default_prepend_bos", False))
    for i, (t, sp) in enumerate(zip(texts, spans)):
        w, ws = wrap_text(model, t, sp)
        if prepends and bos and w.startswith(bos):
            raise MedinterpError(f"prompt {i} ({clip(t)}): starts with the BOS string {bos!r} and {_name(model)} "
                                 "prepends a BOS token, so it would get two; remove it from the text")
        out_t.append(w)
        out_s.append(ws)
    return out_t, out_s


__all__ = ["CHAT_KEY", "answer_text", "bos_expected", "bos_policy", "chat_setting", "check_bos", "finish_load",
           "leading_bos", "same_chat_setting", "use_chat_template", "verify_bos", "wrap_prefix", "wrap_prompts", "wrap_text"]
