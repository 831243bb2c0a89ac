"""Per family and model: subject token counts, answer priors, known pairs and the balance table of each
medical pair set against its control pair set (the data behind ``medinterp concepts check --family``).

Usage (from the repository root; loads Gemma 3 270M and SmolLM2-135M, ~1-2 min on 2 cores)::

    .venv/bin/python scripts/check_control_pairs.py [--family drugs ...] [--model gemma-3-270m ...]

Prints, for each family and model: the subject-token histogram of the valid and of the known pairs
(medicine vs control), the mean answer prior (log p(answer | BOS)), known / valid / all pair counts,
and the balance table (medicine mean, control mean, SMD, |SMD| > 0.25 flagged) over known pairs.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import medinterp as mi
from medinterp.concepts import CONCEPT_FAMILIES
from medinterp.concepts.checks import pair_balance


def _hist(pm, known_only):
    return " ".join(f"{k}:{v}" for k, v in pm.histogram("subject_tokens", known_only).items()) or "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", action="append", choices=list(CONCEPT_FAMILIES))
    ap.add_argument("--model", action="append")
    args = ap.parse_args()
    torch.manual_seed(0)
    fams = args.family or ["drugs", "diseases", "symptoms", "age", "progression", "dosage"]
    for spec in args.model or ["gemma-3-270m", "smollm2-135m"]:
        model = mi.load_model(spec)
        for f in fams:
            t = pair_balance(model, f, known_only=True)
            print(f"== {f} on {spec}")
            for lab, pm in (("medicine", t.medicine), ("control", t.control)):
                pr = pm.covariates["answer_prior"]
                print(f"  {lab:8s} {pm.name:26s} known {pm.n_known:3d} / valid {pm.n_valid:3d} / {pm.n_pairs:3d}; "
                      f"answer prior mean {np.nanmean(pr):6.2f} (known {np.nanmean(pr[pm.known]) if pm.n_known else np.nan:6.2f}); "
                      f"subject tokens valid [{_hist(pm, False)}] known [{_hist(pm, True)}]")
            for line in t.render().splitlines()[1:7]:
                print("  " + line)
            if t.matched is not None:
                print("  " + t.render().splitlines()[-2 if "after item" in t.render().splitlines()[-2] else -1])
        del model


if __name__ == "__main__":
    main()
