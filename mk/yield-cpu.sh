#!/usr/bin/env bash
# Run a command at a low CPU weight, in a session of its own: for the tests that run beside the stack tests,
# so that they take the CPU the stack leaves idle instead of half of the stack's.
#
#   mk/yield-cpu.sh COMMAND [ARG...]    exit with COMMAND's status; INT, TERM and HUP reach all of it
#
# Linux weighs a session's processes together (autogroup scheduling, on by default) and, with cgroup v1 and
# Docker's cgroupfs driver, all of Docker's containers together too: tests in make's session weighed as much
# as the whole stack. On two cores (2026-12-02), two CPU-bound processes in a container took 1.7 times as long
# beside two busy processes of the calling session; beside the same two run through this script, 1.1 times.
# YIELD_NICE sets the level (10: under a fully busy stack the command still gets a tenth, so its own
# timeouts hold). Where autogroups do not exist, plain nice is what is left.
set -u
level=${YIELD_NICE:-10}
setsid bash -c 'echo "$0" >/proc/self/autogroup 2>/dev/null; exec nice -n "$0" "$@"' "$level" "$@" &
child=$!
# Its own session is not the terminal's: pass the signals on, to its whole process group.
trap 'kill -TERM -- "-$child" 2>/dev/null' INT TERM HUP
while true; do
  wait "$child"
  status=$?
  kill -0 "$child" 2>/dev/null || break # wait returned for a signal: the command may still be ending
done
exit "$status"
