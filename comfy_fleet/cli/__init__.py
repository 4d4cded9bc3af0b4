"""Command-line tools: migrate, rebuild the read model, re-upload kept outputs."""
