# One slim, non-root image for all three services; the compose file picks the module to run.
FROM python:3.11-slim AS build
RUN pip install --no-cache-dir uv==0.13.8
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
COPY shared ./shared
COPY services ./services
COPY sipctl ./sipctl
COPY devtools ./devtools
RUN uv sync --frozen --no-dev --no-editable

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app sip
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
COPY config ./config
ENV PATH="/app/.venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    SIP_DATA_DIR=/app/var
RUN mkdir -p /app/var && chown sip /app/var
USER sip
EXPOSE 8080 8081 8082 2575
CMD ["python", "-m", "services.planning"]
