"""Layer 3, run: durable execution (spec 7.8, 7.9).

The idempotent action journal (``run_once``), the task scheduler (a pure "what is
due at time t" over task records and an injected clock), the task queue and the
agent loop (and next: policies). Talks to the capsule through the small protocols
it declares, so it imports ``core``, ``format`` and ``state`` only, never ``search``
or the handle.
"""
