"""The dashboard's pages, one module per family: sign-in (and the guard every other page is behind),
credentials, agent groups, the setup page that warnings link to, and the audit log."""
