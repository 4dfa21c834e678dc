"""The embedded default base model: a byte-level BPE tokenizer trained on the training
papers and a small Qwen2-architecture model initialised from a seed. Nothing is downloaded.

The chat format is Qwen2's (`<|im_start|>role\\n...<|im_end|>`), so prompts and stages
written for the tiny model run unchanged on a real Qwen2.5 / Qwen3 checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from bioreasoner.modeling.copy_circuit import CircuitSpec, build_circuit

EOS, IM_START, IM_END, PAD = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"
ASSISTANT = "assistant"  # the role token after <|im_start|>: the copy circuit's response marker
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SPECIAL = [EOS, IM_START, IM_END, PAD]

# Qwen2-style template. The {% generation %} markers let TRL build assistant-only masks
# (`assistant_only_loss`); the loss must never see prompt tokens [D4].
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def render_chat(messages: list[dict[str, str]]) -> str:
    """The text CHAT_TEMPLATE renders for a whole conversation (without a tokenizer)."""
    return "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)


# Numbers are split into digit pairs before BPE ("24450673" -> 24|45|06|73), and all 100 pairs
# are in the vocabulary: a PMID is 4 tokens whose trigrams are unique among the PMIDs of one
# prompt, which is what the copy circuit matches on [D11]. (BPE alone merges digits by
# frequency: 24|4|50|67|3, a different split for every number.)
DIGIT_PAIRS = [f"{i:02d}" for i in range(100)]


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\d{1,2}"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    texts = [*texts, *[" ".join(DIGIT_PAIRS)] * min_frequency]  # every pair reaches min_frequency
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # <think> tags are single tokens but not "special": decoding with
    # skip_special_tokens=True must keep them, since parsers and rewards read them.
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in (THINK_OPEN, THINK_CLOSE)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD,
        unk_token=None,
        additional_special_tokens=[EOS, IM_START],
        padding_side="left",
        model_max_length=2048,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(
    tokenizer: PreTrainedTokenizerFast, arch: dict[str, Any], seed: int, circuit: CircuitSpec | None = None
) -> Qwen2ForCausalLM:
    """A seeded Qwen2; with `circuit`, the copy circuit is written into it [D11]."""
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.pad_token_id,
        **arch,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    if circuit is not None:
        build_circuit(model, tokenizer.convert_tokens_to_ids(ASSISTANT), circuit, seed)
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(EOS)],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,
        temperature=0.7,
        top_p=0.95,
        max_new_tokens=256,
    )
    return model
