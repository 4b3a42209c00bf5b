"""/openapi.json documents every API route, with the schemas the routes validate with."""

from __future__ import annotations


def test_every_api_route_is_documented(make_gateway):
    app = make_gateway()
    spec = app.test_client().get("/openapi.json").get_json()
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(("/api/", "/v1/")):
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
