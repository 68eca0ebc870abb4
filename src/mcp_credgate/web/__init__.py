"""The web dashboard: credentials, agent groups, the setup pages that warnings link to, and the audit log."""
