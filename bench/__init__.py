"""Benchmarks: run from the repository root (see docs/benchmarks.md); not part of the installed package."""

import resource


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
