#!/usr/bin/env bash
# One `concur load` agent per host with pdsh, then one merge.
#
# Assumes: pdsh's ssh module works to every host without a password prompt;
# `concur` is on each host's PATH; the hosts' clocks agree (chrony or NTP);
# the server at ADDR is reachable from every host.
#
#   deploy/agents-pdsh.sh ADDR HOSTLIST [MORE LOAD ARGS]
#   e.g. deploy/agents-pdsh.sh 10.0.0.1:25000 load[1-3] --conns 100 --duration 30s
#
# `pdsh -N` drops the "host: " prefix, so the agents' JSON objects arrive one after
# another on one stream, which `concur merge -` reads as they are.
set -euo pipefail
addr=$1
hosts=$2
shift 2
start=$(( $(date +%s) + ${LEAD:-5} ))
out=${OUT:-concur-agents.json}
export PDSH_RCMD_TYPE=${PDSH_RCMD_TYPE:-ssh}
pdsh -N -w "$hosts" concur load --addr "$addr" --start-at "$start" --json "$@" > "$out" || true
concur merge - < "$out"
