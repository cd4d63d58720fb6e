"""Shared fixtures: the converted checkpoint, tokenizer and the single-process reference model."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest
import browser_beside

# the browser check runs beside the rest of the suite (tests/browser_beside.py)
pytest_collection_modifyitems = browser_beside.pytest_collection_modifyitems
pytest_sessionfinish = browser_beside.pytest_sessionfinish


@pytest.fixture(scope="session")
def folder():
    from e2llm_lite.model import checkpoint_dir

    return checkpoint_dir(progress=False)


@pytest.fixture(scope="session")
def tokenizer(folder):
    from e2llm_lite.model import load_tokenizer

    return load_tokenizer(folder)


@pytest.fixture(scope="session")
def full_model(folder):
    from e2llm_lite.model import load_full_model

    return load_full_model(folder)


@pytest.fixture(scope="session")
def haiku_ids(tokenizer):
    """A prompt whose greedy answer runs past 20 tokens before the end-of-turn token."""
    from e2llm_lite.model import chat_ids

    return chat_ids(tokenizer, "Write a haiku about distributed computing.")


@pytest.fixture(scope="session")
def reference_tokens(full_model, tokenizer, haiku_ids):
    from e2llm_lite.generation import reference_generate

    return reference_generate(full_model, haiku_ids, 20, [tokenizer.eos_token_id])
