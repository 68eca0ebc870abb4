"""The web dashboard: credentials, agent groups, the setup pages that warnings link to, and the audit log.

- `app`: the routes, and `credgate dashboard`'s app (the pages alone, behind the HTTP guard);
- `site`: `Site`, the app-lifetime object (its own store connection, declarations, sessions, templates), and
  how a page answers; `Site.run` puts a page's work in a worker thread;
- `pages/`: one module per page family: `signin` (and the guard every other page is behind), `credentials`
  (with OAuth2 connections), `groups`, `setup`, `audit`;
- `forms`: a credential type's inputs, the values filled in and each field's problem; `session`: the admin
  secret, session cookies and CSRF tokens; `connections`: the OAuth2 connections under way.
"""
