"""Plain scripts that build project data (run them with ``python -m apps.scripts.<name>``)."""
