"""Reports: run summaries, tables and figures computed from records."""
