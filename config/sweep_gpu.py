# The single-GPU grid of sweep.py, in the paper's regime (§5.1, App. G) as config/sweep_cpu.py keeps
# it, at a larger size, on FineWeb-Edu (docs/data.md has the fetch-and-prepare recipe):
#   non-embedding parameters N = 10,621,824 (6 layers, width 384, SwiGLU 1024; 23.2M with the
#   16,384-token embedding and head)
#   budget T = 8,192 steps x 16 micro-batches x 28 windows x 256 tokens = 939,524,096 tokens
#   T / N = 88.5 tokens per parameter                           (paper: 32B / 362M = 88)
#   unique tokens at r = 128 (sweep.py's largest): 7,340,032 = 0.69 per parameter   (paper: 0.69)
#   optimizer steps per epoch at r = 128: 64                    (paper: 64)
# r = 1 needs T unique training tokens: two shards of the 10BT sample are enough. About 1e17
# training FLOPs a cell, some minutes on one H100-class GPU (an estimate from the FLOPs, not a
# measurement; the console prints MFU and ETA). lam in steps of 1/16.
#   python data.py --input fineweb-edu/sample/10BT --out_dir data_fineweb_edu --vocab_size 16384 \
#       --tokenizer_train_bytes 1000000000 --workers 16
#   python sweep.py config/sweep_gpu.py --jobs 1
data_dir = "data_fineweb_edu"
n_layer = 6
n_head = 6
n_embd = 384
intermediate_size = 1024
block_size = 256
batch_size = 28
gradient_accumulation_steps = 16
max_iters = 8192
learning_rate = 0.007
warmup_iters = 0
decay_frac = 0.25
eval_interval = 512
eval_iters = 16
log_interval = 64
device = "cuda"
dtype = "bfloat16"
compile = True
