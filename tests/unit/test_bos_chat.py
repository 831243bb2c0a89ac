"""BOS policy and chat-template prompts (issue 23 item 5): one BOS where the model expects one, never two,
recorded in provenance; concept prompts wrapped as the user's turn with the item span and the answer
position located in the wrapped text.

The chat tests use a byte-level BPE tokenizer trained here on shipped concept prompts and saved with a
Jinja chat template to a tmp folder (as a downloaded instruct tokenizer is), on a 1-layer random model.
The known answers are the Hugging Face tokenizer's own: ``apply_chat_template(..., tokenize=True)`` (the
ids a chat user's model sees) and the item's text.
"""

from __future__ import annotations

import re

import pytest
import torch

from medinterp.concepts import PairSet, PromptPair, list_concepts, load_concepts
from medinterp.errors import MedinterpError
from medinterp.models.chat import bos_policy, use_chat_template, verify_bos, wrap_text
from medinterp.readout import make_target, tokens_of

GEMMA = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
         "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
NO_BOS = ("{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
          "{% if add_generation_prompt %}<start_of_turn>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def chat_tokenizer(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    corpus = [p.text for n in ("drugs", "symptoms") for p in load_concepts(n).prompts(templates=[0, 1])]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]
    tk.train_from_iterator(corpus + ["user model assistant\n"], trainers.BpeTrainer(
        vocab_size=800, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    # adds BOS itself, as Gemma's tokenizer does (TransformerLens then uses it as is)
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", tk.token_to_id("<bos>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   additional_special_tokens=["<start_of_turn>", "<end_of_turn>"])
    fast.chat_template = GEMMA
    folder = tmp_path_factory.mktemp("chat_tok")
    fast.save_pretrained(folder)
    return str(folder)


def _model(folder: str, prepend_bos: bool = True):
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.chat_template  # it survived the save, as in a downloaded instruct model's folder
    cfg = HookedTransformerConfig(n_layers=1, d_model=32, n_heads=2, d_head=16, d_mlp=64, n_ctx=256, d_vocab=len(tok),
                                  act_fn="gelu", normalization_type="LN", default_prepend_bos=prepend_bos,
                                  tokenizer_prepends_bos=True, seed=0, model_name="chat-tiny")
    torch.manual_seed(0)
    return HookedTransformer(cfg, tokenizer=tok, default_padding_side="right").eval()


def _hf_chat_ids(tok, text: str) -> list[int]:
    out = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=True, add_generation_prompt=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def _prompts(n: int = 6):
    ps = load_concepts("drugs").prompts(templates=[0, 1])
    return [ps[i] for i in range(0, len(ps), max(1, len(ps) // n))][:n]


def test_chat_template_wraps_prompt_item_span_and_answer(chat_tokenizer):
    from medinterp.activations import collect_activations

    m = use_chat_template(_model(chat_tokenizer))
    tok, bos = m.tokenizer, m.tokenizer.bos_token_id
    prompts = _prompts()
    for p in prompts:
        wrapped, span = wrap_text(m, p.text, p.span)
        # the template's text, its "<bos>" string left to the model (which prepends the token)
        assert wrapped == f"<start_of_turn>user\n{p.text.strip()}<end_of_turn>\n<start_of_turn>model\n"
        assert wrapped[span[0]:span[1]] == p.item
        ids = m.to_tokens(wrapped)[0].tolist()
        assert ids == _hf_chat_ids(tok, p.text)  # exactly what the chat model sees in use
        assert ids.count(bos) == 1 and ids[0] == bos
    acts = collect_activations(m, prompts, positions="span_mean", layers=[0], include_embed=False, progress=False)
    for p, text, pos in zip(prompts, acts.prompts, acts.token_positions):
        ids = m.to_tokens(text)[0]
        assert tok.decode(ids[pos]).strip() == p.item  # the item's own tokens inside the wrapped prompt
    assert acts.provenance["tokenization"]["chat_template"]["enabled"] is True
    assert acts.provenance["tokenization"]["measured_leading_bos"] == 1
    # an answer is read where the assistant's first token is produced, after the generation prompt
    p = prompts[0]
    t = make_target(m, p.text, answer="aspirin")
    chat_ids = _hf_chat_ids(tok, p.text)
    assert t.tokens[: t.n_context].tolist() == chat_ids and t.read_pos == len(chat_ids) - 1
    # the plain run's answer tokens (the space the plain rule puts in front), so both runs score the same tokens
    assert t.target == " aspirin" and t.tokens[t.n_context:].tolist() == tok(" aspirin", add_special_tokens=False)["input_ids"]
    assert tok.decode(t.tokens[: t.read_pos + 1]).endswith("<end_of_turn>\n<start_of_turn>model\n")
    # the word after the item stays inside the user's turn: the context is the wrapped text up to the item
    q = next(x for x in prompts if x.text[x.span[1]:].strip())
    t = make_target(m, q.text, span=q.span)
    ctx = tok.decode(t.tokens[1: t.n_context])
    assert ctx == f"<start_of_turn>user\n{q.text[:q.span[1]].strip()}"
    assert t.tokens.tolist().count(bos) == 1


@pytest.mark.parametrize("strip", [False, True])
def test_chat_template_pairs_are_tokenized_wrapped(chat_tokenizer, strip):
    m = use_chat_template(_model(chat_tokenizer), strip_answer_space=strip)
    tok = m.tokenizer
    pairs = PairSet(name="t", version="1", description="", pairs=[
        PromptPair("The patient takes aspirin", "The patient takes warfarin", " is", " of"),
        PromptPair("The patient takes aspirin for pain", "The patient takes warfarin for pain", " is", " of")])
    chk = pairs.check(m)
    assert len(chk.tokenized) == 2, chk.dropped
    for tp in chk.tokenized:
        assert tp.clean_tokens == _hf_chat_ids(tok, tp.pair.clean)
        assert tp.corrupted_tokens == _hf_chat_ids(tok, tp.pair.corrupted)
        # the plain run's answer token, or the reply's first word as written (no leading space)
        ans = tp.pair.clean_answer.strip() if strip else tp.pair.clean_answer
        assert tp.clean_id == tok(ans, add_special_tokens=False)["input_ids"][0]
        t = make_target(m, tp.pair.clean, answer=tp.pair.clean_answer)
        assert t.tokens.tolist() == tp.clean_tokens + [tp.clean_id]  # saliency/lesion read what patching reads


def test_template_without_bos_gets_none_and_off_restores(chat_tokenizer):
    m = _model(chat_tokenizer)
    m.tokenizer.chat_template = NO_BOS  # Qwen3 / gpt-oss style: the template has no BOS
    use_chat_template(m)
    text = "The patient takes aspirin"
    ids = tokens_of(m, text, bos=True).tolist()
    assert ids == _hf_chat_ids(m.tokenizer, text) and m.tokenizer.bos_token_id not in ids
    pol = bos_policy(m)
    assert pol["prepended_by"] == "none" and pol["expected"] is False and pol["measured_leading_bos"] == 0
    use_chat_template(m, False)
    assert m.cfg.default_prepend_bos is True and "chat_template" not in m.medinterp_info
    assert tokens_of(m, text, bos=True).tolist() == m.tokenizer(text)["input_ids"]


def test_template_bos_kept_in_text_where_the_model_prepends_none(chat_tokenizer):
    m = _model(chat_tokenizer, prepend_bos=False)  # SmolLM2 style: the model adds no BOS, its template starts with it
    use_chat_template(m)
    text = "The patient takes aspirin"
    ids = tokens_of(m, text, bos=True).tolist()
    assert ids == _hf_chat_ids(m.tokenizer, text) and ids.count(m.tokenizer.bos_token_id) == 1
    pol = bos_policy(m)
    assert pol["prepended_by"] == "chat template" and pol["measured_leading_bos"] == 1


def test_no_chat_template_is_a_clear_error():
    from medinterp.testing import tiny_model

    m = tiny_model(n_layers=1)
    with pytest.raises(MedinterpError, match="has no chat template"):
        use_chat_template(m)
    assert "chat_template" not in m.medinterp_info


def test_doubled_bos_is_an_error():
    from medinterp.activations import collect_activations
    from medinterp.testing import tiny_model

    m = tiny_model(n_layers=1)
    with pytest.raises(MedinterpError, match="2 BOS tokens"):
        make_target(m, "<bos> The patient takes", answer="aspirin")
    with pytest.raises(MedinterpError, match="would get two"):
        collect_activations(m, ["<bos> The patient takes aspirin"], progress=False)
    # the tokenizer adds BOS and TransformerLens is told it does not, so it prepends a second one
    m.cfg.tokenizer_prepends_bos = False
    assert m.to_tokens("aspirin")[0, :2].tolist() == [m.tokenizer.bos_token_id] * 2
    with pytest.raises(MedinterpError, match="expected exactly one"):
        verify_bos(m)


def test_bos_policy_in_provenance_and_chat_in_fingerprint(chat_tokenizer):
    from medinterp.results import make_provenance
    from medinterp.store import fingerprint, model_identity
    from medinterp.testing import tiny_model

    tiny = tiny_model(n_layers=1)
    pol = make_provenance(tiny, x=1)["tokenization"]
    assert pol["bos_token"] == "<bos>" and pol["bos_token_id"] == tiny.tokenizer.bos_token_id
    assert pol["prepended_by"] == "tokenizer (TransformerLens prepend_bos=True)" and pol["measured_leading_bos"] == 1
    assert pol["chat_template"] is None
    m = _model(chat_tokenizer)
    m.medinterp_info = {"spec": "chat-tiny", "n_layers": 1}
    plain = fingerprint({"job": 1}, model=m)
    assert "chat_template" not in model_identity(m)  # plain runs keep their fingerprints
    use_chat_template(m)
    assert fingerprint({"job": 1}, model=m) != plain
    assert make_provenance(m)["tokenization"]["chat_template"]["template_sha256"]
    use_chat_template(m, False)
    assert fingerprint({"job": 1}, model=m) == plain


def test_default_tokenization_of_shipped_prompts_unchanged():
    """No chat template: every shipped concept set's prompts tokenize as the tokenizer itself does (one BOS, which
    the tokenizer adds), their item spans cover the item's own tokens, and answers follow as before."""
    from medinterp.activations import token_positions
    from medinterp.testing import tiny_model

    m = tiny_model(n_layers=1)
    tok = m.tokenizer
    names = [d["name"] for d in list_concepts()]
    n_checked = 0
    for name in names:
        s = load_concepts(name)
        if isinstance(s, PairSet):
            ps = s.pairs[::7]
            for p in ps:
                t = make_target(m, p.clean, answer=p.clean_answer)
                assert t.tokens.tolist() == tok(p.clean + p.clean_answer)["input_ids"]
                n_checked += 1
            continue
        ps = s.prompts()[::97]
        texts, spans = [p.text for p in ps], [p.span for p in ps]
        pos, lengths, _ = token_positions(m, texts, spans, "span_mean")
        for p, idx, n in zip(ps, pos, lengths):
            ids = tok(p.text)["input_ids"]
            assert tokens_of(m, p.text, bos=True).tolist() == ids and n == len(ids) and ids.count(tok.bos_token_id) == 1
            item_ids = tok(p.item, add_special_tokens=False)["input_ids"]
            assert [ids[i] for i in idx] == item_ids, (name, p.text)
            n_checked += 1
    assert n_checked > 150


def test_cli_chat_template_option_reaches_load_model(monkeypatch, tmp_path):
    import medinterp as mi
    from medinterp.cli import _common, main

    seen = {}
    monkeypatch.setattr(mi, "load_model", lambda spec, **kw: seen.update(spec=spec, **kw) or (_ for _ in ()).throw(SystemExit(0)))
    with pytest.raises(SystemExit):
        main(["--chat-template", "lesion", "--model", "x", "--concepts", "drugs", "--out", "/nonexistent-dir-c23"])
    assert seen["chat_template"] is True
    seen.clear()
    with pytest.raises(SystemExit):
        main(["saliency", "--model", "x", "--concepts", "drugs", "--out", "/nonexistent-dir-c23"])
    assert "chat_template" not in seen  # a plain run calls load_model exactly as before
    for cmd in (["lesion", "--concepts", "drugs"], ["saliency", "--concepts", "drugs"], ["geometry", "--concepts", "drugs"],
                ["patch", "--pairs", "drug_pairs"], ["validate", "--family", "drugs", "--band", "1-2"],
                ["map", "--quick", "--out", str(tmp_path / "r.html")]):
        seen.clear()
        _common.model_options()
        out = [] if cmd[0] == "map" else ["--out", "/nonexistent-dir-c23"]
        with pytest.raises(SystemExit):  # after the command, as on `medinterp map --chat-template`
            main([*cmd, "--model", "x", "--chat-template", *out])
        assert seen.get("chat_template") is True, cmd
    _common.model_options()
    assert "chat_template" not in _common.LOAD_OPTIONS


def test_no_bos_where_the_model_prepends_none():
    """SmolLM2's rule is no BOS (default_prepend_bos=False): saliency's and lesion's targets used to get one anyway
    (``to_tokens(prepend_bos=True)``), unlike the same prompts in geometry and patching."""
    from medinterp.testing import tiny_model

    m = tiny_model(n_layers=1)
    m.cfg.default_prepend_bos = False
    tok = m.tokenizer
    t = make_target(m, "The patient takes", answer="aspirin")
    assert t.tokens.tolist() == tok("The patient takes aspirin", add_special_tokens=False)["input_ids"]
    assert tokens_of(m, "The patient takes", bos=True).tolist() == tok("The patient takes", add_special_tokens=False)["input_ids"]
    assert bos_policy(m)["prepended_by"] == "none" and bos_policy(m)["measured_leading_bos"] == 0
