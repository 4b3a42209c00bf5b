"""Batched decoding in the built-in model server: every answer is exactly the one it gets alone.

Two ways in. In process, an :class:`Engine` on the tiny model whose worker is held
busy while the requests queue, so the batch they form is known (the batch-size
histogram says so). Over HTTP, the session's real ``tuneloop model-server``
process, with requests sent at once from threads; batches then form as they do in
production, and ``/metrics`` shows that they did.
"""

from __future__ import annotations

import re
import threading
from concurrent.futures import Future

import httpx2
import openai
import pytest

from server.model_server.engine import Engine
from tests.plugins.model import qa

GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    engine = Engine(device="cpu", max_new_tokens=128, torch_threads=1, max_batch=8)
    engine.load_base("starter", tiny_model_dir)
    yield engine
    engine.base.stop()


def requests_of_every_kind(rows: list[dict]) -> list[tuple[list[dict], dict]]:
    """(messages, params): prompts of different lengths, with stop strings, max_tokens, seeds, greedy or not."""
    pairs = [qa(r) for r in rows]
    (_, a0), (q1, a1), (q4, a4) = pairs[0], pairs[1], pairs[4]
    history = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": q1},
        {"role": "assistant", "content": a1},
        {"role": "user", "content": q4},
    ]
    user = [[{"role": "user", "content": q}] for q, _ in pairs]
    return [
        (user[0], GREEDY),
        (history, GREEDY),  # the longest prompt: the others are padded to it
        (user[2], {**GREEDY, "max_tokens": 3}),
        (user[3], {**GREEDY, "stop": (a0.split()[0], "no such text")}),  # may or may not occur
        (user[4], {**GREEDY, "stop": (a4.split()[3],)}),
        (user[5], {"temperature": 2.0, "seed": 11, "max_tokens": 12}),
        (user[6], {"temperature": 0.8, "top_p": 0.9, "seed": 5}),
        (user[7], {**GREEDY, "max_tokens": 1}),
    ]


def answer(generation) -> tuple[str, str | None, int, int]:
    text = generation.collect()
    return text, generation.finish_reason, generation.prompt_tokens, generation.completion_tokens


def batches_of(engine) -> dict[str, float]:
    """The batch-size histogram: count, sum, and the count at each bucket bound."""
    values = {}
    for metric in engine.metrics.batch_size.collect():
        for sample in metric.samples:
            key = sample.labels.get("le", sample.name.rsplit("_", 1)[-1])
            values[key] = sample.value
    return values


def held(engine, queue_requests):
    """Hold the worker busy, queue the requests (``queue_requests()``), then let it go: they form one batch."""
    worker = engine.base
    started, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=worker.call, args=(lambda: (started.set(), release.wait(30)),))
    holder.start()
    assert started.wait(30)
    try:
        return queue_requests()
    finally:
        release.set()
        holder.join(30)


def test_a_batch_answers_exactly_as_each_request_alone(engine, tiny_model_rows):
    requests = requests_of_every_kind(tiny_model_rows)
    alone = [answer(engine.generate("starter", m, **p)) for m, p in requests]
    assert alone[0][0] == qa(tiny_model_rows[0])[1] and alone[1][0] == qa(tiny_model_rows[4])[1]
    assert alone[2][1:] == ("length", alone[2][2], 3) and alone[7][3] == 1
    a4 = qa(tiny_model_rows[4])[1]
    assert alone[4][:2] == (a4[: a4.index(a4.split()[3])], "stop")
    assert len({p for _, p, _, _ in alone}) > 1  # the prompts really differ in length

    before = batches_of(engine)
    generations = held(engine, lambda: [engine.generate("starter", m, **p) for m, p in requests])
    together = [answer(g) for g in generations]
    after = batches_of(engine)

    assert together == alone
    assert after["count"] - before["count"] == 1 and after["sum"] - before["sum"] == len(requests)


def test_max_batch_caps_a_batch_and_the_rest_follow_in_order(engine, tiny_model_rows):
    question, expected = qa(tiny_model_rows[3])
    before = batches_of(engine)
    generations = held(
        engine,
        lambda: [engine.generate("starter", [{"role": "user", "content": question}], **GREEDY) for _ in range(11)],
    )
    assert [g.collect() for g in generations] == [expected] * 11
    after = batches_of(engine)
    assert after["count"] - before["count"] == 2 and after["sum"] - before["sum"] == 11  # 8, then 3
    assert after["8.0"] - before["8.0"] == 2 and after["4.0"] - before["4.0"] == 1


def test_a_cancelled_answer_leaves_the_batch_and_the_others_are_unchanged(engine, tiny_model_rows):
    pairs = [qa(r) for r in tiny_model_rows[:6]]
    sent: list[str] = []

    def queue():
        generations = [engine.generate("starter", [{"role": "user", "content": q}], **GREEDY) for q, _ in pairs]
        leaving = generations[2]

        def emit_then_leave(text, emit=leaving.emit):
            # The client goes away as its first piece is sent: mid-batch, whatever the machine's speed.
            sent.append(text)
            emit(text)
            leaving.cancel()

        leaving.emit = emit_then_leave
        return generations

    generations = held(engine, queue)
    others = [g.collect() for i, g in enumerate(generations) if i != 2]
    assert others == [a for i, (_, a) in enumerate(pairs) if i != 2]
    leaving = generations[2]
    assert len(sent) == 1 and sent[0] and pairs[2][1].startswith(sent[0])  # nothing decoded for it after it left
    assert leaving.finish_reason is None and leaving.completion_tokens == 0  # dropped, not finished


def test_a_request_cancelled_while_queued_is_never_decoded(engine, tiny_model_rows):
    question, expected = qa(tiny_model_rows[1])
    before = batches_of(engine)

    def queue():
        generations = [engine.generate("starter", [{"role": "user", "content": question}], **GREEDY) for _ in range(3)]
        generations[1].cancel()
        return generations

    generations = held(engine, queue)
    assert generations[0].collect() == expected and generations[2].collect() == expected
    after = batches_of(engine)
    assert after["count"] - before["count"] == 1 and after["sum"] - before["sum"] == 2


def test_base_and_adapter_requests_are_batched_apart_and_each_gets_its_model(engine, tiny_lora, tiny_model_rows):
    engine.load("batch-lora", tiny_lora.path)
    try:
        questions = [qa(r)[0] for r in tiny_model_rows[:4]]
        order = [(q, model) for q in questions for model in ("starter", "batch-lora")]
        before = batches_of(engine)
        generations = held(
            engine,
            lambda: [engine.generate(model, [{"role": "user", "content": q}], **GREEDY) for q, model in order],
        )
        got = [g.collect() for g in generations]
        after = batches_of(engine)
    finally:
        engine.unload("batch-lora")
    base_answers = {qa(r)[0]: qa(r)[1] for r in tiny_model_rows}
    expected = [base_answers[q] if model == "starter" else tiny_lora.answers[q] for q, model in order]
    assert got == expected
    assert after["count"] - before["count"] == 2 and after["sum"] - before["sum"] == 8  # 4 base, then 4 adapter


def test_a_batch_never_reaches_past_other_work_queued_before_its_answers(engine, tiny_model_rows):
    """An answer queued after other work (an adapter load, a call) waits for it, as before batching."""
    question, expected = qa(tiny_model_rows[2])
    messages = [{"role": "user", "content": question}]
    seen: list[tuple] = []
    before = batches_of(engine)

    def queue():
        first = engine.generate("starter", messages, **GREEDY)
        # What engine.load queues (worker.call blocks its caller, so the job is put as it puts it).
        engine.base._jobs.put((lambda: seen.append((first.finish_reason, last.finish_reason)), Future()))
        last = engine.generate("starter", messages, **GREEDY)
        return first, last

    first, last = held(engine, queue)
    assert first.collect() == expected and last.collect() == expected
    assert seen == [("stop", None)]  # the first answer ran before the call, the last one after it
    after = batches_of(engine)
    assert after["count"] - before["count"] == 2 and after["sum"] - before["sum"] == 2


# --- over HTTP, as production batches them --------------------------------------------------


def server_batches(model_server) -> tuple[float, float]:
    """(batches, answers in batches of more than one) from the server's /metrics."""
    text = httpx2.get(model_server.url + "/metrics").text

    def value(pattern: str) -> float:
        return float(re.search(pattern + r" (\S+)", text).group(1))

    count = value(r"tuneloop_model_server_batch_size_count")
    return count, count - value(r'tuneloop_model_server_batch_size_bucket\{le="1\.0"\}')


def ask_raw(model_server, messages: list[dict], params: dict, *, stream: bool, model: str | None = None):
    """(text, finish_reason, usage) of one request over HTTP, streamed or not."""
    client = openai.OpenAI(base_url=model_server.base_url, api_key="unused", max_retries=0, timeout=60)
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}
    name = model or model_server.name
    if not stream:
        done = client.chat.completions.create(model=name, messages=messages, **params)
        return done.choices[0].message.content, done.choices[0].finish_reason, done.usage.model_dump()
    chunks = list(
        client.chat.completions.create(
            model=name, messages=messages, stream=True, stream_options={"include_usage": True}, **params
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return text, finish[0], chunks[-1].usage.model_dump()


def all_at_once(calls: list) -> list:
    """Run the ``calls`` from as many threads, released together; their results in order."""
    start = threading.Barrier(len(calls))
    results: list = [None] * len(calls)

    def run(i):
        start.wait(30)
        try:
            results[i] = calls[i]()
        except Exception as exc:  # noqa: BLE001 - compared below, so a failure shows what it was
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_concurrent_http_requests_get_exactly_their_answers_alone(model_server, tiny_model_rows):
    requests = requests_of_every_kind(tiny_model_rows)
    kinds = [(m, p, n % 2 == 1) for n, (m, p) in enumerate(requests * 2)]  # each streamed and not
    alone = [ask_raw(model_server, m, p, stream=s) for m, p, s in kinds]
    batched_before = server_batches(model_server)[1]
    for _ in range(5):  # until batches formed (they do at once unless the machine stalls every request)
        together = all_at_once([lambda m=m, p=p, s=s: ask_raw(model_server, m, p, stream=s) for m, p, s in kinds])
        assert together == alone
        if server_batches(model_server)[1] > batched_before + len(kinds) // 4:
            break
    else:
        pytest.fail(f"requests sent at once were not batched: {server_batches(model_server)}")


def test_a_client_leaving_mid_stream_does_not_disturb_its_batch(model_server, tiny_model_rows):
    pairs = [qa(r) for r in tiny_model_rows]

    def leave_after_one_piece():
        body = {"model": model_server.name, "messages": [{"role": "user", "content": pairs[0][0]}], "stream": True}
        body.update(GREEDY)
        with httpx2.stream("POST", model_server.base_url + "/chat/completions", json=body, timeout=30) as response:
            for line in response.iter_lines():
                if '"content": "' in line and '"content": ""' not in line:
                    return "left"
        return "never got a piece"

    batched_before = server_batches(model_server)[1]
    for _ in range(5):
        calls = [leave_after_one_piece] + [
            lambda q=q: ask_raw(model_server, [{"role": "user", "content": q}], GREEDY, stream=True)[0]
            for q, _ in pairs[1:]
        ]
        results = all_at_once(calls)
        assert results == ["left"] + [a for _, a in pairs[1:]]
        if server_batches(model_server)[1] > batched_before:
            break
    else:
        pytest.fail("requests sent at once were not batched")
    assert ask_raw(model_server, [{"role": "user", "content": pairs[0][0]}], GREEDY, stream=False)[0] == pairs[0][1]


def test_concurrent_adapter_and_base_requests_each_get_their_own_model(model_server, tiny_lora, tiny_model_rows):
    load = {"lora_name": "concurrent-lora", "lora_path": str(tiny_lora.path)}
    assert httpx2.post(model_server.base_url + "/load_lora_adapter", json=load, timeout=60).status_code == 200
    try:
        questions = [qa(r)[0] for r in tiny_model_rows]
        order = [(q, model) for q in questions for model in (model_server.name, "concurrent-lora")]
        results = all_at_once(
            [
                lambda q=q, model=model: ask_raw(
                    model_server, [{"role": "user", "content": q}], GREEDY, stream=False, model=model
                )[0]
                for q, model in order
            ]
        )
    finally:
        unload = {"lora_name": "concurrent-lora"}
        httpx2.post(model_server.base_url + "/unload_lora_adapter", json=unload, timeout=60)
    base_answers = dict(qa(r) for r in tiny_model_rows)
    assert results == [base_answers[q] if m == model_server.name else tiny_lora.answers[q] for q, m in order]


def test_a_failed_switch_fails_only_the_batch_waiting_for_that_adapter(engine, tiny_lora, tiny_model_rows, monkeypatch):
    from server.model_server import engine as engine_module
    from server.model_server.engine import ModelUnavailable

    engine.load("switch-lora", tiny_lora.path)
    question, base_answer = qa(tiny_model_rows[3])
    messages = [{"role": "user", "content": question}]
    real_activate = engine_module.activate

    def broken(model, internal):
        if internal is not None:
            raise RuntimeError("enable_adapters raised")
        real_activate(model, internal)

    switch_failures = engine.metrics.switch_failures.labels("starter")
    failures_before = switch_failures._value.get()
    monkeypatch.setattr(engine_module, "activate", broken)
    try:
        generations = held(
            engine,
            lambda: [
                engine.generate("switch-lora", messages, **GREEDY),
                engine.generate("starter", messages, **GREEDY),
                engine.generate("switch-lora", messages, **GREEDY),
            ],
        )
        failed = [generations[0], generations[2]]
        for generation in failed:
            with pytest.raises(ModelUnavailable, match="enable_adapters raised"):
                generation.wait_started()
        assert generations[1].collect() == base_answer  # the base's batch, after the reload, is untouched
        assert switch_failures._value.get() == failures_before + 1  # one switch, for both adapter answers
        monkeypatch.setattr(engine_module, "activate", real_activate)
        assert engine.generate("switch-lora", messages, **GREEDY).collect() == tiny_lora.answers[question]
    finally:
        monkeypatch.setattr(engine_module, "activate", real_activate)
        engine.unload("switch-lora")
