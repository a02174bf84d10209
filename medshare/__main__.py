"""`python -m medshare` = the `medshare` command (used where the console script is not on PATH)."""

from medshare.cli import app

app()
