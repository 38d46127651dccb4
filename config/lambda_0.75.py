# The paper's recipe (paper_470m.py) with lam = 0.75: the share of AR micro-batches.
#   torchrun --nproc_per_node=8 train.py config/lambda_0.75.py
include("paper_470m.py")
lam = 0.75
out_dir = "out_lambda_0.75"
