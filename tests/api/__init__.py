"""The API as documented (OpenAPI), checked against the running service."""
