"""docs/schema.md is generated from the migrations; this fails when it drifts."""

from feedback.schema_doc import DOC_PATH, render_fresh


def test_schema_doc_matches_migrations():
    assert DOC_PATH.read_text() == render_fresh(), "docs/schema.md is stale: run python -m feedback.schema_doc"
