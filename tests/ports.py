"""The first port of each stack the test suite starts (a stack takes the 470 ports from there: see
`services.bench.processes.stack_ports`), one range per stack so that one stack's slow exit cannot leave the
next talking to a process of the last, and all of them away from `make up`'s defaults.

Every range lies below 32768, outside Linux's ephemeral ports (32768-60999 by default): a port in there can be
the source port of any outgoing connection on the machine (a test's channel to another stack, say), and the
stack then refuses to start on it as in use. That failed CI once, on a metrics port at 53466.
"""

STACK_BASES = {
    "session": 22000,
    "shutdown": 23000,
    "port in use": 23500,
    "slow replica": 24000,
    "hung replicas": 25000,
    "traced": 26000,
    "killed replica": 27000,
    "no pii": 29000,
}
