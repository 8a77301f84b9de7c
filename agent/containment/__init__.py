"""Task containment: nothing a task starts outlives it.

``jail.Containment`` picks, once per executor, how this host contains task
runs -- cgroups (``cgroups``) when the agent is root and a hierarchy is
usable, else one subreaper per run (``subreaper``) -- and whether memory and
pids limits can be enforced.  The executor asks it for one jail per run and
kills through that jail; ``agent.watchdog`` kills registered cgroups too.
"""

from agent.containment.jail import (
    CgroupJail,
    Containment,
    Jail,
    Mode,
    SubreaperJail,
    format_size,
    usage_pids,
)

__all__ = [
    "CgroupJail", "Containment", "Jail", "Mode", "SubreaperJail", "format_size", "usage_pids",
]
