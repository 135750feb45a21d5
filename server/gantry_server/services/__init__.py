"""One module per proto service: translate proto <-> domain, no business logic, no SQL."""
