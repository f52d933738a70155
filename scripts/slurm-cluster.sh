#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for tests: munged, slurmctld and slurmd, run as the
# current user from a state directory of their own, without cgroups (proctrack/linuxproc,
# task/none), so that it runs in a container.
#
#   scripts/slurm-cluster.sh start DIR   start the daemons; prints the `export SLURM_CONF=...` line
#   scripts/slurm-cluster.sh stop DIR    stop every daemon started with DIR (by the pids it recorded)
#
# Needs Debian's slurm-wlm and munge (apt-get install slurm-wlm munge). The ports are chosen
# away from Slurm's defaults (6817/6818) so that a cluster already on the machine is not disturbed.
set -euo pipefail
cmd=${1:?usage: slurm-cluster.sh start|stop DIR}
dir=${2:?usage: slurm-cluster.sh start|stop DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

stop() {
    # Daemons in reverse order of start, each by the pid it wrote, waiting for it to exit.
    for name in slurmd slurmctld munged; do
        local pidfile="$dir/$name.pid"
        [[ -s $pidfile ]] || continue
        local pid
        pid=$(cat "$pidfile")
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
}

if [[ $cmd == stop ]]; then
    stop
    exit 0
fi
[[ $cmd == start ]] || { echo "usage: slurm-cluster.sh start|stop DIR" >&2; exit 2; }

for tool in munged slurmctld slurmd sbatch squeue; do
    command -v "$tool" >/dev/null || [[ -x /usr/sbin/$tool ]] || {
        echo "slurm-cluster.sh: $tool is missing; install it with: apt-get install -y slurm-wlm munge" >&2
        exit 1
    }
done
export PATH=$PATH:/usr/sbin
host=$(hostname -s)
cpus=${KDLAB_SLURM_CPUS:-2}
mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
user=$(id -un)
mkdir -p "$dir/munge" "$dir/ctld" "$dir/spool" "$dir/log"
chmod 711 "$dir/munge"
# A failed start leaves nothing running.
trap 'echo "slurm-cluster.sh: start failed; logs in $dir/log" >&2; stop' ERR

# munge: a fresh key of our own, its socket in the state directory (munged refuses root unless forced).
dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$dir/munge/munge.key"
force=()
[[ $(id -u) == 0 ]] && force=(--force)
munged "${force[@]}" --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
    --pid-file="$dir/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed"

cat > "$dir/slurm.conf" <<CONF
ClusterName=kdlab-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=$user
SlurmdUser=$user
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/ctld
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SlurmctldTimeout=30
SlurmdTimeout=30
MinJobAge=600
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$dir/slurm.conf

slurmctld -f "$SLURM_CONF" -i
slurmd -f "$SLURM_CONF"
# Ready when the node is idle (slurmd registered with slurmctld).
for _ in $(seq 60); do
    if sinfo -h -N -o %t 2>/dev/null | grep -qx idle; then
        echo "export SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 1
done
echo "slurm-cluster.sh: the node did not become idle in 60 s; sinfo says: $(sinfo -N 2>&1 | tail -n +2)" >&2
echo "--- slurmctld.log" >&2; tail -20 "$dir/log/slurmctld.log" >&2 || true
echo "--- slurmd.log" >&2; tail -20 "$dir/log/slurmd.log" >&2 || true
stop
exit 1
