"""Runs on disk, and what is read from them: compare, check, merge."""
