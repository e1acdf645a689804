"""Protocol adapters: wire formats <-> domain calls. No business rules."""
