"""``decode.run_batch`` on a model with no margin to hide behind: batched = alone, token for token.

The tiny starter models answer from memory with wide margins, so a pad that leaked
into attention might not flip one of their tokens. An untrained Llama (ordinary
rotary base, grouped-query attention) picks among near-equal logits, so any
difference between a padded row and the same prompt alone shows (unmasked padding
does, measured).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from server.model_server.decode import Generation, Request, SamplingParams, run_batch


@pytest.fixture(scope="module")
def positional_model(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=10_000.0,
        max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config).eval(), tokenizer


def decode(model, tokenizer, prompts: list[list[int]], params: list[SamplingParams]) -> list[tuple]:
    outs = [Generation(len(p)) for p in prompts]
    run_batch(model, tokenizer, [Request(p, sp, o) for p, sp, o in zip(prompts, params, outs, strict=True)])
    return [(o.collect(), o.finish_reason, o.completion_tokens) for o in outs]


def test_padded_rows_decode_exactly_as_alone(positional_model):
    model, tokenizer = positional_model
    texts = ["Hello", "How long does standard delivery take?", "배송비는 얼마인가요?", "Can I return an item?" * 3]
    prompts = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    assert len({len(p) for p in prompts}) == len(prompts)  # every row padded by a different amount
    params = [
        SamplingParams(max_tokens=24, temperature=0),
        SamplingParams(max_tokens=7, temperature=0),
        SamplingParams(max_tokens=24, temperature=1.5, seed=3),
        SamplingParams(max_tokens=16, temperature=0.9, top_p=0.8, seed=4),
    ]
    alone = [decode(model, tokenizer, [p], [sp])[0] for p, sp in zip(prompts, params, strict=True)]
    assert decode(model, tokenizer, prompts, params) == alone
    assert decode(model, tokenizer, prompts[::-1], params[::-1]) == alone[::-1]
    assert alone[1][1:] == ("length", 7)
    assert all(tokens > 3 for _, _, tokens in alone), alone  # real answers, not an immediate end of turn
