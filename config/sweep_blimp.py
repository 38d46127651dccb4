# The task-scored CPU grid (docs/reproduction.md: "Task scores"): a model large enough to score above
# chance on BLiMP, every cell scored causally and by PLL. Paper §5 at a smaller regime than
# config/sweep_cpu.py, since each cell takes about 50 min of one core:
#   non-embedding parameters N = 791,680 (4 layers, width 128, SwiGLU 344; vocab 4096)
#   budget T = 3,400 steps x 8 micro-batches x 4 windows x 128 tokens = 13,926,400 tokens
#   T / N = 17.6 tokens per parameter                       (paper: 88)
#   unique tokens at r = 128: 108,800 = 0.14 per parameter  (paper: 0.69)
#   optimizer steps per epoch at r = 128: 26.6              (paper: 64)
# lam in steps of 1/8 (gradient_accumulation_steps = 8). bf16 autocast: 1.03-1.14x faster than fp32 for
# this shape on this CPU (AVX512-BF16, no AMX; docs/reproduction.md, "A pilot toward task scores").
#   python data.py --input ../shared/data/corpus/english_novels --out_dir data_novels_4096 \
#       --doc_split blank_line --vocab_size 4096 --max_doc_bytes 2048
#   python sweep.py config/sweep_blimp.py --jobs 2 --repetitions 1,16,128 --lams 0,0.125,0.5,1 \
#       --eval_tasks blimp --eval_modes causal,pll --pll_k 1,6 --eval_limit 100 --eval_data_dir ../shared/data
data_dir = "data_novels_4096"
n_layer = 4
n_head = 4
n_embd = 128
intermediate_size = 344
block_size = 128
batch_size = 4
gradient_accumulation_steps = 8
max_iters = 3400
learning_rate = 0.01
grad_clip = 0.0                   # the official code does not clip (--max_gradient 1e9)
eval_interval = 100               # 34 evaluations, about every 4 epochs at r = 128
eval_iters = 64                   # 256 validation windows (32,768 tokens)
log_interval = 100
dtype = "bfloat16"
device = "cpu"
compile = False
