"""The web interface's parts beside the app factory in ``web_server.py``: access control (password,
sessions, host allowlist, CSRF origin check, the login throttle's client address)."""
