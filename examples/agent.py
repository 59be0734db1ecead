"""A small agent loop to copy: remember, search, decide with evidence, act once, checkpoint.

    python examples/agent.py WORKDIR              # run the agent (or resume it) in WORKDIR
    python examples/agent.py WORKDIR --pause 0.5  # slowly, so you can kill -9 it and run it again

An on-call helper with no model: its policy is a few scripted lines (`policy`). It reads an
inbox of alerts; for each one it remembers the alert, searches its runbook for what to do,
records a decision whose evidence is the alert and the runbook entry, acts (pages someone or
files a ticket) and closes the alert with a note and a signed checkpoint. Everything it knows
and did is in WORKDIR/agent.capsule; its side effects go to WORKDIR/outbox.jsonl, which stands
for the outside world (a pager, a ticket system).

Kill it at any moment and run it again: it picks up where it was and nobody is paged twice.
- Records carry explicit times, so a rerun writes the same records (the same content ids) and
  the capsule keeps one copy of each.
- The effect goes through ``cap.run_once(key, ...)``: the intent is committed before the effect
  runs and its result after. A key that is done returns its stored result without running the
  effect again; a key a crash left in doubt (intent, no result) is settled by ``reconcile``,
  which looks the key up in the outbox.
- An alert ends with a note and a checkpoint labelled ``alert-N`` in one commit, signed with
  WORKDIR/agent.key; a rerun skips the alerts whose checkpoint exists.

Inspect it afterwards:
    capsule state WORKDIR/agent.capsule          # memories, decisions with evidence, rules, identity
    capsule log WORKDIR/agent.capsule            # one row per commit
    capsule checkpoints WORKDIR/agent.capsule    # alert-1, alert-2, ... and who signed them
    capsule actions WORKDIR/agent.capsule        # the run_once journal: key, status, result
    capsule list WORKDIR/agent.capsule --kind decision
    capsule get WORKDIR/agent.capsule ID         # one record; a decision's evidence ids lead on
    capsule search WORKDIR/agent.capsule "disk database" --tag alert
    capsule verify WORKDIR/agent.capsule --trust WORKDIR/agent.key.pub
    capsule why WORKDIR/agent.capsule ID         # a decision's evidence, and what it rests on
    capsule timeline WORKDIR/agent.capsule --kind action --kind checkpoint
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import capsule

T0 = 1_767_603_600 * 10**9  # 2026-01-05T09:00:00Z: when the inbox's alerts came in
MINUTE = 60 * 10**9
AGENT = "oncall-helper"

#: What the agent knows before it starts: its runbook, one memory per rule, with what to do in meta.
RUNBOOK = [
    ("disk usage above 90% on a database host: page the storage on-call", {"act": "page", "to": "dana"}),
    ("payments latency over budget: page the payments on-call", {"act": "page", "to": "alice"}),
    ("a TLS certificate expires within 14 days: file a ticket for the platform team",
     {"act": "ticket", "to": "platform"}),
]

#: The inbox: what happens to the agent, in order.
ALERTS = [
    "db-3 disk usage at 94% on the primary database host",
    "payments p95 latency 900 ms, over budget for 10 minutes",
    "certificate for api.example.com expires in 5 days",
]


# --- the outside world: an append-only outbox file ------------------------------------------


def deliver(outbox: Path, key: str, action: dict[str, Any], text: str) -> dict[str, Any]:
    """The side effect: one line in the outbox (a pager or a ticket system in real life)."""
    line = {"key": key, **action, "text": text}
    with outbox.open("a") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return line


def lookup(outbox: Path) -> Any:
    """``reconcile`` for run_once: did an effect with this key reach the outside world?"""

    def reconcile(key: str) -> Any:
        if outbox.exists():
            for raw in outbox.read_text().splitlines():
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue  # a line cut short by a crash
                if line.get("key") == key:
                    return line  # it happened: this becomes run_once's stored result
        return capsule.NOT_DONE  # it did not: run_once runs the effect

    return reconcile


# --- the agent ------------------------------------------------------------------------------


def policy(alert: str, hits: list[capsule.Hit]) -> tuple[dict[str, Any], str]:
    """The "model": follow the best runbook hit, or escalate when nothing matches."""
    if not hits:
        return {"act": "page", "to": "incident-commander"}, "no runbook entry matches"
    rule = hits[0]
    return {"act": rule.meta["act"], "to": rule.meta["to"]}, f"runbook: {rule.text}"


def run(workdir: Path, pause: float = 0.0) -> int:
    def step(msg: str) -> None:
        print(msg, flush=True)
        time.sleep(pause)  # stands for the time a model call or a real API takes

    workdir.mkdir(parents=True, exist_ok=True)
    path, key_path, outbox = workdir / "agent.capsule", workdir / "agent.key", workdir / "outbox.jsonl"
    if not key_path.exists():
        capsule.save_private_key(key_path, capsule.generate_key(), passphrase=None)
    key = capsule.load_private_key(key_path)
    with capsule.create(path, exist_ok=True) as cap:  # a rerun opens what the last run left
        with cap.commit() as tx:  # explicit times: on a rerun these are the same records, kept once
            tx.set_identity(AGENT, name="On-call helper", model="scripted policy (no model)",
                            keys=[key.public_key], time=T0 - MINUTE)
            tx.constrain("page a person at most once per alert", scope="pager", time=T0 - MINUTE)
            for text, meta in RUNBOOK:
                tx.remember(text, tags=["runbook"], meta=meta, tier="validated", time=T0 - MINUTE)

        for n, alert in enumerate(ALERTS, 1):
            label = f"alert-{n}"
            if cap.find_checkpoint(label) is not None:
                print(f"{label}: done in an earlier run")
                continue
            at = T0 + n * MINUTE
            with cap.commit() as tx:
                alert_id = tx.remember(alert, tags=["alert"], meta={"alert": n}, time=at)
            step(f"{label}: remembered {alert_id[:12]}  {alert}")

            hits = cap.search(alert, mode="lexical", tags=["runbook"], k=1)
            action, why = policy(alert, hits)
            with cap.commit() as tx:
                decision = tx.decide(f"{action['act']} {action['to']} for alert {n}", rationale=why,
                                     evidence=[alert_id, *(h.id for h in hits)], time=at + 1)
            step(f"{label}: decided {decision[:12]}  {action['act']} {action['to']} ({why})")

            act_key = f"{action['act']}:{label}"  # the idempotency key: one per effect, stable across runs

            def effect(action: dict[str, Any] = action, alert: str = alert, k: str = act_key,
                       label: str = label) -> Any:
                sent = deliver(outbox, k, action, alert)
                step(f"{label}: sent {k} to {action['to']}")  # a kill here leaves the key in doubt
                return sent

            result = cap.run_once(act_key, effect, reconcile=lookup(outbox), what=action["act"],
                                  inputs={"decision": decision})
            with cap.commit() as tx:  # the note and a signed checkpoint: one commit, one fsync
                tx.note(f"alert {n} handled: {result['act']} {result['to']}", time=at + 2)
                tx.checkpoint(label, key=key)
            step(f"{label}: checkpoint signed")

        print(f"state root {cap.state_root[:16]}, {len(cap)} records, {cap.commit_count} commits; "
              f"outbox {outbox}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workdir", type=Path, help="where agent.capsule, agent.key and outbox.jsonl live")
    ap.add_argument("--pause", type=float, default=0.0, help="seconds to wait after each step")
    args = ap.parse_args(argv)
    try:
        return run(args.workdir, args.pause)
    except capsule.CapsuleError as e:
        print(f"agent: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
