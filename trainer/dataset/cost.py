"""What fine-tuning a built dataset would cost on each OpenAI base model.

OpenAI bills supervised fine-tuning per training token: the tokens of the
training file times the number of epochs (the validation file is not billed as
training). Prices come from ``dataset.prices`` (USD per 1M training tokens), a
table copied from OpenAI's pricing page that goes stale: the estimate is only as
good as that table and as the token estimate (``validate.estimate_tokens`` errs
high), so treat it as an upper-bound guide, not a quote.
"""

from __future__ import annotations


def estimate_costs(train_tokens: int, prices: dict[str, float], epochs: int) -> list[dict]:
    """One row per base model, cheapest first: ``{"model", "usd_per_1m", "epochs", "billed_tokens", "usd"}``."""
    billed = train_tokens * epochs
    rows = [
        {
            "model": model,
            "usd_per_1m": price,
            "epochs": epochs,
            "billed_tokens": billed,
            "usd": round(billed / 1_000_000 * price, 4),
        }
        for model, price in prices.items()
    ]
    return sorted(rows, key=lambda r: (r["usd"], r["model"]))
