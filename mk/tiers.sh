#!/usr/bin/env bash
# Time the tiers of a test run, so every run shows where its time goes.
#
#   mk/tiers.sh LOG NAME COMMAND [ARG...]   run COMMAND; append "NAME<TAB>seconds<TAB>ok|failed" to LOG;
#                                           exit with COMMAND's status
#   mk/tiers.sh LOG --print                 print LOG as a table, with the total
set -uo pipefail
log=$1
shift
mkdir -p "$(dirname "$log")"
if [[ $1 == --print ]]; then
  [[ -s $log ]] || exit 0
  echo
  echo "tier durations ($log):"
  awk -F'\t' '{ printf "  %-22s %7.1f min  %s\n", $1, $2 / 60, $3; total += $2 }
              END { printf "  %-22s %7.1f min\n", "total", total / 60 }' "$log"
  exit 0
fi
name=$1
shift
start=$(date +%s)
"$@"
status=$?
echo -e "$name\t$(($(date +%s) - start))\t$( ((status == 0)) && echo ok || echo "failed ($status)")" >>"$log"
exit $status
