"""Making a model version servable on its model server, and the registry moves that need it.

A version is servable when its model server answers to its ``name``:

- a LoRA adapter (``adapter_path`` set, provider not ``openai``) is loaded at run time
  with ``POST /v1/load_lora_adapter {"lora_name", "lora_path"}`` — vLLM's API, which
  the built-in model server implements too (vLLM needs
  ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` and ``--enable-lora``). The path is
  handed to the server as is, so the server must see the same folder (same host
  or a shared volume). "Already loaded" counts as success: deploying is idempotent;
- an OpenAI ``ft:`` model, or a model a server already serves, has nothing to load:
  deploying only checks that the server lists the name.

The server is the version's ``base_url``, else ``model.base_url``. Deploying
never changes what is live — a candidate is deployed *before* it is evaluated —
and promotion only flips the registry. So the moves below deploy first and flip
after: a version is never live (or a canary) while its server cannot answer to it.
An ``undeployed``/``deployed`` event is recorded when the server's state changed.

A model server that *refuses* an adapter (a 4xx with a reason: corrupt or
truncated files, weights for another base, a PEFT that cannot switch to it) raises
:class:`AdapterRefused`: the version is unusable, not the server, and callers
reject it with "adapter did not load: …" (:func:`reject_unloadable`). A server that
cannot be reached or fails with 5xx raises plain :class:`UpstreamError`: that says
nothing about the adapter, so nothing is rejected and the next attempt may work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx2
from sqlite_utils import Database

from config.errors import Conflict, UpstreamError, UpstreamUnavailable
from config.settings import Settings
from feedback.versions import ModelVersion, canary_versions, get_version, live_version
from modelclient.chat import ChatClient, ClientPolicy, Target
from trainer import registry

log = logging.getLogger("tuneloop.deploy")


LOAD_FAILED = "adapter did not load"


class AdapterRefused(UpstreamError):
    """The model server refused to load a version's adapter; ``reason`` is the server's own words."""

    code = "adapter_refused"

    def __init__(self, version: ModelVersion, reason: str):
        super().__init__(f"{LOAD_FAILED}: {reason}")
        self.version_id = version.id
        self.reason = reason


@dataclass(frozen=True)
class DeployResult:
    """What a deploy or undeploy call did: ``loaded``, ``already_loaded``, ``nothing_to_load``,
    ``unloaded``, ``not_loaded``, ``skipped`` or ``rejected`` (the server refused it; ``detail`` says why)."""

    version_id: str
    name: str
    action: str
    server: str
    detail: str = ""


def model_client(settings: Settings) -> ChatClient:
    """The shared OpenAI-protocol client with the model server's timeouts and retries."""
    m = settings.model
    return ChatClient(
        ClientPolicy(
            connect_timeout_s=m.connect_timeout_s,
            first_token_timeout_s=m.first_token_timeout_s,
            timeout_s=m.timeout_s,
            retries=m.retries,
        )
    )


def version_target(settings: Settings, version: ModelVersion) -> Target:
    """Where and as what a version is served — the same target the gateway would pick."""
    base_url = version.base_url or settings.model.base_url
    return Target(version.name, base_url, version.api_key(settings.model.api_key()), version.id)


def has_adapter(version: ModelVersion) -> bool:
    """True when serving the version means loading a LoRA adapter into its model server."""
    return bool(version.adapter_path) and version.provider != "openai"


def _lora_url(base_url: str, action: str) -> str:
    root = base_url.rstrip("/")
    return f"{root}/{action}" if root.endswith("/v1") else f"{root}/v1/{action}"


def _post(settings: Settings, url: str, body: dict, key: str) -> httpx2.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        return httpx2.post(
            url,
            json=body,
            headers=headers,
            timeout=httpx2.Timeout(settings.model.timeout_s, connect=settings.model.connect_timeout_s),
        )
    except httpx2.TransportError as exc:
        raise UpstreamUnavailable(f"cannot reach the model server at {url}: {exc}") from exc


def _error_message(response: httpx2.Response) -> str | None:
    """The message of an error body: ours and vLLM's ``{"error": {"message"}}``, or older vLLM's flat one."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    inner = body.get("error") if isinstance(body.get("error"), dict) else body
    message = inner.get("message")
    return str(message)[:1000] if message else None


def _refused(response: httpx2.Response, url: str) -> UpstreamError:
    text = response.text[:500]
    if response.status_code in (404, 405):
        return UpstreamError(
            f"{url} answered {response.status_code}: the model server does not accept adapters at run time "
            "(vLLM: start it with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora)"
        )
    return UpstreamError(f"{url} answered {response.status_code}: {text}")


def served_names(settings: Settings, version: ModelVersion, client: ChatClient | None = None) -> list[str]:
    """The model ids the version's server lists (``GET /v1/models``)."""
    return (client or model_client(settings)).ping(
        version_target(settings, version), timeout_s=settings.model.first_token_timeout_s
    )


def deploy(
    db: Database,
    settings: Settings,
    version: ModelVersion | str,
    *,
    actor: str = "deploy",
    client: ChatClient | None = None,
) -> DeployResult:
    """Make ``version`` servable without making it live (see the module docstring); idempotent.

    Raises :class:`AdapterRefused` when the server refuses the adapter, :class:`UpstreamError`
    when it cannot be reached or fails, and :class:`Conflict` when it does not list the
    name afterwards.
    """
    version = get_version(db, version if isinstance(version, str) else version.id)
    target = version_target(settings, version)
    action, detail = "nothing_to_load", ""
    if has_adapter(version):
        url = _lora_url(target.base_url, "load_lora_adapter")
        body = {"lora_name": version.name, "lora_path": version.adapter_path}
        response = _post(settings, url, body, target.api_key)
        if response.status_code == 200:
            action = "loaded"
        elif response.status_code == 400 and "already been loaded" in response.text:
            action = "already_loaded"  # vLLM's words; the built-in server uses the same
        elif response.status_code in (400, 404, 422) and _error_message(response):
            # The server looked at the adapter and said no (vLLM: 400 BadRequestError, or 404
            # "No adapter found"); a 404 without an error body is a server without the endpoint.
            raise AdapterRefused(version, _error_message(response))
        else:
            raise _refused(response, url)
    names = served_names(settings, version, client)
    if version.name not in names:
        shown = ", ".join(names[:20]) + (" …" if len(names) > 20 else "")
        raise Conflict(
            f"the model server at {target.base_url} does not serve {version.name!r} (it lists: {shown or 'nothing'})"
        )
    if action == "loaded":
        registry.record_event(
            db,
            version.id,
            "deployed",
            actor=actor,
            details={"server": target.base_url, "adapter_path": version.adapter_path},
        )
    return DeployResult(version.id, version.name, action, target.base_url, detail)


def undeploy(db: Database, settings: Settings, version: ModelVersion | str, *, actor: str = "deploy") -> DeployResult:
    """Unload a version's adapter from its model server; a version without one is left alone."""
    version = get_version(db, version if isinstance(version, str) else version.id)
    server = version.base_url or settings.model.base_url
    if not has_adapter(version):
        return DeployResult(version.id, version.name, "skipped", server, "no adapter to unload")
    if version.status in ("live", "canary"):
        raise Conflict(f"{version.name} ({version.id}) is {version.status}; it must stay loaded")
    url = _lora_url(server, "unload_lora_adapter")
    response = _post(settings, url, {"lora_name": version.name}, version.api_key(settings.model.api_key()))
    if response.status_code == 200:
        registry.record_event(db, version.id, "undeployed", actor=actor, details={"server": server})
        return DeployResult(version.id, version.name, "unloaded", server)
    if response.status_code in (400, 404) and "cannot be found" in response.text:
        return DeployResult(version.id, version.name, "not_loaded", server)
    raise _refused(response, url)


def withdraw(db: Database, settings: Settings, version: ModelVersion | str, *, actor: str) -> DeployResult | None:
    """After a retire or reject: unload the adapter when ``gate.unload_retired`` says so.

    Best effort — the registry change already happened, and a model server that is
    down has nothing loaded anyway — so a failure is logged and returned as ``skipped``.
    """
    if not settings.gate.unload_retired:
        return None
    try:
        return undeploy(db, settings, version, actor=actor)
    except UpstreamError as exc:
        log.warning("could not unload %s: %s", getattr(version, "name", version), exc.message)
        vid = version if isinstance(version, str) else version.id
        return DeployResult(vid, getattr(version, "name", vid), "skipped", "", exc.message)


def deploy_serving(db: Database, settings: Settings, *, actor: str = "deploy") -> list[DeployResult]:
    """Deploy the live version and the canary, e.g. after the model server restarted and lost its adapters.

    A canary whose adapter is refused is rejected (:func:`reject_unloadable`) and reported
    as ``rejected``: its share of conversations goes back to the live version. A refused
    live version raises — there is nothing to fall back on but a rollback.
    """
    results = []
    live = live_version(db)
    if live is not None:
        results.append(deploy(db, settings, live, actor=actor))
    for canary in canary_versions(db):
        try:
            results.append(deploy(db, settings, canary, actor=actor))
        except AdapterRefused as exc:
            reject_unloadable(db, settings, canary, exc.reason, actor=actor)
            results.append(
                DeployResult(canary.id, canary.name, "rejected", version_target(settings, canary).base_url, exc.message)
            )
    return results


def reject_unloadable(
    db: Database,
    settings: Settings,
    version: ModelVersion | str,
    reason: str,
    *,
    actor: str,
    evaluation_id: str | None = None,
) -> ModelVersion:
    """Mark a candidate (or canary) whose adapter the server refused ``rejected``: "adapter did not load: …".

    Idempotent: a version already rejected is returned as it is. Nothing routes to a
    rejected version, and promoting it needs ``force``. Its adapter is unloaded when
    ``gate.unload_retired`` (best effort: the server never loaded it, or holds a broken copy).
    """
    version = get_version(db, version if isinstance(version, str) else version.id)
    if version.status == "rejected":
        return version
    rejected = registry.reject(db, version, [f"{LOAD_FAILED}: {reason}"], actor, evaluation_id=evaluation_id)
    log.warning("rejected %s (%s): %s: %s", rejected.name, rejected.id, LOAD_FAILED, reason)
    withdraw(db, settings, rejected, actor=actor)
    return rejected


def promote(
    db: Database,
    settings: Settings,
    version: ModelVersion | str,
    *,
    actor: str,
    reason: str | None = None,
    evaluation_id: str | None = None,
    force: bool = False,
) -> ModelVersion:
    """Deploy ``version``, then make it live (:func:`trainer.registry.promote`)."""
    deploy(db, settings, version, actor=actor)
    return registry.promote(db, version, actor, reason, evaluation_id=evaluation_id, force=force)


def start_canary(
    db: Database,
    settings: Settings,
    version: ModelVersion | str,
    weight: float,
    *,
    actor: str,
    reason: str | None = None,
    evaluation_id: str | None = None,
    force: bool = False,
) -> ModelVersion:
    """Deploy ``version``, then let it take ``weight`` of conversations (:func:`trainer.registry.set_canary`)."""
    deploy(db, settings, version, actor=actor)
    return registry.set_canary(db, version, weight, actor, reason, evaluation_id=evaluation_id, force=force)


def rollback(
    db: Database, settings: Settings, *, actor: str, reason: str | None = None
) -> tuple[ModelVersion, ModelVersion]:
    """Deploy the previous live version (it may have been unloaded), then roll back to it."""
    _, previous = registry.rollback_target(db)
    deploy(db, settings, previous, actor=actor)
    return registry.rollback(db, actor, reason, expected=previous.id)


def retire(
    db: Database, settings: Settings, version: ModelVersion | str, *, actor: str, reason: str | None = None
) -> tuple[ModelVersion, DeployResult | None]:
    """Retire ``version`` in the registry, then unload it if configured (:func:`withdraw`)."""
    retired = registry.retire(db, version, actor, reason)
    return retired, withdraw(db, settings, retired, actor=actor)
