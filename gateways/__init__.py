"""Gateways: the inbound MX (``ams mx``), submission (``ams submission``) and
the outbound gateways (``ams gateway``).

- :func:`serve_mx`: SMTP for the local domains, writing accepted mail into
  the sharded spool and answering 250 only once it is durable.
- :func:`serve_submission`: authenticated SMTP submission (RFC 6409) for
  the store's users; local recipients to ``in``, remote ones to ``out``.
- :func:`serve_gateways` / :func:`gateway_main`: the pool that relays the
  ``out`` queue to remote hosts, with retries from time-bucketed deferred
  queues and RFC 3464 bounces.
- :class:`SMTPServer` / :class:`Policy`: the trio driver shared by every
  SMTP listener, over the sans-IO core in ams.protocols.smtp.
"""

from gateways._mx import MXPolicy, mx_options, serve_mx, server_ssl_context
from gateways._outbound import GatewayOptions, GatewayPool, gateway_main, serve_gateways
from gateways._routes import Hop, Route, Router
from gateways._smtp_server import (
    Policy,
    ServerOptions,
    Session,
    SMTPServer,
    parse_listen,
    serve_smtp,
)
from gateways._submission import SubmissionPolicy, serve_submission

__all__ = [
    "GatewayOptions", "GatewayPool", "Hop", "Route", "Router", "SubmissionPolicy",
    "gateway_main", "serve_gateways", "serve_submission",
    "MXPolicy", "Policy", "SMTPServer", "ServerOptions", "Session", "mx_options", "parse_listen",
    "serve_mx", "serve_smtp", "server_ssl_context",
]
