"""`ray start` for a SECOND node on 127.0.0.1 (test helper, run as a script: python THIS start --address ...).

Ray on Linux rewrites a node address of 127.0.0.1 to the machine's interface address and binds there;
its switch against that (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, what the head and the embedded cluster use)
also makes `ray start` refuse to join a cluster. This wrapper keeps the CLI's join path and pins the
address resolution of this process to loopback; the node's own processes inherit the switch, so every
server of the node binds 127.0.0.1 like the head's.
"""

import os
import sys

import ray._private.services as services

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # for the raylet, agents and workers started below
services.get_node_ip_address = lambda address=None: "127.0.0.1"

from ray.scripts.scripts import main  # noqa: E402

sys.argv = ["ray", *sys.argv[1:]]
sys.exit(main())
