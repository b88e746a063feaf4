"""Rows as text, tables, reports, HTML and plots."""
