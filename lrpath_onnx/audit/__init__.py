"""``lrpath audit``: per-image checks of a model's reasoning, for CI (audit.json, junit.xml)."""
