# The single-GPU grid of sweep.py: a 6-layer, 384-wide model (~12M parameters with a 4096 vocabulary)
# and T = 448 steps x 4 x 32 x 256 = 14.7M tokens, which the novels corpus (15.7M training tokens)
# still covers at r = 1. Point data_dir at a larger corpus to raise max_iters.
#   python sweep.py config/sweep_gpu.py --jobs 1
data_dir = "data_novels"
n_layer = 6
n_head = 6
n_embd = 384
intermediate_size = 1024
block_size = 256
batch_size = 32
gradient_accumulation_steps = 4
max_iters = 448
learning_rate = 0.007
eval_interval = 28
eval_iters = 16
log_interval = 28
device = "cuda"
dtype = "bfloat16"
compile = True
