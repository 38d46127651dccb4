"""muon.py against torch.optim.Muon (Moonlight scaling), single process and 2 gloo processes."""
import copy
import inspect
import os
import tempfile
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import model as M
import muon

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny problems run fastest on one thread


@pytest.fixture
def torch_muon_in_fp32(monkeypatch):
    """torch.optim.Muon always runs Newton-Schulz in bf16; we run it in fp32 on CPU. To compare to
    1e-5 we swap the one cast in torch's own function (its arithmetic stays torch's)."""
    import torch.optim._muon as torch_muon
    source = inspect.getsource(torch_muon._zeropower_via_newtonschulz)
    assert ".bfloat16()" in source
    namespace = {}
    exec(source.replace(".bfloat16()", ".float()"), torch_muon.__dict__, namespace)
    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz", namespace["_zeropower_via_newtonschulz"])


SHAPES = [(32, 48), (48, 32), (40, 40), (16, 96), (96, 16)]


def random_problem(seed):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g) for s in SHAPES]
    grads = [[torch.randn(s, generator=g) for s in SHAPES] for _ in range(6)]  # 6 steps
    return params, grads


def run_optimizer(make_opt, params, grads):
    params = [p.clone().requires_grad_(True) for p in params]
    opt = make_opt(params)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params]


def assert_close_relative(got, want, tol=1e-5):
    for a, b in zip(got, want):
        assert ((a - b).norm() / b.norm()).item() <= tol


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_torch_muon(torch_muon_in_fp32, seed):
    params, grads = random_problem(seed)
    kw = dict(lr=0.02, momentum=0.95, weight_decay=0.1)
    ours = run_optimizer(lambda ps: muon.Muon(ps, **kw), params, grads)
    ref = run_optimizer(lambda ps: torch.optim.Muon(ps, adjust_lr_fn="match_rms_adamw", nesterov=True, **kw),
                        params, grads)
    assert_close_relative(ours, ref)
    assert min((a - p).norm() / p.norm() for a, p in zip(ours, params)) > 1e-3  # the parameters did move


def test_newton_schulz_orthogonalises():
    G = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    s = torch.linalg.svdvals(muon.newton_schulz(G))
    assert s.min() > 0.5 and s.max() < 1.3  # the quintic's loose band around 1 (Jordan et al.)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    cosine = (muon.newton_schulz(G) * (U @ Vh)).sum() / (U @ Vh).norm() ** 2
    assert cosine > 0.8  # close to U V^T


def _distributed_worker(rank, world, init_file, params, grads, out_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    orthogonalised = []  # the shapes this rank ran Newton-Schulz on (all SHAPES differ)
    real_newton_schulz = muon.newton_schulz

    def recording_newton_schulz(G, *args):
        orthogonalised.append(tuple(G.shape))
        return real_newton_schulz(G, *args)

    muon.newton_schulz = recording_newton_schulz
    try:
        result = run_optimizer(lambda ps: muon.Muon(ps, lr=0.02, weight_decay=0.1), params, grads)
        torch.save({"params": result, "orthogonalised": orthogonalised}, f"{out_file}.{rank}")
    finally:
        muon.newton_schulz = real_newton_schulz
        dist.destroy_process_group()


def test_distributed_mode_shares_the_work_and_gives_the_same_parameters(tmp_path):
    """Two gloo processes: each runs Newton-Schulz on a disjoint share of the matrices (together all of
    them, once per step), and both end with the parameters of a single-process run."""
    params, grads = random_problem(3)
    single = run_optimizer(lambda ps: muon.Muon(ps, lr=0.02, weight_decay=0.1), params, grads)
    out = str(tmp_path / "dist.pt")
    init_file = tempfile.mktemp(dir=tmp_path)
    # forked, not spawned: a spawned worker imports torch and this module again (seconds each); the
    # parent has run only single-threaded torch code, which a fork copies safely
    workers = mp.start_processes(_distributed_worker, args=(2, init_file, params, grads, out), nprocs=2,
                                 join=False, start_method="fork")
    deadline = time.time() + 120
    while not workers.join(timeout=1):  # raises if a worker failed
        if time.time() > deadline:  # a stuck child (say, a lock copied while held) fails, never hangs, the run
            for process in workers.processes:
                process.kill()
            pytest.fail("the two distributed workers did not finish within 120 s")
    shares = []
    for rank in range(2):
        result = torch.load(f"{out}.{rank}")
        assert_close_relative(result["params"], single, tol=1e-6)
        shares.append(result["orthogonalised"])
    steps = len(grads)
    assert all(len(share) % steps == 0 and share[:len(share) // steps] * steps == share for share in shares)
    per_step = [set(share[:len(share) // steps]) for share in shares]
    assert per_step[0] and per_step[1] and not per_step[0] & per_step[1]  # both ranks work, never on the same matrix
    assert sorted(per_step[0] | per_step[1]) == sorted(SHAPES)  # ... and together on every matrix


def tiny_model():
    torch.manual_seed(0)
    return M.DualLM(M.ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16,
                                  intermediate_size=24))


def test_muon_adamw_groups_are_complete_and_disjoint():
    m = tiny_model()
    opt = muon.MuonAdamW(m)
    muon_ids = {id(p) for g in opt.muon.param_groups for p in g["params"]}
    adamw_ids = {id(p) for g in opt.adamw.param_groups for p in g["params"]}
    assert not muon_ids & adamw_ids and muon_ids | adamw_ids == {id(p) for p in m.parameters()}
    assert set(opt.groups_by_name["muon"]) == {n for n, p in m.named_parameters()
                                               if p.ndim == 2 and n.startswith("blocks.")}
    assert {"tok_emb.weight", "lm_head.weight", "norm.weight"} <= set(opt.groups_by_name["adamw"])
    decay, gains = opt.adamw.param_groups
    assert all(p.ndim == 1 for p in gains["params"]) and gains["weight_decay"] == 0.0
    # q, k, v and the SwiGLU gate and up projections are separate matrices, each orthogonalised alone
    for block in m.blocks:
        for layer in (block.attn.q_proj, block.attn.k_proj, block.attn.v_proj, block.mlp.gate_proj, block.mlp.up_proj):
            assert id(layer.weight) in muon_ids and layer.weight.shape[1] == m.config.n_embd
    described = opt.describe()  # printed by train.py at start-up
    assert "muon: 14 tensors" in described and "blocks.*.attn.q_proj.weight x2" in described
    assert "adamw: 7 tensors" in described and "tok_emb.weight" in described and "lm_head.weight" in described


def test_muon_adamw_tied_embeddings_and_all_adamw_baseline():
    torch.manual_seed(0)
    tied = M.DualLM(M.ModelConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16,
                                  intermediate_size=24, tie_embeddings=True))
    opt = muon.MuonAdamW(tied)
    assert "lm_head.weight" not in opt.groups_by_name["adamw"]  # one tensor, listed once
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(tied.parameters()))
    opt = muon.MuonAdamW(tiny_model(), use_muon=False)
    assert opt.muon is None and not opt.groups_by_name["muon"] and "muon" not in opt.describe()


def test_muon_adamw_lr_factor_and_state_dict_resume():
    m1 = tiny_model()
    opt1 = muon.MuonAdamW(m1, lr=0.01)
    x = torch.randint(5, 50, (2, 8))

    def step(m, opt, factor):
        opt.set_lr_factor(factor)
        loss, _ = M.ar_loss(m, x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()

    step(m1, opt1, 1.0)
    assert all(g["lr"] == g["base_lr"] for g in opt1.param_groups)
    # resume: a fresh model/optimizer loaded from state dicts continues exactly like the original
    m2 = tiny_model()
    m2.load_state_dict(m1.state_dict())
    opt2 = muon.MuonAdamW(m2, lr=0.01)
    opt2.load_state_dict(copy.deepcopy(opt1.state_dict()))  # as if saved and loaded
    for factor in (0.5, 0.25):
        step(m1, opt1, factor)
        step(m2, opt2, factor)
    assert all(abs(g["lr"] - 0.25 * g["base_lr"]) < 1e-12 for g in opt2.param_groups)
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_muon_rejects_non_matrices():
    with pytest.raises(ValueError, match="2-D"):
        muon.Muon([torch.nn.Parameter(torch.zeros(4))])
