"""Loading and saving models: one helper so every stage applies the same rules.

Safetensors only; `trust_remote_code` only when a param says so; `HF_HUB_OFFLINE=1` is
honoured by huggingface_hub itself (we log it so an offline failure is easy to read).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def load_tokenizer(name: str | Path, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(name), trust_remote_code=trust_remote_code)


def load_model(name: str | Path, *, trust_remote_code: bool = False, dtype: str = "float32") -> PreTrainedModel:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        log.info("HF_HUB_OFFLINE=1: loading %s from local files only", name)
    return AutoModelForCausalLM.from_pretrained(
        str(name), trust_remote_code=trust_remote_code, dtype=torch_dtype(dtype), use_safetensors=True
    )


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: str | Path) -> None:
    """save_pretrained as safetensors (sharded above 5 GB, the transformers default)."""
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
