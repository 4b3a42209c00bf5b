"""/openapi.json documents every API route, with the schemas the routes validate with."""

from __future__ import annotations

import json

import pytest

from server.openapi import DOCUMENTED_PREFIXES


def test_every_api_route_is_documented(make_gateway):
    app = make_gateway()
    spec = app.test_client().get("/openapi.json").get_json()
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(DOCUMENTED_PREFIXES):
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (path, method.lower()) in documented, f"{method} {rule.rule} is missing from /openapi.json"


def test_schemas_come_from_the_wire_models(make_gateway):
    spec = make_gateway().test_client().get("/openapi.json").get_json()
    chat = spec["paths"]["/api/chat"]["post"]
    body = chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    schema = spec["components"]["schemas"][body]
    assert schema["required"] == ["message"]
    assert {"200", "413", "502", "503", "504"} <= set(chat["responses"])
    assert "text/event-stream" in chat["responses"]["200"]["content"]


def test_every_api_route_lists_the_key_errors_and_every_body_route_the_body_errors(make_gateway):
    spec = make_gateway().test_client().get("/openapi.json").get_json()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            listed = set(op["responses"])
            assert {"401", "403"} <= listed, f"{method} {path}"
            if "requestBody" in op:
                assert {"400", "413", "422"} <= listed, f"{method} {path}"


def test_feedback_reasons_are_enumerated_from_the_settings(make_gateway):
    spec = make_gateway(**{"feedback.reasons": ["rude", "wrong"]}).test_client().get("/openapi.json").get_json()
    reason = spec["components"]["schemas"]["FeedbackRequest"]["properties"]["reason"]
    assert reason["enum"] == ["rude", "wrong", None]
    assert not any(key.startswith("x-enum") for key in reason)


def _event_schema(spec: dict, path: str) -> dict:
    """The schema of one event of ``path``'s stream, with the spec's components to resolve its references."""
    media = spec["paths"][path]["post"]["responses"]["200"]["content"]["text/event-stream"]
    return {**media["schema"], "components": spec["components"]}


def _validate_stream(spec: dict, path: str, events: list[tuple[str, str]]) -> None:
    """Each (event, data) must match the documented event, and its JSON data the documented contentSchema."""
    import jsonschema

    one_event = _event_schema(spec, path)
    for name, data in events:
        event = {"event": name, "data": data}
        jsonschema.validate(event, one_event)
        (option,) = [o for o in one_event["anyOf"] if o["properties"]["event"]["const"] == name]
        holds = option["properties"]["data"]
        json_options = [o for o in holds.get("anyOf", [holds]) if "contentSchema" in o]
        if data != "[DONE]":
            jsonschema.validate(
                json.loads(data), {**json_options[0]["contentSchema"], "components": spec["components"]}
            )


def _sse(body: str) -> list[tuple[str, str]]:
    out = []
    for block in body.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((fields.get("event", "message"), fields["data"]))
    return out


def test_streamed_events_are_the_documented_shapes(make_gateway, fake_upstream):
    client = make_gateway().test_client()
    spec = client.get("/openapi.json").get_json()
    api = _sse(client.post("/api/chat", json={"message": "hi", "stream": True}).get_data(as_text=True))
    assert [name for name, _ in api] == ["start", "delta", "delta", "delta", "done"]
    _validate_stream(spec, "/api/chat", api)
    v1 = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "stream": True})
    chunks = _sse(v1.get_data(as_text=True))
    assert chunks[-1] == ("message", "[DONE]") and len(chunks) == 7
    _validate_stream(spec, "/v1/chat/completions", chunks)
    failed = _sse(client.post("/api/chat", json={"message": "!midstream", "stream": True}).get_data(as_text=True))
    assert failed[-1][0] == "error"
    _validate_stream(spec, "/api/chat", failed)
    import jsonschema

    with pytest.raises(jsonschema.ValidationError):  # the schema does tell events apart
        _validate_stream(spec, "/api/chat", [("delta", json.dumps({"usage": {}}))])


def test_the_v1_stream_keeps_openais_wire_format(make_gateway, fake_upstream):
    client = make_gateway().test_client()
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "stream": True})
    chunks = [json.loads(data) for _, data in _sse(r.get_data(as_text=True))[:-1]]
    first, last_choice, usage = chunks[0], chunks[-2], chunks[-1]
    assert first["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
    assert set(first) == {"id", "object", "created", "model", "choices", "tuneloop"}
    assert [set(c["choices"][0]["delta"]) for c in chunks[1:-2]] == [{"content"}] * 3
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks[1:-2]) == "echo: hi"
    assert "tuneloop" not in chunks[1] and "usage" not in chunks[1]
    assert last_choice["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 8


def test_the_headers_the_chat_routes_read_are_documented(make_gateway):
    spec = make_gateway().test_client().get("/openapi.json").get_json()
    v1 = {p["name"]: p["in"] for p in spec["paths"]["/v1/chat/completions"]["post"]["parameters"]}
    api = {p["name"]: p["in"] for p in spec["paths"]["/api/chat"]["post"]["parameters"]}
    assert v1 == {"X-Tuneloop-Conversation-Id": "header"} and api == {"X-Tuneloop-Client": "header"}
