"""Serving: what runs the gateway and the dashboard for clients.

`stdio` serves one group over stdio; `http` builds and runs the Starlette app of remote agents (and the
dashboard alone); `lifecycle` holds what both share (SIGHUP reload, uvicorn). `guard` is the Host/Origin,
query-token and body-size guard in front of every HTTP app, the dashboard's included: it imports nothing
above it, so the dashboard uses it from below while the entry points here use the dashboard from above.
"""
