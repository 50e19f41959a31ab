# Sourced by pretrain.sbatch and linear_eval.sbatch: run one srun step of torchrun_node.sh on
# every node, turn the time limit's warning into a checkpoint and a requeue.
#
# `--signal=B:USR1@300` sends SIGUSR1 to this batch shell only, 300 s before the time limit.
# The trap passes it on to every process of the job step (`scancel --signal=USR1`: the torchrun
# agents, which forward it to their workers, and the workers themselves); the trainer writes a
# checkpoint at the next agreed step and exits 0; this shell then requeues the job
# (`scontrol requeue`, needs `#SBATCH --requeue`), and the requeued job continues with
# `--resume auto`. A run that ends by itself (done, or an error) is not requeued.

minc_requeue=0
minc_on_usr1() {
    if [ "$minc_requeue" = 0 ]; then
        minc_requeue=1
        echo "slurm: SIGUSR1 (time limit near): checkpoint, stop, requeue job $SLURM_JOB_ID" >&2
        scancel --signal=USR1 "$SLURM_JOB_ID"
    fi
}

# run_step NPROC SCRIPT ARGS...: the same torchrun line on every node; returns its status
# (0 after a requeue).
run_step() {
    local nproc=$1 head_node port status=0 pid
    shift
    head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    port=${MINC_PORT:-29500}
    trap minc_on_usr1 USR1
    srun --ntasks-per-node=1 --cpus-per-task="$SLURM_CPUS_PER_TASK" --kill-on-bad-exit=0 \
        scripts/slurm/torchrun_node.sh "$head_node" "$port" "$nproc" "$@" &
    pid=$!
    while :; do  # a trapped signal interrupts `wait`: wait again until the step has ended
        status=0
        wait "$pid" || status=$?
        kill -0 "$pid" 2>/dev/null || break
    done
    trap - USR1
    if [ "$minc_requeue" = 1 ]; then
        echo "slurm: step ended with status $status after SIGUSR1; requeueing" >&2
        scontrol requeue "$SLURM_JOB_ID"
        return 0
    fi
    return "$status"
}
