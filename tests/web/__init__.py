"""Tests of mcp_credgate.web: the dashboard over HTTP, and in a real browser."""
