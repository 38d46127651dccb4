# One model on one GPU: 12 layers, width 768 (84,953,856 non-embedding parameters; 110M with the
# 16,384-token embedding and head) on FineWeb-Edu (docs/data.md has the fetch-and-prepare recipe),
# 65,536-token steps. In the paper's terms, as configured here:
#   budget T = 2,000 steps x 8 micro-batches x 8 windows x 1,024 tokens = 131,072,000 tokens
#   T / N = 1.5 tokens per parameter                    (paper: 88; a quick run, not the paper's regime)
#   unique tokens at r = 128: 1,024,000 = 0.012 per parameter, 15.6 steps per epoch (paper: 0.69, 64)
# About 4 minutes on one H100-class GPU at 40% MFU (an estimate from the FLOPs, not a measurement).
# The paper's regime at this size: --max_iters=8192 --gradient_accumulation_steps=112 gives
# T = 7,516,192,768 tokens = 88.5 per parameter, 0.69 unique per parameter and 64 steps per epoch at
# r = 128 (lam in steps of 1/112; about 4.4e18 FLOPs, some hours), and needs the whole 10BT sample.
#   python data.py --input fineweb-edu/sample/10BT --out_dir data_fineweb_edu --vocab_size 16384 \
#       --tokenizer_train_bytes 1000000000 --workers 16
#   python train.py config/single_gpu.py --lam=0.75 --repetitions=16
data_dir = "data_fineweb_edu"
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
