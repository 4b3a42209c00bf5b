"""A copy circuit set into the starter's weights before training, so it reads its context from the first step.

Why: a Llama of this size learns to copy from its context (an "induction head") only after far more
steps than a first run can afford on two cores — measured, no copying at all after 1,000 steps of a pure
copy task (docs/model-server.md). The circuit is ordinary weights of a standard ``LlamaForCausalLM``:
PEFT, the model server and ``from_pretrained`` see nothing special. Training then learns everything
else (which entry to read, when to say "I don't know", the FAQ by heart) and may refine the circuit's
neighbours, while the entries that make up the circuit stay fixed (:func:`freeze_hooks`).

How it reads, in two layers (``n`` heads of ``head_dim`` each; RoPE with a large ``rope_theta`` so the
low-frequency planes barely rotate over the whole context and can match content at any distance):

- token identity lives in the residual's first ``token_dims`` dimensions (random, nearly orthogonal
  embeddings); ``<|answer|>`` starts out with ``<|assistant|>``'s, so "what follows the start of an
  answer" in the block is "what follows the start of my answer";
- layer 0, heads 0-3 — *previous-token heads*: each attends to the token 1, 2, 3 or 4 places back
  (positional: a constant query and key whose RoPE phases line up at that distance) and writes a
  projection of that token into its own block ``P1``…``P4`` of the residual;
- layer 0, heads 4-5 — *counters*: attend equally to ``<|system|>`` and to every ``<|answer|>`` (head 4)
  or ``<|end|>`` (head 5) so far; what comes back from ``<|system|>`` is 1/(1+count). Their difference
  is highest in the first entry's answer, lower in the second's, lower still in the third's, and zero
  outside answers;
- layer 1, heads 0-3 — *induction heads*: head k matches the token k places back from here (``T`` for
  k=0, ``P_k`` else) with the token k+1 places back from there (``P_{k+1}``), plus a bonus from the
  counters, and copies that position's token. Four heads vote, so a 4-token context decides where one
  token alone is ambiguous (``3,000원`` vs ``30,000원``); the bonus keeps the copy inside the first
  entry's answer when a phrase occurs in several entries. The copy of the last answer token is the
  ``<|end|>`` the chat template puts after every answer, so the model stops where the answer stops.
- layer 1, heads 4-5, both MLPs and the rest of the residual are free for training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

PREVIOUS = 4  # previous-token heads in layer 0 (and induction heads in layer 1)
COUNTERS = 2  # counter heads in layer 0
WIRED_HEADS = PREVIOUS + COUNTERS
# Longest distance over which content must match, in tokens (the model's context length is 1,024).
REACH = 1024
# Largest rotation (radians) a "low-frequency" RoPE plane may turn over REACH tokens.
MAX_TURN = 0.3


@dataclass(frozen=True)
class CircuitScales:
    """Sizes of the wired weights, in terms of what they do (the gains follow from these in :func:`wire`)."""

    embedding_std: float = 0.02  # a token's random embedding, per dimension
    counter_ratio: float = 3.0  # a counter at its largest (1), relative to one token dimension
    match_logit: float = 40.0  # an induction head's attention logit on a matching token (about 0 elsewhere)
    first_entry_bonus: float = 5.0  # extra induction logit inside the first entry's answer
    sink_logit: float = 20.0  # induction logit on <|system|>/<|user|>: where a head with no match looks
    copy_ratio: float = 6.0  # what one induction head writes, relative to a token embedding's norm
    positional_margin: float = 12.0  # a previous-token head's logit on its token over any other within REACH
    marker_logit: float = 32.0  # a counter's attention logit on <|system|> and its marker (0 elsewhere)
    language_ratio: float = 3.0  # a token's script sign, relative to one token dimension
    recency_logit: float = 300.0  # the language head's positional logit (falls ~0.15·d² over d tokens back)
    word_logit: float = 8.0  # the language head's extra logit on a word (Hangul or Latin letters)
    final_gain: float = 10.0  # final RMSNorm weight, so a confident copy has a confident logit


@dataclass(frozen=True)
class Layout:
    """Where each part of the circuit lives in the residual stream and in a head."""

    hidden: int
    heads: int
    head_dim: int
    token_dims: int
    content: list[int]  # head dimensions used to match content (low-frequency RoPE planes)
    bonus: int  # head dimension of the counters' bonus (low-frequency)
    high: list[int]  # planes used by the previous-token heads (high-frequency)

    @property
    def width(self) -> int:
        return len(self.content)

    def block(self, k: int) -> slice:
        """Residual dimensions of P_k (k = 1..PREVIOUS)."""
        start = self.token_dims + (k - 1) * self.width
        return slice(start, start + self.width)

    @property
    def counter_dims(self) -> tuple[int, int]:
        base = self.token_dims + PREVIOUS * self.width
        return base, base + 1

    @property
    def used(self) -> int:
        """Residual dimensions the circuit uses (the rest are free)."""
        return self.token_dims + PREVIOUS * self.width + COUNTERS + 1

    @property
    def language_dims(self) -> tuple[int, int, int]:
        """Embedding flags of Hangul and of Latin letters; the recent words' script after layer 1 (+ Hangul)."""
        return self.token_dims - 2, self.token_dims - 1, self.used - 1


def inverse_frequencies(theta: float, head_dim: int) -> torch.Tensor:
    """RoPE's rotation per position of each plane (plane p turns dims p and p + head_dim/2), as transformers."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))


def layout_for(hidden: int, heads: int, head_dim: int, theta: float, token_dims: int) -> Layout:
    """The circuit's layout for a model shape; raises ValueError when the shape cannot hold it."""
    freqs = inverse_frequencies(theta, head_dim)
    half = head_dim // 2
    low = [p for p in range(half) if float(freqs[p]) * REACH <= MAX_TURN]
    high = [p for p in range(half) if float(freqs[p]) * REACH > MAX_TURN]
    if len(low) < 4 or not high:
        raise ValueError(f"rope_theta={theta:g} with head_dim={head_dim} leaves {len(low)} low-frequency planes")
    dims = [p for p in low] + [p + half for p in low]
    layout = Layout(hidden, heads, head_dim, token_dims, dims[:-1], dims[-1], high)
    if heads < WIRED_HEADS or layout.used > hidden:
        raise ValueError(
            f"the copy circuit needs {WIRED_HEADS} heads and {layout.used} residual dimensions; "
            f"the model has {heads} heads and {hidden}"
        )
    return layout


def positional_pair(layout: Layout, theta: float, offset: int, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A constant query and key whose RoPE scores peak, ``margin`` above any other, ``offset`` tokens back.

    In plane p, q = (a, 0) and k = a·(cos wθ, sin wθ) with θ = offset give q·R(-w·d)·k = a²·cos(w·(d - offset)):
    every high-frequency plane peaks at d = offset, and their sum nowhere else within REACH (checked).
    """
    freqs = inverse_frequencies(theta, layout.head_dim)
    half = layout.head_dim // 2
    q = torch.zeros(layout.head_dim, dtype=torch.float64)
    k = torch.zeros(layout.head_dim, dtype=torch.float64)
    for p in layout.high:
        angle = float(freqs[p]) * offset
        q[p] = 1.0
        k[p], k[p + half] = math.cos(angle), math.sin(angle)
    scores = positional_scores(layout, theta, q.float(), k.float())
    others = torch.cat([scores[:offset], scores[offset + 1 :]])
    gap = float(scores[offset] - others.max())
    if gap < 1e-3:
        raise ValueError(f"rope_theta={theta:g}, head_dim={layout.head_dim}: no plane tells {offset} tokens back apart")
    size = math.sqrt(margin / gap)
    return (q * size).float(), (k * size).float()


def positional_scores(layout: Layout, theta: float, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Attention logits of constant ``q``/``k`` at distances 0..REACH-1 (for checks)."""
    freqs = inverse_frequencies(theta, layout.head_dim).float()
    half = layout.head_dim // 2
    d = torch.arange(REACH, dtype=torch.float32)[:, None] * freqs[None, :]
    cos, sin = torch.cos(d), torch.sin(d)
    q1, q2, k1, k2 = q[:half], q[half:], k[:half], k[half:]
    return (cos * (q1 * k1 + q2 * k2) + sin * (q1 * k2 - q2 * k1)).sum(-1) / math.sqrt(layout.head_dim)


Frozen = list[tuple[torch.nn.Parameter, torch.Tensor]]  # (weight, mask of the entries training must not move)


@torch.no_grad()
def wire(
    model, tokenizer, *, token_dims: int, generator: torch.Generator, scales: CircuitScales = CircuitScales()
) -> Frozen:
    """Set the copy circuit into a freshly initialised ``model``; returns the entries that must stay as set."""
    config = model.config
    theta = float(config.rope_parameters["rope_theta"])
    layout = layout_for(config.hidden_size, config.num_attention_heads, config.head_dim, theta, token_dims)
    hd, hidden, width, T = layout.head_dim, layout.hidden, layout.width, slice(0, token_dims)
    ca, ce = layout.counter_dims
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|system|>", "<|user|>", "<|end|>", "<|assistant|>")}
    answer = tokenizer.convert_tokens_to_ids("<|answer|>")
    sigma = scales.embedding_std
    root = math.sqrt(hidden)  # |RMSNorm(x)| for any x: a unit direction of an embedding reads root there

    # The token dimensions: the first `width` hold each token's code (what is matched), the first `head_dim`
    # are what is copied; the chat markers own dimensions of their own. Axis-aligned, so that freezing a
    # slice of a weight (a mask, which AdamW respects) keeps training out of them.
    basis = torch.eye(token_dims)
    codes, copied = basis[:width], basis[:hd]
    end_dir, system_dir, user_dir, answer_dir = basis[width], basis[hd], basis[hd + 1], basis[hd + 2]
    hangul, latin, recent_language = layout.language_dims
    shared = torch.cat([basis[width + 1 : hd], basis[hd + 3 : hangul]])  # random parts of ordinary tokens
    vocab = model.get_input_embeddings().weight.shape[0]
    # Codes: a random unit vector per token in width-2 dimensions; <|answer|> and <|assistant|> each own one
    # of the last two. The induction queries read <|assistant|>'s as <|answer|>'s (`query_code`), so the
    # start of my answer matches the start of an entry's answer — and never an earlier answer of the chat.
    code = torch.zeros(vocab, width)
    code[:, : width - 2] = torch.randn(vocab, width - 2, generator=generator)
    code = code / code.norm(dim=1, keepdim=True)  # every code the same length: a match scores the same for all
    code[answer], code[ids["<|assistant|>"]] = 0, 0
    code[answer, width - 2] = code[ids["<|assistant|>"], width - 1] = 1.0
    query_code = torch.eye(width)
    query_code[width - 2, width - 2], query_code[width - 2, width - 1] = 0.0, 1.0
    size = sigma * math.sqrt(token_dims)  # a token embedding's norm
    rest = torch.randn(vocab, shared.shape[0], generator=generator) * sigma
    embedding = model.get_input_embeddings().weight
    embedding.zero_()
    embedding[:, T] = (code * sigma * math.sqrt(width)) @ codes + rest @ shared
    embedding[ids["<|system|>"], T] = size * system_dir
    embedding[ids["<|user|>"], T] = size * user_dir
    embedding[ids["<|end|>"], T] = size * end_dir
    for row in (ids["<|assistant|>"], answer):  # matched by their codes, counted by a direction of their own
        embedding[row, T] = (code[row] * sigma * math.sqrt(width)) @ codes + size * answer_dir
    signs = script_signs(tokenizer, vocab)
    embedding[:, hangul] = sigma * scales.language_ratio * (signs > 0).float()
    embedding[:, latin] = sigma * scales.language_ratio * (signs < 0).float()
    frozen: Frozen = []

    def own(param, *index):
        mask = torch.zeros_like(param, dtype=torch.bool)
        mask[index] = True
        frozen.append((param, mask))

    def rows(h: int) -> slice:
        return slice(h * hd, (h + 1) * hd)

    first, second = (layer.self_attn for layer in model.model.layers[:2])
    for attention, wired in ((first, WIRED_HEADS), (second, PREVIOUS)):
        for h in range(wired):
            for linear in (attention.q_proj, attention.k_proj, attention.v_proj):
                linear.weight[rows(h)] = 0
                linear.bias[rows(h)] = 0
                own(linear.weight, rows(h))
                own(linear.bias, rows(h))
            attention.o_proj.weight[:, rows(h)] = 0
            if attention is first:  # the induction heads' output (how loud a copy is) trains
                own(attention.o_proj.weight, slice(None), rows(h))
        for h in range(wired, layout.heads):  # the free heads start silent and grow as training needs them
            attention.o_proj.weight[:, rows(h)] = 0

    # Layer 0 sees one token: |RMSNorm(e)| = root, so its code reads root·sqrt(width/token_dims) in all.
    code_in = root * math.sqrt(width / token_dims)
    # Layer 1 sees the token plus P_1..P_4, each holding a code of the token's size.
    rms1 = sigma * math.sqrt((token_dims + PREVIOUS * width) / hidden)
    code_at_1 = sigma * math.sqrt(width) / rms1  # a code's length after layer 1's RMSNorm

    # Layer 0, heads 0-3: the code of the token k back, into P_k (the same size as in the token dimensions).
    for k in range(1, PREVIOUS + 1):
        h = k - 1
        q, key = positional_pair(layout, theta, k, scales.positional_margin)
        first.q_proj.bias[rows(h)] = q
        first.k_proj.bias[rows(h)] = key
        first.v_proj.weight[h * hd : h * hd + width, T] = codes
        gain = sigma * math.sqrt(width) / code_in
        first.o_proj.weight[layout.block(k), h * hd : h * hd + width] = gain * torch.eye(width)
    # Layer 0, heads 4-5: counters. Constant query; keys on <|system|> and the marker; value from <|system|>.
    counter_top = scales.counter_ratio * sigma
    marker_weight = scales.marker_logit * math.sqrt(hd) / root
    for h, marker, out in ((PREVIOUS, answer_dir, ca), (PREVIOUS + 1, end_dir, ce)):
        first.q_proj.bias[h * hd + layout.bonus] = 1.0
        first.k_proj.weight[h * hd + layout.bonus, T] = marker_weight * (system_dir + marker)
        first.v_proj.weight[h * hd, T] = system_dir
        first.o_proj.weight[out, h * hd] = counter_top / root
    # Layer 1, heads 0-3: induction. Head k matches (token k back here) with (token k+1 back there).
    match_weight = scales.match_logit * math.sqrt(hd) / code_at_1**2
    # In the first entry's answer the counters differ by half of counter_top.
    bonus_weight = scales.first_entry_bonus * math.sqrt(hd) / (0.5 * counter_top / rms1)
    sink_weight = scales.sink_logit * math.sqrt(hd) / (size / rms1)
    copy_weight = scales.copy_ratio * size / (sigma * math.sqrt(hd) / rms1)  # what is copied is ~σ·sqrt(hd) long
    for k in range(PREVIOUS):
        h = k
        for j, dim in enumerate(layout.content):
            if k == 0:
                second.q_proj.weight[h * hd + dim, T] = match_weight * (query_code[j] @ codes)
            else:
                block = layout.block(k)
                second.q_proj.weight[h * hd + dim, block] = match_weight * query_code[j]
            second.k_proj.weight[h * hd + dim, layout.block(k + 1).start + j] = 1.0
        second.q_proj.bias[h * hd + layout.bonus] = 1.0
        second.k_proj.weight[h * hd + layout.bonus, ce] = bonus_weight
        second.k_proj.weight[h * hd + layout.bonus, ca] = -bonus_weight
        second.k_proj.weight[h * hd + layout.bonus, T] = sink_weight * (system_dir + user_dir)
        second.v_proj.weight[rows(h), T] = copied
        second.o_proj.weight[T, rows(h)] = copy_weight * copied.T

    # Layer 1, head 4: the script of the last few words (the question's, where an answer starts), for the
    # "I don't know" answer's language. A constant query and key in two slow RoPE planes make the score fall
    # with distance (a recency window of a few tokens); words score above punctuation and chat markers.
    h = PREVIOUS
    for linear in (second.q_proj, second.k_proj, second.v_proj):
        linear.weight[rows(h)] = 0
        linear.bias[rows(h)] = 0
        own(linear.weight, rows(h))
        own(linear.bias, rows(h))
    second.o_proj.weight[:, rows(h)] = 0
    own(second.o_proj.weight, slice(None), rows(h))
    recent_q, recent_k = recency_pair(layout, theta, scales.recency_logit)
    second.q_proj.bias[rows(h)] = recent_q
    second.k_proj.bias[rows(h)] = recent_k
    flag_at_1 = sigma * scales.language_ratio / rms1  # a script flag after layer 1's RMSNorm
    second.q_proj.bias[h * hd + layout.bonus] = 1.0
    second.k_proj.weight[h * hd + layout.bonus, [hangul, latin]] = scales.word_logit * math.sqrt(hd) / flag_at_1
    second.v_proj.weight[h * hd, hangul] = 1.0
    second.v_proj.weight[h * hd, latin] = -1.0
    second.o_proj.weight[recent_language, h * hd] = sigma / flag_at_1

    # The MLPs start silent; layer 0's never writes into what layer 1's circuit reads: the copied token
    # dimensions, P_1..P_4 and the counters.
    for layer in model.model.layers:
        layer.mlp.down_proj.weight.zero_()
    circuit_dims = [*range(hd), hangul, latin, *range(token_dims, layout.used)]
    own(model.model.layers[0].mlp.down_proj.weight, circuit_dims)
    # Tokens keep their codes and copied parts (and markers their directions); the rest of the embedding learns.
    own(embedding, slice(None), [*range(hd + 3), hangul, latin, *range(token_dims, layout.used)])
    own(embedding, [*ids.values(), answer])
    for layer in model.model.layers[:2]:
        layer.input_layernorm.weight.fill_(1.0)
        own(layer.input_layernorm.weight, slice(None))
    model.model.norm.weight.fill_(scales.final_gain)
    return frozen


def recency_pair(layout: Layout, theta: float, logit: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A constant query and key whose score falls with distance d like ``logit``·cos(w·d): a recency window.

    The plane turning about 1/32 radian a token, scaled so the score drops ~10 over 8 tokens; the next
    slower plane keeps the window from coming back a period (~200 tokens) later.
    """
    freqs = inverse_frequencies(theta, layout.head_dim)
    window = min(range(layout.head_dim // 2), key=lambda p: abs(math.log(float(freqs[p]) * 32)))
    q = torch.zeros(layout.head_dim)
    k = torch.zeros(layout.head_dim)
    for p, share in ((window, 1.0), (window + 1, 0.3)):
        q[p] = k[p] = math.sqrt(share * logit * math.sqrt(layout.head_dim))
    return q, k


def script_signs(tokenizer, vocab: int) -> torch.Tensor:
    """Per token: +1 if its bytes hold a Hangul syllable's lead byte, -1 if Latin letters (and no Hangul), else 0."""
    byte_of = {char: byte for byte, char in _byte_level_alphabet().items()}
    signs = torch.zeros(vocab)
    for token_id, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(vocab)))):
        if token is None or token.startswith("<|"):
            continue
        raw = bytes(byte_of[char] for char in token if char in byte_of)
        if any(0xEA <= b <= 0xED for b in raw):  # U+AC00..U+D7A3 start with EA..ED in UTF-8
            signs[token_id] = 1.0
        elif any(chr(b).isascii() and chr(b).isalpha() for b in raw):
            signs[token_id] = -1.0
    return signs


def _byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte → printable character map, which byte-level BPE tokens are spelled in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {byte: chr(char) for byte, char in zip(printable, chars, strict=True)}


def freeze_hooks(frozen: Frozen) -> list:
    """Gradient hooks that zero the circuit's entries (AdamW then never moves them); returns the handles."""
    return [param.register_hook(lambda grad, mask=mask: grad.masked_fill(mask, 0.0)) for param, mask in frozen]
