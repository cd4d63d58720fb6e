"""How long does a device take to join a running cluster? A 3-device cluster starts with its
middle device absent; join() starts that device's worker, which pairs up with the driver and the
two live workers; then a pipeline through all three must give the tokens of the pipeline before.

    .venv/bin/python benchmarks/join_time.py            # worker forked from the zygote
    E2LLM_ZYGOTE=0 .venv/bin/python benchmarks/join_time.py   # a fresh interpreter
"""

import time

from e2llm_lite.devices import default_cluster
from e2llm_lite.model import chat_ids, checkpoint_dir, load_tokenizer
from e2llm_lite.runtime.driver import EmulatedCluster
from e2llm_lite.runtime.zygote import forking_enabled


def main() -> None:
    tok = load_tokenizer(checkpoint_dir(progress=False))
    ids = chat_ids(tok, "Write a haiku about distributed computing.")
    cl = default_cluster(3)
    first, late, last = cl.names
    with EmulatedCluster(cl, dilation=1.0, absent=[late]) as rt:
        before = rt.pipeline([(first, 0, 15), (last, 15, 30)])
        want = before.generate(ids, 8).tokens
        before.release()
        t0 = time.monotonic()
        rt.join(late)
        took = time.monotonic() - t0
        after = rt.pipeline([(first, 0, 10), (late, 10, 20), (last, 20, 30)])
        same = after.generate(ids, 8).tokens == want
    how = "forked from the zygote" if forking_enabled() else "a fresh interpreter"
    print(f"join (worker {how}): {took:.2f} s wall; the 3-stage pipeline through it gives the "
          f"same tokens: {same}")


if __name__ == "__main__":
    main()
