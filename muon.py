"""
Muon, the optimizer of the paper (§5.1), written out so that it can be read in one sitting.

Muon ("MomentUm Orthogonalized by Newton-Schulz", Jordan et al. 2024) updates a weight matrix with
the *orthogonalised* momentum: the momentum matrix M = U S V^T is replaced by (roughly) U V^T, so
every direction of the update gets the same step size. The paper uses the Moonlight variant
(Liu et al. 2025): the orthogonal update is scaled by 0.2 * sqrt(max(rows, cols)) so that its RMS
matches a typical AdamW update, which lets Muon share AdamW's learning rate and weight decay.

Muon is for the 2-D matrices inside the transformer blocks; `MuonAdamW` adds AdamW for the rest.
Distributed, every rank holds the same averaged gradients, so each orthogonalises a disjoint share
of the matrices and one all_gather hands the results to all: the Newton-Schulz work is divided by
the world size, and the parameters stay those of a single-process run.
"""
import math

import torch
import torch.distributed as dist

# Quintic Newton-Schulz coefficients (Jordan et al.), chosen for the steepest slope at zero: five
# iterations push every singular value into roughly [0.7, 1.2], which is all Muon needs.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(G, steps=5, eps=1e-7, dtype=torch.float32):
    """Approximately orthogonalise the matrix G: return ~U V^T where G = U S V^T."""
    a, b, c = NS_COEFFICIENTS
    X = G.to(dtype)
    transposed = X.size(0) > X.size(1)
    if transposed:  # iterate on the wide orientation so X @ X.T is the smaller Gram matrix
        X = X.T
    X = X / X.norm().clamp(min=eps)  # Frobenius norm >= spectral norm, so all singular values <= 1
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * (A @ A)
        X = a * X + B @ X  # = p(X X^T) X with p(s) = a + b s + c s^2, i.e. an odd quintic in S
    if transposed:
        X = X.T
    return X.to(G.dtype)


class Muon(torch.optim.Optimizer):
    """Muon with Nesterov momentum, Moonlight scaling and decoupled weight decay, for 2-D weights.

    Per matrix W with gradient G (mu = momentum):
        M  <- mu * M + (1 - mu) * G          (momentum as an exponential average)
        U  <- (1 - mu) * G + mu * M          (Nesterov look-ahead)
        O  <- newton_schulz(U)               (scale-free, so the (1 - mu) factors do not matter)
        W  <- W * (1 - lr * weight_decay) - lr * 0.2 * sqrt(max(rows, cols)) * O
    """

    def __init__(self, params, lr=0.007, momentum=0.95, weight_decay=0.1, nesterov=True, ns_steps=5,
                 eps=1e-7):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                        ns_steps=ns_steps, eps=eps)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon only takes 2-D matrices, got a parameter of shape {tuple(p.shape)}; "
                                     f"give it to AdamW instead")

    @torch.no_grad()
    def step(self):
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            # 1. momentum on every rank (cheap, elementwise; keeps the optimizer state complete everywhere)
            directions = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                directions.append(p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf)
            # 2. Newton-Schulz: matrix i is orthogonalised by rank i % world only
            ns_dtype = torch.bfloat16 if params and params[0].is_cuda else torch.float32
            updates = [None] * len(params)
            for i in range(rank, len(params), world):
                updates[i] = newton_schulz(directions[i], group["ns_steps"], group["eps"], ns_dtype)
            if distributed:
                updates = self._all_gather(updates, params, rank, world)
            # 3. decoupled weight decay and the scaled orthogonal step
            lr, wd = group["lr"], group["weight_decay"]
            for p, update in zip(params, updates):
                p.mul_(1 - lr * wd)
                p.add_(update, alpha=-lr * 0.2 * math.sqrt(max(p.shape)))

    @staticmethod
    def _all_gather(updates, params, rank, world):
        """Every rank packs its share of the updates into one flat buffer, padded to the largest
        share; one all_gather brings all shares to all ranks, which unpack them by the same rule."""
        n = len(params)
        share_sizes = [sum(params[i].numel() for i in range(r, n, world)) for r in range(world)]
        mine = [updates[i].flatten() for i in range(rank, n, world)]
        flat = torch.cat(mine) if mine else params[0].new_zeros(0)
        flat = torch.nn.functional.pad(flat, (0, max(share_sizes) - flat.numel()))
        gathered = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        out = [None] * n
        for r in range(world):
            offset = 0
            for i in range(r, n, world):
                out[i] = gathered[r][offset:offset + params[i].numel()].view_as(params[i])
                offset += params[i].numel()
        return out


class MuonAdamW:
    """Muon for the block matrices, AdamW for the embedding, LM head and gains (use_muon=False: AdamW
    for all). One `lr` for both (Moonlight's scaling lets them share it, unless `adamw_lr` is given),
    scaled by `set_lr_factor`; weight decay on matrices and embeddings, not on the 1-D gains."""

    def __init__(self, model, lr=0.007, weight_decay=0.1, momentum=0.95, adamw_lr=None,
                 adamw_betas=(0.9, 0.95), adamw_eps=1e-8, use_muon=True):
        muon_params, decay_params, gain_params = [], [], []
        self.groups_by_name = {"muon": [], "adamw": []}
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if use_muon and p.ndim == 2 and name.startswith("blocks."):
                muon_params.append(p)
                self.groups_by_name["muon"].append(name)
            else:
                (decay_params if p.ndim >= 2 else gain_params).append(p)
                self.groups_by_name["adamw"].append(name)
        self.muon = Muon(muon_params, lr=lr, momentum=momentum, weight_decay=weight_decay) if use_muon else None
        adamw_lr = lr if adamw_lr is None else adamw_lr
        # the fused kernel (CUDA, CPU since PyTorch 2.4): 3.5x faster than the per-tensor loop on a CPU
        use_fused = all(p.device.type in ("cpu", "cuda") for p in decay_params + gain_params)
        self.adamw = torch.optim.AdamW(
            [{"params": decay_params, "weight_decay": weight_decay},
             {"params": gain_params, "weight_decay": 0.0}],
            lr=adamw_lr, betas=adamw_betas, eps=adamw_eps, fused=use_fused or None)
        self.optimizers = [self.muon, self.adamw] if use_muon else [self.adamw]
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["base_lr"] = group["lr"]

    @property
    def param_groups(self):
        return [g for opt in self.optimizers for g in opt.param_groups]

    def set_lr_factor(self, factor):
        """Scale every group's learning rate to factor * its base learning rate (for schedules)."""
        for group in self.param_groups:
            group["lr"] = group["base_lr"] * factor

    def step(self):
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none=True):
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {"muon": self.muon.state_dict() if self.muon else None, "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state):
        """Restore the optimizer *state* (momenta, step counts). The hyper-parameters (lr, weight
        decay, ...) stay those this object was built with, so a resumed run follows its config."""
        for key, opt in (("muon", self.muon), ("adamw", self.adamw)):
            if opt is None:
                continue
            settings = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
            opt.load_state_dict(state[key])
            for group, kept in zip(opt.param_groups, settings):
                group.update(kept)

    def describe(self):
        """Both groups, for the start-up log: which parameter goes where is worth seeing once."""
        lines = []
        for key, opt in (("muon", self.muon), ("adamw", self.adamw)):
            if opt is None:
                continue
            n = sum(p.numel() for g in opt.param_groups for p in g["params"])
            names = self.groups_by_name[key]
            # blocks.0.attn.q_proj.weight ... blocks.23.attn.q_proj.weight -> blocks.*.attn.q_proj.weight x24
            patterns = {}
            for name in names:
                pattern = ".".join("*" if part.isdigit() else part for part in name.split("."))
                patterns[pattern] = patterns.get(pattern, 0) + 1
            listed = ", ".join(p + (f" x{c}" if c > 1 else "") for p, c in patterns.items())
            lines.append(f"{key}: {len(names)} tensors, {n:,} parameters: {listed}")
        return "\n".join(lines)
