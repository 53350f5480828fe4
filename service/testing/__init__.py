"""Fault-injection helpers shared by the end-to-end tests and the benchmarks.

Nothing in the service imports this package: it holds the tools that take things away from a
running server (:class:`~costsim_analytics.testing.tcp_proxy.TcpProxy` cuts its database) and
the client side of surviving that (:mod:`costsim_analytics.testing.retry`: which codes a
caller retries, and after how long).
"""
