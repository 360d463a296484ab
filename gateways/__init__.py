"""Gateways: the inbound MX (``ams mx``); submission and outbound to come.

- :func:`serve_mx`: SMTP for the local domains, writing accepted mail into
  the sharded spool and answering 250 only once it is durable.
- :class:`SMTPServer` / :class:`Policy`: the trio driver shared by every
  SMTP listener, over the sans-IO core in ams.protocols.smtp.
"""

from gateways._mx import MXPolicy, mx_options, serve_mx, server_ssl_context
from gateways._smtp_server import (
    Policy,
    ServerOptions,
    Session,
    SMTPServer,
    parse_listen,
    serve_smtp,
)

__all__ = [
    "MXPolicy", "Policy", "SMTPServer", "ServerOptions", "Session", "mx_options", "parse_listen",
    "serve_mx", "serve_smtp", "server_ssl_context",
]
