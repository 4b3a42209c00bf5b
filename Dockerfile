# tuneloop gateway and scheduler (one image, two commands; see compose.yaml and docs/deployment.md).
# The GPU model server is vLLM's own image.

FROM python:3.11-slim AS builder
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first, pinned as in pyproject.toml and left out of the lock on purpose: the default wheel on Linux is the
# CUDA build (needed when the scheduler trains on a GPU); pass --build-arg TORCH_INDEX_URL=<PyTorch's CPU wheel
# index> for a small CPU-only image (docs/deployment.md).
ARG TORCH_INDEX_URL=""
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0; \
    else pip install torch==2.13.0; fi
# Then everything else from the lock, exactly as `make run` installs it: every version pinned, every file
# sha256-checked, nothing resolved at build time (README, "Development").
WORKDIR /app
COPY config/requirements.lock ./config/requirements.lock
RUN pip install --require-hashes --no-deps -r config/requirements.lock
# The code stays at /app (an editable install), so the bundled data/ (FAQ, golden set) sits next to it
# where the code looks for it.
COPY pyproject.toml README.md ./
COPY config ./config
COPY feedback ./feedback
COPY trainer ./trainer
COPY modelclient ./modelclient
COPY server ./server
COPY cli ./cli
COPY data ./data
RUN pip install --no-deps --no-build-isolation --editable . && pip check

FROM python:3.11-slim AS runtime
# A fixed numeric uid/gid, so USER and the volumes' ownership resolve the same on every host.
RUN groupadd --gid 10001 tuneloop && useradd --create-home --uid 10001 --gid 10001 tuneloop \
    && mkdir -p /data/training && chown -R 10001:10001 /data
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    TUNELOOP_PATHS__DATA_DIR=/data TUNELOOP_GATEWAY__HOST=0.0.0.0
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# The gateway's liveness probe; the scheduler service (no HTTP port) replaces it in compose.yaml.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('TUNELOOP_GATEWAY__PORT', '8000') + '/healthz', timeout=4)"]
ENTRYPOINT ["tuneloop"]
CMD ["serve"]
