#!/usr/bin/env bash
# Time the tiers of a test run, so every run shows where its time goes.
#
#   mk/tiers.sh LOG NAME COMMAND [ARG...]   run COMMAND; append "NAME<TAB>seconds<TAB>ok|failed<TAB>start<TAB>end"
#                                           (epoch seconds) to LOG; exit with COMMAND's status
#   mk/tiers.sh LOG --print                 print LOG as a table, with the wall time from the first start to
#                                           the last end (tiers that ran side by side overlap: no plain sum)
set -uo pipefail
log=$1
shift
mkdir -p "$(dirname "$log")"
if [[ $1 == --print ]]; then
  [[ -s $log ]] || exit 0
  echo
  echo "tier durations ($log):"
  awk -F'\t' '{ printf "  %-22s %7.1f min  %s\n", $1, $2 / 60, $3
                if (first == "" || $4 < first) first = $4
                if ($5 > last) last = $5 }
              END { printf "  %-22s %7.1f min  (wall, first start to last end)\n", "total", (last - first) / 60 }' "$log"
  exit 0
fi
name=$1
shift
start=$(date +%s)
"$@"
status=$?
end=$(date +%s)
echo -e "$name\t$((end - start))\t$( ((status == 0)) && echo ok || echo "failed ($status)")\t$start\t$end" >>"$log"
exit $status
