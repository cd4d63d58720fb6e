"""Root pytest configuration: tests and notebooks run offline, quietly, and in fast mode."""

import os

os.environ.setdefault("E2LLM_FAST", "1")          # notebooks shrink their sizes for CI
os.environ.setdefault("HF_HUB_OFFLINE", "1")      # nothing may download from a model hub
os.environ.setdefault("TQDM_DISABLE", "1")        # progress bars would pollute compared outputs
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
