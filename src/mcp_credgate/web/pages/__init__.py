"""The dashboard's pages, one module per family: sign-in (and the guard every other page is behind),
credentials, agent groups, agents, the setup page that warnings link to, and the audit log. Every list is read a
page at a time (`web.paging`)."""
