# Small reproductions on one GPU: a 12-layer, 768-wide model (~85M non-embedding parameters) on
# 65k-token steps. 2,000 steps = 131M tokens = 8.4e16 training FLOPs (6 x 88M matmul weights + attention,
# 642M FLOPs a token): about 4 minutes on one H100-class GPU at 40% MFU (an estimate from the FLOPs,
# not a measurement; the console line prints your MFU and ETA). The English novels
# (data_novels, 15.6M training tokens) are then seen ~8 times at repetitions=0. lam needs a multiple
# of 1/8; for finer steps raise gradient_accumulation_steps and lower batch_size.
#   python train.py config/single_gpu.py --lam=0.75 --repetitions=16
data_dir = "data_novels"
out_dir = "out_single_gpu"
lam = 0.5
n_layer = 12
n_head = 12
n_embd = 768
intermediate_size = 2048
block_size = 1024
batch_size = 8
gradient_accumulation_steps = 8
max_iters = 2000
learning_rate = 0.007
warmup_iters = 0
decay_frac = 0.25
eval_interval = 100
eval_iters = 16
dtype = "bfloat16"
compile = True
