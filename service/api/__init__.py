"""Transport: the gRPC servicer, server, client and proto <-> domain conversion."""
