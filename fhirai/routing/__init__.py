"""Routing: model records and which registered model gets which study."""
