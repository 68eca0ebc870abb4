"""Serving: what runs the gateway and the dashboard for clients.

`stdio` serves one group over stdio; `http` builds and runs the Starlette app of remote agents (and the
dashboard alone) under uvicorn; `lifecycle` holds what both share (SIGHUP reload). Nothing below imports them.
The guard in front of every HTTP app is `mcp_credgate.guard`, below both this package and the dashboard.
"""
