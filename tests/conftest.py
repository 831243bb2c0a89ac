"""Shared fixtures: tiny random-init models (fast) and the real Gemma 3 270M (integration)."""

from __future__ import annotations

import os

import pytest

# Integration tests must never reach the network: the loader works offline by itself, and these make
# any accidental hub call fail loudly instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def tiny():
    """A 3-layer random-init HookedTransformer with a word-level tokenizer."""
    from medinterp.testing import tiny_model

    return tiny_model(n_layers=3, d_model=64, n_heads=4, d_mlp=128, seed=0)


@pytest.fixture(scope="session")
def gemma():
    """The real Gemma 3 270M (offline, float32, no processing), loaded once per test session."""
    import medinterp as mi

    return mi.load_model("gemma-3-270m")


def pytest_collection_modifyitems(config, items):
    # Anything using the `gemma` fixture is an integration test, marked or not.
    for item in items:
        if "gemma" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)
