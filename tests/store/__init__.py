"""Tests of mcp_credgate.store: the Store (core), the PostgreSQL backend, keys staged ahead of a rotation."""
