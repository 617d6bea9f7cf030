"""The vendors' clients (one module per vendor), the pool their calls run on, and redaction."""
