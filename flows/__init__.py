"""Prefect flows (catalogue, title, demo), the run folder they keep, and the command line."""
