"""The door, as pure ASGI middleware with one job each: `auth` (who is asking) and
`body_limit` (how much they may send). Both answer before any routing or parsing happens."""
