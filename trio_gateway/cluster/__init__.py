"""Many gateway instances, one state: session lanes, run slots, the run registry and aborts
shared through PostgreSQL (``session.store: "postgres"``; see docs/scale-out.md).

- :mod:`.lanes`: admission across instances (FIFO lanes with fencing epochs, the cluster cap);
- :mod:`.registry`: the runs of every instance, abort requests, kept results;
- :mod:`.listener`: the LISTEN connection (the fast path of wake-ups and aborts);
- :mod:`.node`: this instance's part, with its heartbeat and background tasks.

Builds on ``pg``; must not import the agent, the server or the CLI (the runtime uses it).
"""

from .lanes import Entry as Entry
from .lanes import Finished as Finished
from .lanes import Grant as Grant
from .node import ClusterNode as ClusterNode
from .node import ClusterSettings as ClusterSettings
from .registry import LiveRun as LiveRun
