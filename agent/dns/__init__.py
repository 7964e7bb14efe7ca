"""Names from the neighbor table (pure zone) and the resolver that serves them."""
