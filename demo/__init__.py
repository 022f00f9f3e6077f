"""The taskrt web demo: ``make demo`` (or ``python -m demo``) serves it on http://127.0.0.1:8000."""
