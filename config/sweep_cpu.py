# The model and schedule of every cell of the CPU reproduction grid (sweep.py, README "Reproducing the
# paper at small scale"). One cell: 256 steps x 4 micro-batches x 8 windows x 128 tokens = T = 1,048,576
# tokens, so r = 1 sees 1M unique tokens and r = 128 sees 8,192 (64 windows) 128 times.
#   python data.py --input ../shared/data/corpus/english_novels --out_dir data_novels --vocab_size 4096
#   python sweep.py config/sweep_cpu.py --jobs 2
data_dir = "data_novels"
n_layer = 4
n_head = 4
n_embd = 128
intermediate_size = 344
block_size = 128
batch_size = 8
gradient_accumulation_steps = 4   # lam in steps of 1/4: 0, 0.25, 0.5, 0.75, 1
max_iters = 256
learning_rate = 0.01
eval_interval = 16
eval_iters = 8
log_interval = 32
device = "cpu"
compile = False
