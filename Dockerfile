# syntax=docker/dockerfile:1
# costsim-analytics: the gRPC service in a slim, non-root image.
# The generated Protobuf code is committed under service/_generated, so no protoc runs here.

# --- builder: build the project's wheel and install it with its dependencies into a venv -------
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY migrations ./migrations

RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install /wheels/costsim_analytics-*.whl

# --- runtime: the venv only, no sources, no build tools ----------------------------------------
FROM python:3.11-slim AS runtime

RUN groupadd --system --gid 10001 costsim \
 && useradd --system --uid 10001 --gid costsim --home-dir /app --shell /usr/sbin/nologin costsim \
 && mkdir -p /app/var/artifacts \
 && chown -R costsim:costsim /app

# Same path as in the builder: a venv's scripts carry its absolute path.
COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    COSTSIM_LISTEN=0.0.0.0:50051 \
    COSTSIM_HTTP_LISTEN=0.0.0.0:8080

# Relative defaults (sqlite:///var/costsim.db, var/artifacts) resolve under /app/var: mount a
# volume there to keep the SQLite database, or set COSTSIM_DATABASE_URL to PostgreSQL.
WORKDIR /app
USER costsim:costsim
# 50051: gRPC; 8080: the read-only dashboard, /metrics, /healthz and /readyz.
EXPOSE 50051 8080

# Healthy only while the gRPC health service reports the API as SERVING (database reachable and
# its schema at head). Any error, including a refused connection, exits 1.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
  CMD ["/opt/venv/bin/python", "-c", "import sys, grpc; from grpc_health.v1 import health_pb2, health_pb2_grpc; stub = health_pb2_grpc.HealthStub(grpc.insecure_channel('127.0.0.1:50051')); reply = stub.Check(health_pb2.HealthCheckRequest(service='costsim.analytics.v1.AnalyticsService'), timeout=3); sys.exit(0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1)"]

ENTRYPOINT ["costsim-analytics"]
CMD ["serve"]
