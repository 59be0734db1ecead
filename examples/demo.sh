#!/usr/bin/env bash
# A short tour of the capsule command on a throwaway capsule.
set -euo pipefail
BIN=${1:-.venv/bin}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cap="$dir/agent.capsule"
run() { echo "\$ $*"; "$@"; echo; }
run "$BIN/capsule" init "$cap"
run "$BIN/capsule" put "$cap" --text "the staging database is db-stg-2" --tag infra --meta source=runbook
cat > "$dir/batch.jsonl" <<'JSONL'
{"text": "deploys are frozen on Fridays", "tags": ["policy"]}
{"text": "alice owns the billing service", "tags": ["people"], "meta": {"team": "payments"}}
{"text": "p95 latency budget is 300 ms", "tags": ["slo"], "embedding": [0.1, 0.7, 0.2]}
JSONL
run "$BIN/capsule" put "$cap" --jsonl "$dir/batch.jsonl"
run "$BIN/capsule" open "$cap"
run "$BIN/capsule" log "$cap"
run "$BIN/capsule" verify "$cap"
echo "# simulate a crash mid-append: cut the last 20 bytes"
truncate -s -20 "$cap"
run "$BIN/capsule" verify "$cap"
run "$BIN/capsule" put "$cap" --text "written after the crash; the torn tail was recovered"
run "$BIN/capsule" verify "$cap"
echo "# agent state: identity, a decision with evidence, a constraint, a signed checkpoint"
run "$BIN/capsule" keygen -o "$dir/agent.key"
run "$BIN/capsule" put "$cap" --kind identity --json-body '{"agent_id": "ops-agent", "name": "Ada", "model": "example"}'
run "$BIN/capsule" put "$cap" --kind constraint --json-body '{"text": "no production deploys on Fridays", "scope": "deploy"}'
run "$BIN/capsule" put "$cap" --kind decision --json-body '{"summary": "ship the billing fix on Thursday", "rationale": "Friday freeze"}'
run "$BIN/capsule" checkpoint "$cap" --label day-1 --key "$dir/agent.key"
run "$BIN/capsule" put "$cap" --text "an experiment that went wrong" --tag scratch
run "$BIN/capsule" state "$cap"
run "$BIN/capsule" rollback "$cap" --to day-1 --key "$dir/agent.key"
run "$BIN/capsule" checkpoints "$cap"
run "$BIN/capsule" verify "$cap" --trust "$dir/agent.key.pub"
run "$BIN/capsule" fork "$cap" --at day-1 -o "$dir/experiment.capsule"
run "$BIN/capsule" verify "$dir/experiment.capsule" --parent "$cap"
echo "# flip one byte inside committed data: verify names it"
printf '\xff' | dd of="$cap" bs=1 seek=300 conv=notrunc status=none
"$BIN/capsule" verify "$cap" || echo "(exit $? as expected)"

echo "# search: pack a folder of notes (chunked, path + chunk in meta), then ask it things"
run "$BIN/capsule" pack "$(dirname "$0")/notes" -o "$dir/notes.capsule"
run "$BIN/capsule" search "$dir/notes.capsule" "who do I page for payments" -k 3
run "$BIN/capsule" search "$dir/notes.capsule" "who do I page for payments" -k 3 --mode hybrid
run "$BIN/capsule" search "$dir/notes.capsule" "staging database" --mode lexical -k 2
run "$BIN/capsule" search "$dir/notes.capsule" "rollback during the deploy freeze" --mode vector -k 2 --json
run "$BIN/capsule" search "$dir/notes.capsule" "latency budget" --meta path=glossary.txt
run "$BIN/capsule" verify "$dir/notes.capsule"
