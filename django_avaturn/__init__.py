"""A live, talking AI avatar (Avaturn Live + OpenAI Realtime) for Django sites."""

__version__ = "0.1.0"
