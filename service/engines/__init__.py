"""Domain logic: no grpc, no SQL, no generated code."""
