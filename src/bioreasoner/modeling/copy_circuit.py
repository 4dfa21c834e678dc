"""A match-and-copy (induction) circuit written into a fresh Qwen2 before pre-training.

Why [D11]: the extractive references are mostly copied from the prompt (PMIDs, titles,
excerpt sentences), but a small model trained from random weights on 2 CPU cores does not
learn to copy in minutes (measured: 0 of 200 held-out PMIDs after 600 steps). Induction
heads are a known two-layer circuit, so we build it in the weights at initialisation and let
pre-training refine it, the way one initialises a layer to the identity instead of hoping it
is found. Everything stays a plain Qwen2 checkpoint: no custom code, no new modules.

The residual stream of width H is split into K-dimensional subspaces (the rest stays free for
what training learns): A = the token's own code, B1..Bn = the codes of the 1st..n-th previous
tokens, D = the copy output, F = "this position is inside the assistant's response".

- layer 0, heads 1..n: previous-token heads. Content-free: their queries and keys are biases
  on the high-frequency RoPE pairs, so the score peaks at relative offset o = 1..n; the value
  is A of the attended token, written into B_o.
- layer 1, head 0: the response flag. Its key is A . code(marker) on a low-frequency pair,
  so it attends to the role token of `<|im_start|>assistant` when one precedes the position,
  and writes 1 into F (0 when there is none: in the prompt).
- layer 2, head 0: the induction head. Query (A, B1, .., B(n-1)) of position i against key
  (B1, .., Bn) of position j on the low-frequency pairs (which RoPE barely rotates, so the
  match is content-only), minus a penalty on keys inside the response (F), so text is copied
  from the papers and the question, never from the model's own output (copying itself is
  how small models loop). The value is A of position j, i.e. the token that followed the
  matched n-gram, written into D, which the lm_head reads with the same codes.

Other heads and the MLPs start silent (zero output projections), so the circuit reads clean
codes at step 0; their input weights keep the random init and training grows them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import Qwen2ForCausalLM

LAYERS = 3  # previous-token heads, the response flag, the induction head


@dataclass(frozen=True)
class CircuitSpec:
    code_dim: int = 32  # K: dimension of each token code (codes of 4k tokens in 32 dims overlap ~0.18)
    ngram: int = 3  # the induction head matches this many tokens (3: loops on repeated bigrams vanish)
    prev_scale: float = 6.0  # previous-token head sharpness (99%+ of the mass on the target offset)
    prev_pairs: int = 6  # high-frequency RoPE pairs the previous-token heads use
    match_gain: float = 2.0  # induction score per matched token, before 1/sqrt(head_dim)
    flag_score: float = 14.0  # flag head: logit of the marker token over every other token
    response_penalty: float = 12.0  # induction logit taken off keys inside the response
    copy_gain: float = 1.0  # weight of the copied code in D
    noise: float = 0.02  # std of the free dimensions of embeddings and lm_head


def required_dims(spec: CircuitSpec) -> tuple[int, int]:
    """(hidden dims, low-frequency head dims) the circuit needs."""
    return (spec.ngram + 2) * spec.code_dim + 1, spec.ngram * spec.code_dim + 1


def low_frequency_pairs(config, head_dim: int, horizon: int) -> list[int]:
    """RoPE pairs m that rotate by less than 0.3 rad over `horizon` positions."""
    inv = rope_inverse_frequencies(config, head_dim)
    return [m for m in range(head_dim // 2) if float(inv[m]) * horizon < 0.3]


def rope_inverse_frequencies(config, head_dim: int) -> torch.Tensor:
    params = getattr(config, "rope_parameters", None) or {}
    theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))


def build_circuit(model: Qwen2ForCausalLM, marker_id: int, spec: CircuitSpec, seed: int) -> None:
    """Write the circuit into `model` in place (seeded; same seed, same bytes)."""
    cfg = model.config
    H, nh = cfg.hidden_size, cfg.num_attention_heads
    d = getattr(cfg, "head_dim", None) or H // nh
    K, n = spec.code_dim, spec.ngram
    need_h, need_low = required_dims(spec)
    groups = nh // cfg.num_key_value_heads
    if cfg.num_hidden_layers < LAYERS or nh < n + 1:
        raise ValueError(f"the copy circuit needs >= {LAYERS} layers and >= {n + 1} attention heads")
    if need_h > H:
        raise ValueError(f"the copy circuit needs hidden_size >= {need_h}, got {H}")
    low = [m for m in low_frequency_pairs(cfg, d, cfg.max_position_embeddings) if m >= spec.prev_pairs]
    low_dims = torch.tensor([m for m in low] + [m + d // 2 for m in low])
    if len(low_dims) < need_low:
        raise ValueError(
            f"the copy circuit needs {need_low} low-frequency head dims, rope_theta gives {len(low_dims)}: "
            "raise rope_theta or head_dim"
        )
    A = slice(0, K)
    B = [slice(i * K, (i + 1) * K) for i in range(1, n + 1)]
    D = slice((n + 1) * K, (n + 2) * K)
    F = (n + 2) * K  # one dimension
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randn(cfg.vocab_size, K, generator=gen)
    codes /= codes.norm(dim=1, keepdim=True)
    inv = rope_inverse_frequencies(cfg, d)
    eye = torch.eye(K)
    # RMSNorm rescales the residual to norm sqrt(H); with c unit codes present each keeps
    # norm sqrt(H / c). These are the read-out norms the gains below are divided by.
    norm_l0, norm_up = math.sqrt(H), math.sqrt(H / (n + 1))

    def head(layer: torch.nn.Module, h: int, k_dims: Sequence[int], v_dims: Sequence[int]) -> tuple[int, int]:
        """Clear query head h and the given key / value dims of its key-value head (the other
        dims keep their random init for the heads that share it: GQA); (q offset, kv offset)."""
        q0, kv0 = h * d, (h // groups) * d
        layer.q_proj.weight[q0 : q0 + d] = 0
        layer.q_proj.bias[q0 : q0 + d] = 0
        for proj, dims in ((layer.k_proj, k_dims), (layer.v_proj, v_dims)):
            rows = [kv0 + int(i) for i in dims]
            proj.weight[rows] = 0
            proj.bias[rows] = 0
        return q0, kv0

    with torch.no_grad():
        emb, lm = model.model.embed_tokens.weight, model.lm_head.weight
        for w in (emb, lm):
            w.normal_(0, spec.noise, generator=gen)
            w[:, : F + 1] = 0
        emb[:, A] = codes
        lm[:, D] = codes
        layers = [layer.self_attn for layer in model.model.layers]
        for layer in model.model.layers:
            layer.mlp.down_proj.weight.zero_()
        for attn in layers:
            attn.o_proj.weight.zero_()
        # layer 0: previous-token heads, offset o -> B_o (heads with one key-value head share its
        # keys and values: the keys are the same for every offset, only the queries differ)
        fast = [m for m in range(spec.prev_pairs)] + [m + d // 2 for m in range(spec.prev_pairs)]
        for o in range(1, n + 1):
            q0, kv0 = head(layers[0], o - 1, fast, range(K))
            for m in range(spec.prev_pairs):
                layers[0].q_proj.bias[q0 + m] = spec.prev_scale * math.cos(o * float(inv[m]))
                layers[0].q_proj.bias[q0 + m + d // 2] = -spec.prev_scale * math.sin(o * float(inv[m]))
                layers[0].k_proj.bias[kv0 + m] = spec.prev_scale
            layers[0].v_proj.weight[kv0 : kv0 + K, A] = eye
            layers[0].o_proj.weight[B[o - 1], q0 : q0 + K] = eye / norm_l0

        # layer 1, head 0: response flag -> F
        flag_dim = int(low_dims[n * K])  # the one low-frequency dim the match slots leave
        q0, kv0 = head(layers[1], 0, [flag_dim], [0])
        layers[1].k_proj.weight[kv0 + flag_dim, A] = codes[marker_id]
        layers[1].q_proj.bias[q0 + flag_dim] = spec.flag_score * math.sqrt(d) / norm_up
        layers[1].v_proj.weight[kv0, A] = codes[marker_id]
        layers[1].o_proj.weight[F, q0] = 1.0 / norm_up

        # layer 2, head 0: induction with the response penalty, copied code -> D
        match = low_dims[: n * K]
        q0, kv0 = head(layers[2], 0, [*match.tolist(), flag_dim], range(K))
        sources = [A] + B[:-1]
        for s in range(n):
            dims = match[s * K : (s + 1) * K]
            layers[2].q_proj.weight[q0 + dims, sources[s]] = spec.match_gain * eye
            layers[2].k_proj.weight[kv0 + dims, B[s]] = eye
        # F carries ~1 after the norm rescales it by ~sqrt(H / (n + 2)) ~ norm_up
        layers[2].k_proj.weight[kv0 + flag_dim, F] = 1.0
        layers[2].q_proj.bias[q0 + flag_dim] = -spec.response_penalty * math.sqrt(d) / norm_up
        layers[2].v_proj.weight[kv0 : kv0 + K, A] = eye
        layers[2].o_proj.weight[D, q0 : q0 + K] = spec.copy_gain * eye
