"""Metrics: each defined once, computed the same way on every node, kept in a
bounded history and served to Prometheus.

* ``catalog.py``  -- every metric: report key, unit, formula, scope, source,
  Prometheus name (the one place a metric is defined);
* ``windows.py``  -- trailing windows, counter rates, nearest-rank percentiles;
* ``trackers.py`` -- leader changes from committed terms, partition recovery,
  hotspots by the scheduler's rule on gossiped load;
* ``engine.py``   -- the figures, from one ``Inputs`` snapshot (sans-IO);
* ``history.py``  -- ring buffers at 1 s / 10 s / 5 min with a fixed memory
  bound, saved compactly and atomically in the data dir;
* ``prom.py``, ``http.py`` -- the Prometheus collector and the ``/metrics``
  endpoint on the agent's event loop;
* ``service.py``  -- the agent component that ties them together;
* ``config.py``   -- the ``[metrics]`` table.

The protocol-free parts (catalog, windows, trackers, engine, history) take
time as an argument and do no I/O.
"""
