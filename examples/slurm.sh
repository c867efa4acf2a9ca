#!/usr/bin/env bash
# Multi-node pretraining on Slurm: one torchrun per node, rendezvous on the first node.
#   sbatch examples/slurm.sh configs/quickstart.yaml configs/models/llama-1b.yaml
#SBATCH --job-name=modelworks
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
set -euo pipefail

head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun torchrun \
  --nnodes "$SLURM_NNODES" \
  --nproc-per-node "${SLURM_GPUS_ON_NODE:-8}" \
  --rdzv-id "$SLURM_JOB_ID" \
  --rdzv-backend c10d \
  --rdzv-endpoint "$head_node:29500" \
  -m modelworks pretrain "$@" parallel.fsdp=true
