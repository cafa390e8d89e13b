"""Events: what happened to the mirror, told to the outside.

Code that does the work (sync/, lifecycle/) records an event in the catalog's outbox
(`Catalog.emit_event`, one small insert, never failing the work). In every server process a
`Dispatcher` (dispatcher.py, started by app.py) takes new events with a compare-and-set UPDATE, so
that exactly one process handles each, and turns them into

* webhook deliveries (`[[notify]]`, notify.py): signed POSTs, retried with backoff, each a row of
  the delivery log, claimed with a compare-and-set UPDATE too, so a delivery survives a restart
  and is sent by one process of many;
* post-sync hook runs (`[[hooks]]`, hooks.py): a command run on a read-only snapshot of a newly
  mirrored commit, its result recorded per (repo, commit, hook).

This package imports only the catalog, the store and the model; its settings (settings.py) are
imported by config.py, so this file imports nothing.
"""
