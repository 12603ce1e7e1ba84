"""The nightly run: scoring newly arrived bin images and monitoring drift."""
