"""Field-device drivers, installed as ``edge_agent.drivers``.

Each driver kind lives in its own subpackage and is reached through the registry in
:mod:`edge_agent.drivers.registry`, imported only when a configured device uses it (an
unused protocol stack costs no memory).
"""
