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
 && /opt/venv/bin/pip install "$(ls /wheels/costsim_analytics-*.whl)[server]"

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
# volume there to keep the SQLite database, or set COSTSIM_DATABASE_URL to PostgreSQL. With more
# than one replica, set COSTSIM_ARTIFACTS_URL=s3://bucket/prefix (boto3 is in the server extra;
# endpoint and credentials from the AWS_* variables or the pod's role) or mount a shared volume.
WORKDIR /app
USER costsim:costsim
# 50051: gRPC; 8080: the read-only dashboard, /metrics, /healthz and /readyz.
EXPOSE 50051 8080

# Healthy only while /readyz on the side port answers 200 (the gRPC health status is SERVING:
# database reachable, schema at head). It asks over loopback, with HTTPS when the service has a
# certificate (not verified: it is the container's own port), so it needs no client certificate
# even with mTLS. With COSTSIM_METRICS_AUTH=all the probe needs credentials: override it then.
# Without a policy the image refuses 0.0.0.0 (the explicit insecure mode): configure TLS and a
# policy (docs/security.md), or set COSTSIM_INSECURE=true behind a private network.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
  CMD ["/opt/venv/bin/python", "-c", "import os, ssl, sys, urllib.request; tls = bool(os.environ.get('COSTSIM_TLS_CERT')); port = os.environ.get('COSTSIM_HTTP_LISTEN', '0.0.0.0:8080').rsplit(':', 1)[1]; url = ('https' if tls else 'http') + '://127.0.0.1:' + port + '/readyz'; ctx = ssl._create_unverified_context() if tls else None; sys.exit(0 if urllib.request.urlopen(url, timeout=3, context=ctx).status == 200 else 1)"]

ENTRYPOINT ["costsim-analytics"]
CMD ["serve"]
