"""One module per kernel interface: pure parsers on bytes/str beside thin readers.

Nothing here knows of the Reader, Prometheus or a terminal.
"""
