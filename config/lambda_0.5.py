# The paper's recipe (paper_470m.py) with lam = 0.5: the share of AR micro-batches.
#   torchrun --nproc_per_node=8 train.py config/lambda_0.5.py
# More GPUs: the same command with --nproc_per_node (and torchrun's --nnodes/--rdzv_endpoint) up to 128
# GPUs, unchanged: gradient_accumulation_steps=128 micro-batches per step are split over the ranks, so the
# batch and the result stay the same (each rank runs 128 / world of them; world must divide 128).
# Beyond 128 GPUs, raise gradient_accumulation_steps and lower batch_size (see paper_470m.py).
include("paper_470m.py")
lam = 0.5
out_dir = "out_lambda_0.5"
