"""Feast's side of scoregraph: the feature repository, the training matrix, the features service.

`import feast` runs `feast.metrics`, which is written for `feast serve`'s pre-forked gunicorn workers:
unless PROMETHEUS_MULTIPROCESS_DIR is set, it makes a directory `feast_metrics_*` in the temporary
directory, names it in PROMETHEUS_MULTIPROCESS_DIR and PROMETHEUS_MULTIPROC_DIR, removes it only at a clean
exit, and then imports prometheus_client. A features replica therefore kept every metric of its own in
files there (prometheus_client's multiprocess mode, values read back by pid), left the directory behind
whenever it was killed, and a process that imported feast (the benchmark, the tests) passed the setting on
to every process it started: their stacks kept their metrics in its directory. The `services` package
imports prometheus_client before feast can be imported, and `forget_feast_metrics_dir`, called once feast
is, takes back what feast set up.
"""

import os
import shutil

_DIR_VARIABLES = ("PROMETHEUS_MULTIPROCESS_DIR", "PROMETHEUS_MULTIPROC_DIR")


def forget_feast_metrics_dir() -> None:
    """Remove the directory importing feast made in this process, and its names from the environment, unless
    this process's metrics keep their values in it (prometheus_client imported after feast, or pointed at it
    on purpose)."""
    import feast.metrics
    import prometheus_client.values

    made = feast.metrics._prometheus_mp_dir if feast.metrics._owns_mp_dir else None
    if made is None or feast.metrics._owner_pid != os.getpid():
        return
    if prometheus_client.values.ValueClass is not prometheus_client.values.MutexValue and (
        os.environ.get("PROMETHEUS_MULTIPROC_DIR") == made
    ):
        return
    for name in _DIR_VARIABLES:
        if os.environ.get(name) == made:
            del os.environ[name]
    shutil.rmtree(made, ignore_errors=True)
