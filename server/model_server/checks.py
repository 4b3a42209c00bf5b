"""Proving that a model answers, and answers as before: probes, fingerprints, attaching an adapter.

An adapter becomes selectable only after :func:`attach` put it on a model and a
short greedy generation ran with it. Each model keeps a *fingerprint* per
adapter (and one for the base, key ``None``): the logits of a fixed probe prompt.
After anything went wrong, :func:`verify` switches to each of them in turn and
compares, so "the base and the other adapters answer exactly as before" is
checked, not assumed. The functions run on whatever model they are given — the
serving model on its worker thread, or a scratch copy on a request thread.

Incident that made this module: on a fresh install (transformers 5.25, peft 0.21)
``enable_adapters()`` raised for every adapter; the engine's idea of the active
adapter went stale and every later request, the base model's included, failed.
"""

from __future__ import annotations

from pathlib import Path

import torch

PROBE_MESSAGES = [{"role": "user", "content": "ping"}]
PROBE_TOKENS = 4  # "one short generation": enough to run the KV cache with the adapter on

Fingerprints = dict[str | None, torch.Tensor]


class ModelDrift(RuntimeError):
    """The model no longer gives the logits it gave before: it cannot be trusted."""


def probe_ids(tokenizer) -> list[int]:
    """The token ids of the probe prompt, through the model's own chat template."""
    return list(tokenizer.apply_chat_template(PROBE_MESSAGES, add_generation_prompt=True, return_dict=False))


@torch.inference_mode()
def probe(model, ids: list[int]) -> torch.Tensor:
    """Greedy-generate a few tokens after ``ids``; returns the first step's logits (float32, CPU).

    Raises ``ValueError`` when any step's logits are not finite (NaN weights, an overflow).
    """
    inputs = torch.tensor([ids], device=model.device)
    cache, first = None, None
    for _ in range(PROBE_TOKENS):
        output = model(input_ids=inputs, past_key_values=cache, use_cache=True)
        logits = output.logits[0, -1].float()
        if not torch.isfinite(logits).all():
            raise ValueError("the model's logits are not finite (NaN or infinite weights?)")
        if first is None:
            first = logits.cpu()
        cache = output.past_key_values
        inputs = torch.argmax(logits).reshape(1, 1)
    return first


def activate(model, internal: str | None) -> None:
    """Make ``internal`` the only active adapter, or (None) switch every adapter off."""
    if internal is None:
        # Once the last adapter is deleted the model has none to disable (PEFT raises).
        if getattr(model, "peft_config", None):
            model.disable_adapters()
        return
    model.enable_adapters()
    model.set_adapter(internal)


def attach(model, internal: str, folder: Path, ids: list[int]) -> torch.Tensor:
    """Load the PEFT adapter in ``folder`` as ``internal``, run it once, switch it off; returns its fingerprint.

    Raises on anything that would make it answer wrongly: weights that do not fit
    the model (missing, unexpected or mis-shaped keys), a switch that raises, an
    answer that is not finite. What a failed call leaves on ``model`` is the
    caller's to clean up (:func:`verify` tells whether that worked).
    """
    # ignore_mismatched_sizes: report mis-shaped weights (refused below, naming them) rather than
    # raise a RuntimeError that only points at a log.
    info = model.load_adapter(str(folder), adapter_name=internal, ignore_mismatched_sizes=True)
    _check_loading_info(info, internal)
    activate(model, internal)
    fingerprint = probe(model, ids)
    activate(model, None)
    return fingerprint


def verify(model, ids: list[int], fingerprints: Fingerprints) -> None:
    """Prove each adapter (and the base) gives the logits it gave when attached; ends with adapters off.

    Raises :class:`ModelDrift` on a difference, or whatever a switch raises.
    """
    for internal, expected in fingerprints.items():
        activate(model, internal)
        got = probe(model, ids)
        if not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
            label = "the base model" if internal is None else f"adapter {internal}"
            delta = float((got - expected).abs().max())
            raise ModelDrift(f"{label} no longer answers as before (largest logit change {delta:.3g})")
    activate(model, None)


def _check_loading_info(info, internal: str) -> None:
    marker = f".{internal}."
    missing = sorted(k for k in (getattr(info, "missing_keys", None) or []) if marker in k)
    unexpected = sorted(getattr(info, "unexpected_keys", None) or [])
    mismatched = sorted(getattr(info, "mismatched_keys", None) or [])
    errors = list(getattr(info, "error_msgs", None) or []) + list((getattr(info, "conversion_errors", None) or {}))
    for what, keys in (
        ("missing", missing),
        ("not in this model", unexpected),
        ("shaped differently from this model", mismatched),
    ):
        if keys:
            first = keys[0][0] if isinstance(keys[0], tuple) else keys[0]
            raise ValueError(
                f"the adapter's weights do not fit this model ({len(keys)} weight(s) {what}, e.g. {first}); "
                "was it trained on another base model?"
            )
    if errors:
        raise ValueError(f"the adapter's weights could not be loaded: {errors[0]}")
