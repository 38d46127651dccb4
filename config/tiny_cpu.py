# A dual model that learns visibly in about two minutes on 2 CPU cores:
#   python data.py --input ../shared/data/corpus/tinyshakespeare/input.txt --out_dir data_shakespeare \
#       --vocab_size 2048 --doc_split blank_line
#   python train.py config/tiny_cpu.py
data_dir = "data_shakespeare"
out_dir = "out_tiny"
lam = 0.5
n_layer = 4
n_head = 4
n_embd = 128
intermediate_size = 344
block_size = 128
batch_size = 16
gradient_accumulation_steps = 2
max_iters = 300
eval_interval = 50
eval_iters = 4
log_interval = 10
learning_rate = 0.01
device = "cpu"
compile = False
