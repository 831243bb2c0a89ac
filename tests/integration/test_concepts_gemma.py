"""Concept library on the real Gemma 3 270M: tokenization of the shipped pairs, and that the model can use them.

Measured (Gemma 3 270M tokenizer, v1.0.0 data): every shipped pair set is 100% valid — diagnosis_pairs
34/34, dosage 42/42, drug_pairs 60/60, symptom_pairs 38/38, age_pairs 24/24, progression_pairs 22/22.
On diagnosis_pairs the model prefers the right one of the two answers in 31/34 clean and 31/34
corrupted prompts. Same measure (LD_clean > 0 / LD_corrupted < 0) on the other sets, for the record
(not asserted): symptom_pairs 95%/95%, drug_pairs 87%/93%, dosage 48%/60%, progression_pairs 41%/55%,
age_pairs 33%/96% (the model nearly always prefers the adult-side answer).
"""

from __future__ import annotations

import pytest
import torch

from medinterp.concepts import CONCEPT_FAMILIES, PairSet, load_concepts

pytestmark = pytest.mark.integration

PAIR_SETS = sorted({f["pairs"] for f in CONCEPT_FAMILIES.values()})


def test_shipped_pairs_tokenize_for_gemma(gemma):
    for name in PAIR_SETS:
        ps = load_concepts(name)
        chk = ps.check(gemma)
        print(chk.report())
        assert chk.n_valid + chk.n_dropped == len(ps)
        assert chk.fraction_valid >= 0.8, chk.report()
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


@torch.no_grad()
def test_gemma_prefers_the_right_diagnosis(gemma):
    """Patching needs LD(clean) > 0 > LD(corrupted) for most pairs; measured 31/34 each way."""
    chk = load_concepts("diagnosis_pairs").check(gemma)
    clean = gemma.to_tokens([p.clean for p in chk.valid])  # equal lengths: no padding needed
    corr = gemma.to_tokens([p.corrupted for p in chk.valid])
    ids = torch.tensor(chk.answer_ids)
    lc, lk = gemma(clean)[:, -1], gemma(corr)[:, -1]
    rows = torch.arange(len(ids))
    ld_clean = lc[rows, ids[:, 0]] - lc[rows, ids[:, 1]]
    ld_corr = lk[rows, ids[:, 0]] - lk[rows, ids[:, 1]]
    frac_c, frac_k = (ld_clean > 0).float().mean().item(), (ld_corr < 0).float().mean().item()
    print(f"diagnosis_pairs: LD_clean > 0 in {frac_c:.0%}, LD_corrupted < 0 in {frac_k:.0%} of {len(ids)}")
    assert frac_c >= 0.7 and frac_k >= 0.7
