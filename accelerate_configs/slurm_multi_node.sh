#!/bin/bash
# Multi-node training on a SLURM cluster: one `accelerate launch` per node, each starting one process per GPU.
#   sbatch accelerate_configs/slurm_multi_node.sh
#SBATCH --job-name=medmnist-vit
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=01:00:00
set -euo pipefail
GPUS_PER_NODE=8
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=29500
srun bash -c "accelerate launch \
  --config_file accelerate_configs/multi_node.yaml \
  --num_machines $SLURM_NNODES --num_processes $((SLURM_NNODES * GPUS_PER_NODE)) \
  --machine_rank \$SLURM_NODEID --main_process_ip $MASTER_ADDR --main_process_port $MASTER_PORT \
  train.py --model vit_lsa --dataset bloodmnist --data_dir \$HOME/medmnist"
