"""Fake `sbatch`, `srun`, `scontrol` and `scancel` that run a SLURM script on this machine.

`install(bin_dir, state_dir)` writes them to `bin_dir` (put it first on PATH). They do what the
scripts in scripts/slurm/ need of SLURM, on "nodes" that are local processes:

- ``sbatch [--nodes=N] [--parsable] SCRIPT ARGS``: reads the script's ``#SBATCH`` lines
  (command-line options win, as in sbatch), sets the SLURM_* variables of a job and runs
  ``bash SCRIPT ARGS`` in the foreground (the job starts at once), writing the batch shell's
  pid to ``STATE/batch.pid`` and its exit status to ``STATE/job.status``;
- ``srun [options] CMD ARGS``: runs CMD once per node, each in its own session with
  SLURM_NODEID / SLURM_PROCID set, records the session pids in ``STATE/step.pids`` and exits
  with the highest status;
- ``scontrol show hostnames LIST`` prints the comma-separated LIST one per line;
  ``scontrol requeue ID`` appends ``requeue ID`` to ``STATE/calls.log``;
- ``scancel --signal=SIG ID`` sends SIG to every node's session (the torchrun agents forward
  it to their workers) and appends ``scancel SIG ID`` to ``STATE/calls.log``.

Every node is ``localhost``; the GPUs of a node are ``FAKE_GPUS_PER_NODE`` (default 1: one
CPU worker a node).
"""

from __future__ import annotations

import stat
from pathlib import Path

SBATCH = r"""#!/bin/bash
state=${FAKE_SLURM_STATE:?}
nodes= cpus= parsable=0
while [ $# -gt 0 ]; do
    case $1 in
        --nodes=*) nodes=${1#*=} ;;
        --cpus-per-task=*) cpus=${1#*=} ;;
        --parsable) parsable=1 ;;
        -*) ;;
        *) break ;;
    esac
    shift
done
script=$1; shift
sb() { sed -n "s/^#SBATCH --$1=\([^ ]*\).*/\1/p" "$script" | head -n 1; }
nodes=${nodes:-$(sb nodes)}; cpus=${cpus:-$(sb cpus-per-task)}
id=$(( $(cat "$state/last_id" 2>/dev/null || echo 1000) + 1 )); echo "$id" > "$state/last_id"
list=$(printf 'localhost,%.0s' $(seq "$nodes")); list=${list%,}
[ "$parsable" = 1 ] && echo "$id"
export SLURM_JOB_ID=$id SLURM_JOBID=$id SLURM_NNODES=$nodes SLURM_JOB_NUM_NODES=$nodes \
    SLURM_JOB_NODELIST=$list SLURM_CPUS_PER_TASK=$cpus SLURM_SUBMIT_DIR=$PWD \
    SLURM_GPUS_ON_NODE=${FAKE_GPUS_PER_NODE:-1} SLURM_JOB_NAME=$(sb job-name)
bash "$script" "$@" &
echo $! > "$state/batch.pid"
wait $!
status=$?
echo "$status" > "$state/job.status"
exit "$status"
"""

SRUN = r"""#!/bin/bash
state=${FAKE_SLURM_STATE:?}
while [ $# -gt 0 ]; do
    case $1 in
        -*) ;;
        *) break ;;
    esac
    shift
done
: > "$state/step.pids"
pids=()
for ((i = 0; i < SLURM_NNODES; i++)); do
    SLURM_NODEID=$i SLURM_PROCID=$i SLURM_LOCALID=0 setsid "$@" &
    pids+=($!)
    echo $! >> "$state/step.pids"
done
worst=0
for pid in "${pids[@]}"; do
    wait "$pid"; s=$?
    [ "$s" -gt "$worst" ] && worst=$s
done
exit "$worst"
"""

SCONTROL = r"""#!/bin/bash
state=${FAKE_SLURM_STATE:?}
case "$1 $2" in
    "show hostnames") echo "$3" | tr ',' '\n' ;;
    requeue*) echo "requeue $2" >> "$state/calls.log" ;;
    *) echo "fake scontrol: unsupported: $*" >&2; exit 1 ;;
esac
"""

SCANCEL = r"""#!/bin/bash
state=${FAKE_SLURM_STATE:?}
sig=TERM
for a in "$@"; do
    case $a in
        --signal=*) sig=${a#*=} ;;
        -*) ;;
        *) id=$a ;;
    esac
done
echo "scancel $sig $id" >> "$state/calls.log"
while read -r pid; do
    kill -s "$sig" -- "-$pid" 2>/dev/null
done < "$state/step.pids"
exit 0
"""


def install(bin_dir: Path, state_dir: Path) -> None:
    """Write the four executables to `bin_dir`; `state_dir` is created (FAKE_SLURM_STATE)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (("sbatch", SBATCH), ("srun", SRUN), ("scontrol", SCONTROL)):
        _write(bin_dir / name, text)
    _write(bin_dir / "scancel", SCANCEL)


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def calls(state_dir: Path) -> list[str]:
    """The requeue / scancel calls made so far."""
    log = state_dir / "calls.log"
    return log.read_text().splitlines() if log.exists() else []
