"""Consumers of the library: command line, exporter, live view. Nothing below imports them."""
