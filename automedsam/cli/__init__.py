"""Typer apps behind the console scripts: thin layers over the stage functions."""
