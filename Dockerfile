# One slim, non-root image for all three services; the compose file picks the module to run.
# The base image is a build argument so that it can be pinned by digest, e.g.
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:<digest> .
# (`docker buildx imagetools inspect python:3.11-slim` prints the current digest).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
RUN pip install --no-cache-dir uv==0.13.8
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
COPY shared ./shared
COPY services ./services
COPY sipctl ./sipctl
COPY devtools ./devtools
RUN uv sync --frozen --no-dev --no-editable

FROM ${PYTHON_IMAGE}
# a numeric user and group (10001), so that USER is resolvable without /etc/passwd and a
# Kubernetes runAsNonRoot check can verify it; no login shell, no home of its own
RUN groupadd --system --gid 10001 sip \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin sip
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
COPY config ./config
ENV PATH="/app/.venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    SIP_DATA_DIR=/app/var
RUN mkdir -p /app/var && chown 10001:10001 /app/var
USER 10001:10001
EXPOSE 8080 8081 8082 8083 2575
CMD ["python", "-m", "services.planning"]
