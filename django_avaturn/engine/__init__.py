"""The site engine: the conversation runs inside the site (see docs/site-engine.md)."""
