#!/bin/bash
# One node's torchrun agent, started by `srun` on every node of the job (pretrain.sbatch,
# linear_eval.sbatch): picks this node's network interface for gloo and NCCL, checks /dev/shm,
# then runs the same torchrun line on every node; the c10d rendezvous on the head node assigns
# the ranks. Usage (inside a SLURM allocation):
#     srun scripts/slurm/torchrun_node.sh HEAD_NODE PORT NPROC SCRIPT [ARGS...]
# Environment: MINC_IFNAME (the interface, if the route to the head node is not the right
# one), MINC_SHM_MB (the /dev/shm this node needs, MB; the sbatch script sets it).
set -euo pipefail

head_node=$1 port=$2 nproc=$3
shift 3

# The interface that reaches the head node: on the head node, the one holding its address;
# elsewhere, the route to it. On multi-homed nodes (Ethernet + InfiniBand, a management
# network) gloo and NCCL would otherwise pick the interface of the hostname, which may not be
# the one the other nodes can reach.
head_addr=$(getent ahostsv4 "$head_node" | awk 'NR == 1 {print $1}')
if [ -z "${MINC_IFNAME:-}" ]; then
    MINC_IFNAME=$(ip -o -4 addr show | awk -v a="$head_addr" 'index($4, a "/") == 1 {print $2; exit}')
    if [ -z "$MINC_IFNAME" ]; then
        MINC_IFNAME=$(ip -o -4 route get "$head_addr" | sed -n 's/.* dev \([^ ]*\).*/\1/p')
    fi
fi
export GLOO_SOCKET_IFNAME="$MINC_IFNAME" NCCL_SOCKET_IFNAME="$MINC_IFNAME"

# A restarted worker group (--max-restarts) gets a new store on a new port each rendezvous
# round; with the agents' shared store its workers would hang in gloo's connectFullMesh
# (scaled.distributed.check_elastic_launch refuses that launch).
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1


# Data-loader workers hand their batches to the trainer through /dev/shm.
shm_free_mb=$(df -Pm /dev/shm | awk 'NR == 2 {print $4}')
if [ "${shm_free_mb:-0}" -lt "${MINC_SHM_MB:-0}" ]; then
    echo "warning: $(hostname): /dev/shm has ${shm_free_mb} MB free, the loader needs" \
        "~${MINC_SHM_MB} MB; ask for a larger /dev/shm or pass --num-workers lower" >&2
fi

# --signals-to-handle: SIGUSR1 (the time limit's warning) is forwarded to the workers like
# SIGTERM; without it a SIGUSR1 that reaches torchrun kills it. (torchrun sets
# TORCHELASTIC_SIGNALS_TO_HANDLE from this option: exporting the variable does nothing.)
echo "node ${SLURM_NODEID:-?}/${SLURM_NNODES:-?} $(hostname): rendezvous $head_node:$port" \
    "($head_addr), interface $MINC_IFNAME, $nproc workers" >&2
exec python -m torch.distributed.run --nnodes="${SLURM_NNODES:?}" --nproc_per_node="$nproc" \
    --rdzv_backend=c10d --rdzv_endpoint="$head_node:$port" --rdzv_id="${SLURM_JOB_ID:?}" \
    --max-restarts="${MINC_MAX_RESTARTS:-1}" --rdzv_conf=join_timeout=300 \
    --shutdown-timeout=240 --signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 "$@"
