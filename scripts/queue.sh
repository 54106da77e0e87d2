#!/usr/bin/env bash
# Run the commands of a queue file one at a time, in order, each once: lines may be appended while it runs, and
# a rerun resumes after the last one done (QUEUE.done). For days of CPU training on a small machine:
#   nohup nice -n 19 bash scripts/queue.sh runs/queue.txt > runs/queue.log 2>&1 &
# A line that fails is logged and recorded as failed; the queue goes on with the next. QUEUE.done holds
# "status<TAB>time<TAB>command" for each line run.
set -u
queue=${1:?usage: scripts/queue.sh QUEUE_FILE}
done_file="$queue.done"
touch "$done_file"
while true; do
  next=$(grep -v '^\s*\(#\|$\)' "$queue" | grep -vxFf <(cut -f 3- "$done_file") | head -n 1)
  [ -n "$next" ] || { echo "$(date -Is) queue empty"; break; }
  echo "$(date -Is) start: $next"
  if bash -c "$next"; then status=ok; else status=failed; fi
  printf '%s\t%s\t%s\n' "$status" "$(date -Is)" "$next" >> "$done_file"
  echo "$(date -Is) $status: $next"
done
