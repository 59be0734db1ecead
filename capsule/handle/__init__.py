"""Layer 4, handle: the ``Capsule`` facade, ``Transaction`` and open / create / fork.

The handle owns the open file, the snapshot and the writer (through a
``format.store.Store``) and delegates each feature to its layer: reads and commits
to ``format``, checkpoints, keys and views to ``state``, search to ``search``,
actions and tasks to ``run``. It adds no format logic of its own.
Imports every layer below it (core to run); only verifier, ingest, sync,
integrations and the public ``capsule`` namespace import it.
"""
