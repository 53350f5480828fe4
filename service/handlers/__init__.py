"""Handlers: one class per operation; each owns its unit of work."""
