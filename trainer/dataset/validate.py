"""OpenAI's chat fine-tuning format checks, run on every row before anything is written.

The rules are OpenAI's published ones — the format checks of the cookbook
notebook "Data preparation and analysis for chat model fine-tuning"
(cookbook.openai.com/examples/chat_finetuning_data_prep) and the limits in the
supervised fine-tuning guide on OpenAI's developer site ("the minimum number of examples you can
provide for fine-tuning is 10"); the per-example token limit is the model's training context
(65,536 tokens for gpt-4o-mini-2024-07-18 per Microsoft's Azure OpenAI model table):

| code | rule |
|---|---|
| ``data_type`` | each line is a JSON object |
| ``missing_messages_list`` | it has a non-empty ``messages`` list |
| ``unrecognized_key`` | no other top-level keys (our files carry nothing else) |
| ``message_missing_key`` | every message has ``role`` and ``content`` |
| ``message_unrecognized_key`` | message keys are only ``role``, ``content``, ``name``, ``weight`` |
| ``unrecognized_role`` | ``role`` is ``system``, ``user`` or ``assistant`` |
| ``missing_content`` | ``content`` is a non-empty string |
| ``bad_weight`` | ``weight``, where present, is 0 or 1 and on an assistant message |
| ``example_missing_assistant_message`` | at least one assistant message |
| ``too_many_tokens`` | at most ``dataset.max_tokens_per_example`` tokens (65,536 for gpt-4o-mini-2024-07-18) |
| ``too_few_examples`` | the training file has at least ``dataset.min_examples`` rows (OpenAI's minimum is 10) |

OpenAI truncates an example longer than its token limit; the build reports it instead.

Token counts are an estimate, not OpenAI's tokenizer: its vocabulary file
cannot be downloaded here. :func:`estimate_tokens` counts an ASCII run as one
token per 3 characters (OpenAI's rule of thumb is about 4 for English), every
other BMP character (a Hangul syllable, say) as one token and anything beyond
the BMP (emoji) as three, so it errs high; each message adds 3 and each example
3 more, as in the cookbook's ``num_tokens_from_messages``. Pass an exact counter
(``count=``) when one is at hand, e.g. the starter model's tokenizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = {"role", "content", "name", "weight"}
TOKEN_COUNTING = (
    "estimate: ceil(ASCII characters / 3) + 1 per other BMP character + 3 per astral character; "
    "+3 per message, +3 per example (cookbook num_tokens_from_messages)"
)


def estimate_tokens(text: str) -> int:
    """A deliberately high estimate of ``text``'s token count (see the module docstring)."""
    ascii_chars = other = astral = 0
    for ch in text:
        code = ord(ch)
        if code < 128:
            ascii_chars += 1
        elif code > 0xFFFF:
            astral += 1
        else:
            other += 1
    return math.ceil(ascii_chars / 3) + other + 3 * astral


def example_tokens(messages: list[dict], count: Callable[[str], int] = estimate_tokens) -> int:
    """Tokens of one example as OpenAI counts a chat prompt (an estimate unless ``count`` is exact)."""
    total = 3
    for message in messages:
        total += 3 + count(str(message.get("role", ""))) + count(str(message.get("content", "")))
        if message.get("name"):
            total += 1 + count(str(message["name"]))
    return total


@dataclass(frozen=True)
class Problem:
    """One rule one row breaks."""

    code: str
    message: str


def check_example(
    example, *, max_tokens: int, count: Callable[[str], int] = estimate_tokens, allow_extra_keys: bool = False
) -> list[Problem]:
    """Every rule ``example`` breaks (empty when it is a valid training example)."""
    if not isinstance(example, dict):
        return [Problem("data_type", f"each line must be a JSON object, got {type(example).__name__}")]
    messages = example.get("messages")
    if not isinstance(messages, list) or not messages:
        return [Problem("missing_messages_list", 'needs a non-empty "messages" list')]
    problems = []
    extra = sorted(set(example) - {"messages"})
    if extra and not allow_extra_keys:
        problems.append(Problem("unrecognized_key", f"unexpected top-level key(s): {', '.join(extra)}"))
    for n, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            problems.append(Problem("data_type", f"message {n} is not an object"))
            continue
        if "role" not in message or "content" not in message:
            problems.append(Problem("message_missing_key", f'message {n} needs both "role" and "content"'))
        unknown = sorted(set(message) - MESSAGE_KEYS)
        if unknown:
            problems.append(
                Problem("message_unrecognized_key", f"message {n} has unsupported key(s): {', '.join(unknown)}")
            )
        if "role" in message and message.get("role") not in ROLES:
            problems.append(
                Problem("unrecognized_role", f"message {n} has role {message.get('role')!r}; use {', '.join(ROLES)}")
            )
        content = message.get("content")
        if "content" in message and (not isinstance(content, str) or not content.strip()):
            problems.append(Problem("missing_content", f"message {n} content must be a non-empty string"))
        if "weight" in message and (
            message["weight"] not in (0, 1) or isinstance(message["weight"], bool) or message.get("role") != "assistant"
        ):
            problems.append(Problem("bad_weight", f"message {n}: weight must be 0 or 1, on assistant messages only"))
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        problems.append(Problem("example_missing_assistant_message", "needs at least one assistant message"))
    if not problems:
        tokens = example_tokens(messages, count)
        if tokens > max_tokens:
            problems.append(Problem("too_many_tokens", f"about {tokens:,} tokens, over the limit of {max_tokens:,}"))
    return problems


@dataclass
class ValidationReport:
    """Problems by split and row, and token totals per split."""

    problems: list[dict] = field(default_factory=list)  # {"split", "row", "code", "message", "lineage"}
    tokens: dict[str, int] = field(default_factory=dict)
    max_example_tokens: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_splits(
    splits: dict[str, list[dict]],
    lineage: dict[str, list[dict]],
    *,
    max_tokens: int,
    min_examples: int,
    count: Callable[[str], int] = estimate_tokens,
) -> ValidationReport:
    """Check every row of every split (rows are 1-based, as lines of the file they go to)."""
    report = ValidationReport()
    for name, rows in splits.items():
        total = 0
        for n, row in enumerate(rows, 1):
            for problem in check_example(row, max_tokens=max_tokens, count=count):
                report.problems.append(
                    {
                        "split": name,
                        "row": n,
                        "code": problem.code,
                        "message": problem.message,
                        "lineage": lineage[name][n - 1],
                    }
                )
            messages = row.get("messages") if isinstance(row, dict) else None
            if isinstance(messages, list) and all(isinstance(m, dict) for m in messages):
                tokens = example_tokens(messages, count)
                total += tokens
                report.max_example_tokens = max(report.max_example_tokens, tokens)
        report.tokens[name] = total
    train = len(splits.get("train", []))
    if train < min_examples:
        report.problems.append(
            {
                "split": "train",
                "row": None,
                "code": "too_few_examples",
                "message": f"{train} training examples; at least {min_examples} are needed",
                "lineage": None,
            }
        )
    return report
