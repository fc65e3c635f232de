# llm-gateway container image. Build:  docker build -t llm-gateway .
# Run:    docker run -p 8080:8080 -e GATEWAY_DEV_KEY=sk-... llm-gateway
# Another config: mount it and point GATEWAY_CONFIG at it (-v ./my.toml:/etc/llm-gateway/gateway.toml:ro).
#
# Stage 1 builds the project's wheel (Lua scripts included as package data); stage 2 installs only that
# wheel and its dependencies on a slim base: no source checkout, no build tools, no tests.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY adapters ./adapters
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 --home-dir /var/lib/llm-gateway --create-home --shell /usr/sbin/nologin gateway

# The default config is the repository's gateway.toml (echo provider, one dev key from GATEWAY_DEV_KEY).
COPY gateway.toml /etc/llm-gateway/gateway.toml

# Relative paths of the config (sqlite:///gateway.db, spill_dir = "usage-spill") land in the working
# directory: the non-root user's home. Mount a volume here to keep the usage journal across restarts.
WORKDIR /var/lib/llm-gateway
USER gateway

# `gateway serve` reads these as the defaults of --config, --host, --port and --workers.
ENV GATEWAY_CONFIG=/etc/llm-gateway/gateway.toml \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    GATEWAY_WORKERS=1

EXPOSE 8080

# /healthz answers 200 while the process serves; slim has no curl, so Python's urllib asks.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GATEWAY_PORT', '8080'), timeout=2)"]

# Drain on SIGTERM: uvicorn stops accepting, lets in-flight requests (streams too) finish for up to
# 30 s (timeout_graceful_shutdown), then the app's lifespan closes the usage ledger: the flusher's
# current write (up to 15 s) and a final drain (up to 10 s), spilling to disk what the database did
# not take. Give the container at least 60 s before SIGKILL: docker stop -t 60 / stop_grace_period: 60s
# (Docker's default of 10 s cuts long streams and can leave rows to be replayed from the journal).
STOPSIGNAL SIGTERM
ENTRYPOINT ["gateway"]
CMD ["serve"]
