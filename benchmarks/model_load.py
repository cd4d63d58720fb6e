"""Time the first load (GGUF -> cached fp32 checkpoint) and a cached load, with peak RSS.

Each measurement runs in a fresh subprocess so its peak RSS (ru_maxrss) is its own.
The first load converts into a temporary cache folder, so your real cache is untouched.

    .venv/bin/python benchmarks/model_load.py
"""

import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, time, sys
t0 = time.perf_counter()
from e2llm_lite.model import checkpoint_dir, load_tokenizer
from e2llm_lite.stage import load_stages
t1 = time.perf_counter()
folder = checkpoint_dir(progress=False)
t2 = time.perf_counter()
tok = load_tokenizer(folder)
stages = load_stages([(0, 30)], folder)
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "checkpoint_s": t2 - t1, "tokenizer_and_weights_s": t3 - t2,
                  "total_s": t3 - t0,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(cache: str) -> dict:
    env = dict(os.environ, E2LLM_CACHE=cache, HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                         timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        first = run(cache)
        cached = run(cache)
    for name, r in (("first load (conversion)", first), ("cached load", cached)):
        print(f"{name:24s} total {r['total_s']:5.1f} s  (import {r['import_s']:.1f} s, "
              f"checkpoint {r['checkpoint_s']:.1f} s, tokenizer+weights {r['tokenizer_and_weights_s']:.1f} s)"
              f"  peak RSS {r['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
