# The paper's model and recipe (§5.1), for torchrun on 8 GPUs. Not run on its own: the lambda_*.py
# files include it and set lam. Prepare the data first with a 51,200-token BPE (data.py --vocab_size 51200).
#
# Batch: 4M tokens per step = 2048 sequences of 2048 tokens = gradient_accumulation_steps (128)
# micro-batches x batch_size (16). On 8 GPUs each GPU runs 16 consecutive micro-batches; with lam = k/8
# the first k GPUs run only AR and the rest only MD, as in the paper (train.py rotates the
# assignment by one micro-batch each epoch). lam can take any multiple of 1/128.
# More GPUs: keep gradient_accumulation_steps * batch_size = 2048 with gradient_accumulation_steps
# a multiple of the GPU count (64 GPUs: batch_size 16, gradient_accumulation_steps 128, 2 per GPU).
# Less memory per GPU: halve batch_size and double gradient_accumulation_steps.
data_dir = "data_hplt"          # your corpus, prepared by data.py (the paper: 32B tokens of HPLT v2 English)
out_dir = "out_paper"
# model: 24 layers, width 1024, 16 heads, SwiGLU 3554, untied embeddings -> 470M (360M non-embedding)
n_layer = 24
n_head = 16
n_embd = 1024
intermediate_size = 3554
block_size = 2048
rope_theta = 160000.0           # the official large config's RoPE base
# optimisation: Muon (Moonlight variant) + AdamW, lr 0.007, WSD without warmup, 2,048 of 8,192 steps
# of linear decay, z-loss 1e-4. The paper's weight-decay value was lost in its text; 0.1 is Moonlight's.
optimizer = "muon"
learning_rate = 0.007
weight_decay = 0.1
max_iters = 8192
lr_schedule = "wsd"
warmup_iters = 0
decay_frac = 0.25
z_loss = 1e-4
grad_clip = 0.0                 # the official code does not clip (--max_gradient 1e9)
# ar_weight stays 1, the corrected objective of the paper's App. B erratum. The published checkpoints
# were trained with 2 (their AR share of the gradient is 2*lam/(1+lam): lam = 1/8 acts like 0.22);
# set ar_weight = 2.0 to reproduce those checkpoints rather than the paper's equation.
batch_size = 16
gradient_accumulation_steps = 128
repetitions = 1.0               # 32B unique tokens; the paper sweeps 1 ... 128
eval_interval = 256
eval_iters = 16
log_interval = 8
dtype = "bfloat16"
compile = True
