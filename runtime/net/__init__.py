"""Container networking (issue 4): bridges, veths, IPAM, published ports, DNS.

The only package that imports pyroute2 (in `netlink.py`). See README.md for
the flow and the API the engine, the API and the CLI call.
"""
