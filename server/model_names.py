"""Which model names a ``/v1`` request may ask for.

A name the gateway serves (the live version and any canaries, as ``GET /v1/models`` lists them) or one of
``model.aliases`` is answered by the model router as usual; any other name is OpenAI's 404
``model_not_found``. Until issue 20 every name was silently answered by the live model, so a client asking
for ``gpt-4o`` never learned it was talking to something else. A request that names no model (the field
left out or empty) gets the live model, as it always has.
"""

from __future__ import annotations

from typing import Sequence

from config.errors import NotFound


def check_model(requested: str | None, served: Sequence[str], aliases: Sequence[str]) -> None:
    """Raise 404 ``model_not_found`` (param ``model``) unless ``requested`` is empty, served, or an alias."""
    if not requested or requested in served or requested in aliases:
        return
    names = ", ".join(served) or "none"
    raise NotFound(
        f"The model `{requested}` does not exist or you do not have access to it. This gateway serves: {names} "
        "(GET /v1/models). To answer this name with the live model, list it in the gateway's model.aliases.",
        field="model",
        code="model_not_found",
    )


def listed_names(served: Sequence[str], aliases: Sequence[str]) -> list[str]:
    """What ``GET /v1/models`` lists: the served versions, then the aliases not already among them."""
    return list(served) + [alias for alias in aliases if alias not in served]
