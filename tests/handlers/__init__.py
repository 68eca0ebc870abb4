"""Tests of mcp_credgate.handlers: one file per handler kind (http, python, upstream MCP servers)."""
