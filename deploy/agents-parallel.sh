#!/usr/bin/env bash
# One `concur load` agent per host over ssh, launched by GNU parallel, then one merge.
#
# Assumes: ssh to every host works without a password prompt; `concur` is on each
# host's PATH; the hosts' clocks agree (chrony or NTP: --start-at is wall-clock time,
# so clock skew becomes start skew); the server at ADDR is reachable from every host.
#
#   deploy/agents-parallel.sh ADDR HOST... [-- MORE LOAD ARGS]
#   e.g. deploy/agents-parallel.sh 10.0.0.1:25000 load1 load2 load3 -- --conns 100 --duration 30s
#
# Each agent's report lands in $OUT/HOST.json (default ./concur-agents); the merged
# table is printed, the merged JSON written to $OUT/merged.json. LEAD (default 5)
# is how many seconds ahead the common start time is set: enough for ssh to connect.
set -euo pipefail
addr=$1
shift
hosts=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do hosts+=("$1"); shift; done
[ "${1:-}" = -- ] && shift
out=${OUT:-concur-agents}
mkdir -p "$out"
start=$(( $(date +%s) + ${LEAD:-5} ))
# The load arguments, quoted once for the remote shell.
args=$(printf '%q ' --addr "$addr" --start-at "$start" --json "$@")
status=0
parallel --jobs 0 "ssh -o BatchMode=yes {} concur load $args > $out/{}.json" ::: "${hosts[@]}" || status=$?
# An agent that saw errors exits 1 but still wrote its report: merge them all.
reports=()
for h in "${hosts[@]}"; do reports+=("$out/$h.json"); done
concur merge --json "${reports[@]}" > "$out/merged.json"
concur merge "${reports[@]}"
exit "$status"
