"""AMS: a filesystem-native mail and bulletin-board system.

Packages: ``ams.store`` (the shared store), ``ams.index`` (local indexes),
``ams.protocols`` (sans-IO protocol cores), ``ams.cli`` (the ``ams``
command).  The roles live in ``delivery``, ``gateways`` and ``bboard``.
"""

__version__ = "0.1.0"
