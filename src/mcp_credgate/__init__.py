"""mcp-credgate: an MCP server that stands in front of tools and keeps their secrets on its side."""

__version__ = "0.1.0"

__all__ = ["__version__"]
