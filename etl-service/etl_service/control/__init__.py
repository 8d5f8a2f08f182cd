"""The control plane: one worker at a time, and commands handed to it.

`worker_lock` says who holds the ETL (the running worker, or a command run
directly); `commands` is the queue in the state database; `execute` runs one
command on a SyncEngine; `dispatch` is the CLI side (hand the command to the
worker and wait, or run it directly when no worker runs).
"""
