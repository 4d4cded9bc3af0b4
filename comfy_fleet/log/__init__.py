"""The event log: events, the fold, the log's ports and its PostgreSQL implementation."""
