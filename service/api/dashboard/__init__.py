"""The HTTP side port: read-only dashboard pages, ``/metrics``, ``/healthz`` and ``/readyz``."""
