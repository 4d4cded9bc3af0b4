"""Pure policies: routing, placement, and which outgoing URLs may be called."""
