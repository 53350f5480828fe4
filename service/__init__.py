"""costsim-analytics: storage and analysis backbone for cost simulation.

Layers, outermost first (imports only point inward)::

    api/        gRPC servicer and proto <-> domain conversion (the only *_pb2 importer)
    handlers/   one class per operation, the operation registry, the unit of work
    engines/    domain rules: hashing, validation, pagination, statistics (no grpc, no SQL)
    drivers/    SQLAlchemy tables and typed drivers (all SQL; they never commit)
    bootstrap.py  the composition root

Outside the layers, ``client/`` is the client library (the base install, without the server's
dependencies): every RPC, and the durable ProvenanceWriter (docs/client.md).
"""

__version__ = "0.1.0"
