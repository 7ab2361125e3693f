"""``[core] hostname_callable`` of the native cluster (``scripts/cluster/cluster.sh``).

All Airflow workers of the native cluster share one machine, so ``socket.getfqdn()`` would
give every task instance the same ``hostname``. Each service instead reports its
docker-compose service name (``worker-site-a@<fqdn>``) -- what separate machines would
report anyway -- so the placement of a site's tasks on that site's worker is visible in the
task instance (UI, REST API) and checked by ``tests/integration``.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    """``<service>@<fqdn>``; the plain FQDN outside the native cluster."""
    node = os.environ.get("AIRFLOW_PRIVACY_CLUSTER_NODE")
    fqdn = socket.getfqdn()
    return f"{node}@{fqdn}" if node else fqdn
