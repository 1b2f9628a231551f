"""The web interface's parts beside the app factory in ``web_server.py``: ``common`` (what every route group
shares), ``access`` (password, sessions, host allowlist, CSRF origin check, login throttle, client address), and
the route groups ``pages``, ``api_status``, ``api_mode``, ``api_setup``, each with ``register(app, deps)``."""
