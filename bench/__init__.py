"""Benchmarks: run from the repository root (see docs/benchmarks.md); not part of the installed package."""

import resource
from pathlib import Path


def raise_fd_limit() -> int:
    """Raise this process's open-file soft limit to its hard limit; returns the new soft limit.

    Every open stream holds a descriptor in the client and the upstream and two
    in a gateway worker (its client's socket and its upstream socket), so the
    common default soft limit of 1024 caps a worker at about 500 streams.
    Children inherit the raised limit: raised in the bench, it reaches gunicorn.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def model_dir_or_starter(model: str | None, settings) -> Path:
    """The model folder a bench runs on: ``model`` if given, else the starter model, built first when missing."""
    from trainer.starter import build_from_settings, built_fingerprint

    if model:
        return Path(model)
    if built_fingerprint(settings.model_dir) is None:
        print(f"building the starter model into {settings.model_dir} (about two minutes) ...", flush=True)
        build_from_settings(settings)
    return settings.model_dir
