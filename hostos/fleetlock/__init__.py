"""FleetLock: reboot coordination as Zincati speaks it, served from etcd.

`protocol` holds the wire format both sides share, `semaphore` the
etcd-backed counting semaphore, `server` the aiohttp server behind
`hostos fleetlock serve`, and `client` the update agent's side.
"""
