"""Sans-IO protocol cores: pure state machines fed bytes, emitting events.

They never import trio, socket, os or lmdb (a test enforces it); the trio
drivers in gateways/ and ams/imap/ do the I/O.
"""
