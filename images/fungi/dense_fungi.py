"""Dense FUNGI (Simoncini et al., "No Train, all Gain", arXiv 2407.10964, §3 and the HummingBird experiments):
per-patch features = the backbone's patch token next to a random projection of the gradient, per token, of a
self-supervised contrastive loss with respect to the last attention output projection (`blocks.11.attn.proj`).

Written from the paper and the documented behaviour of `fungi-hummingbird/eval_gradients.py:combined_token_features`
(WalterSimoncini/no-train-all-gain 7ad3b75, MIT); scripts/compare_fungi.py runs that function beside this module on
identical weights, support bank, head, projection and keep masks.

What one image (S×S, T = 1 + (S/16)² tokens, width E) goes through:

1. tokens = the last block's tokens after the final norm, CLS included (B, T, E); latent = head(tokens), a random
   Linear(E, 96).
2. Negatives: the 5 nearest rows (inner product) of the support bank for every raw (unnormalised) token, CLS
   included. The support bank is the L2-normalised raw patch tokens of the training images `fit` receives, at the
   patches the harness sends (`add_support`). `scramble=True` (the reference's reading, default): the (T·5, E) rows
   are read as `reshape(B, T, E, 5).permute(0, 1, 3, 2)[:, :, :2]`, so "negative n" of a token has element e =
   flat(5×E block)[5e + n], a strided mix of all 5 neighbours; `scramble=False`: the first 2 true neighbours.
   Negatives are head(rows) without gradient.
3. Each of the T·2 negatives is kept with probability 0.5 (`torch.rand(T·2) <= 0.5`, one call per image, in order).
4. Per image, InfoNCE with T = 0.07 (`info_nce`): features cast to float16 and normalised; the rows are the image's
   T latent tokens (CLS included), the columns [kept negatives, the T tokens]; self-similarity -10e3; loss per row
   = -Σ_{j≠i} (cos_ij / T) / (T_tokens - 1) + logsumexp_j cos_ij (cos without /T), mean over rows. The reference
   subtracts diag(diag(cos/T)) from cos/T, which in float16 is -inf - -inf = NaN on the diagonal: its loss value is
   NaN, its gradient is that of the off-diagonal sum, which is what `info_nce` computes (a finite loss, the same
   gradient). loss = mean over the images of the chunk.
5. Per-token gradient of `blocks.11.attn.proj` (weight and bias): a forward hook keeps the layer's input a and
   output y (y is made the graph's only leaf, so nothing before it is differentiated), g = dL/dy · B (the batch
   size: the reference's per-example gradients for a 'mean' loss), and the random projection of the per-token
   gradient [g ⊗ a | g] is `scaling · einsum('kij,ti,tj->tk', P3, g, [a, 1])`, chunked over tokens (128 at a
   time, one GEMM per chunk), so the (B, T, E, E + 1) per-token gradient tensor is never materialised. P = ±1 (E, E·(E + 1)), viewed as (E, E, E + 1);
   scaling 1/√E. The B of the ×B and of the mean cancel: each image's loss depends on its own tokens only, so the
   gradient of token t of image b is dL_b/dy_bt whatever the chunk size (exactly, for a power-of-two B).
6. CLS dropped; feature = normalize(cat(normalize(token), normalize(projected gradient))), width 2E.

Random head and P, seeded (`seed`): one torch.Generator seeded with `seed` draws, in this order, the head's weight
(96, E) and bias (96), both U(-1/√E, 1/√E) (nn.Linear's default distribution), then P as `rand(E, E·(E+1)) > 0.5`
→ +1 else -1, then the keep masks, image after image in request order. Two instances with one seed given the same
requests give identical features.

Deliberate differences: float32 throughout except the loss's float16 (the reference's HummingBird command runs
bf16 autocast); the cosine similarities are one float16 matmul of the normalised rows instead of the reference's
broadcast `F.cosine_similarity` (T × columns × 96 elements per image); the search is exact by default (below).

Search (`search=`): "exact" (default): exact top-5 by inner product, torch matmul in blocks. "scann": ScaNN as the
reference's support index (dot product, 512 leaves / 32 searched, AH dimensions_per_block=4, anisotropic threshold
0.2, reorder 120). Exact is the default because it is deterministic, needs no training of a tree, does not depend
on ScaNN's quantisation and is trivially fast on a GPU; neither reproduces the reference's neighbour rows (its bank
is its own augmented sample of VOC), and the scramble mixes all 5 neighbours, so approximate neighbours change the
features more than they would change a plain top-2. On CPU ScaNN is the faster one for a large bank (docs/fungi.md:
1.6 s exact vs 0.07 s per image at 95k rows).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

LATENT_DIM = 96  # the projection head's output (README: LATENT_DIM=96)
SEARCHED = 5  # neighbours per token from the support index (README: 5, "the loss only requires 2")
NEGATIVES = 2  # negatives per token (--num-negative-neighbors 2)
KEEP = 0.5  # --negative-batch-percent 0.5
TEMPERATURE = 0.07  # info_nce_loss' default
SELF_SIMILARITY = -10e3  # simclr.py SELF_SIMILARITY_CONSTANT
CHUNK_IMAGES = 4  # the reference's --batch-size 4
SCANN = dict(
    num_leaves=512,
    num_leaves_to_search=32,
    dimensions_per_block=4,
    anisotropic_quantization_threshold=0.2,
    reorder=120,
)


def info_nce(
    negatives: torch.Tensor,
    positives: torch.Tensor,
    temperature: float = TEMPERATURE,
    dtype: torch.dtype = torch.float16,
) -> torch.Tensor:
    """Step 4 of the module docstring, for one image: `negatives` (M, L), `positives` (T, L) -> a scalar of `dtype`
    (float16 as the reference; float32 for the exact comparison of scripts/compare_fungi.py)."""
    t, m = positives.shape[0], negatives.shape[0]
    features = F.normalize(torch.cat([negatives, positives]).to(dtype), dim=-1)
    rows = features[m:]
    rows = rows / torch.linalg.vector_norm(rows, dim=-1, keepdim=True).clamp_min(1e-8)
    columns = features / torch.linalg.vector_norm(features, dim=-1, keepdim=True).clamp_min(1e-8)
    cos = rows @ columns.T  # (T, M + T)
    cos = torch.diagonal_scatter(cos, torch.full((t,), SELF_SIMILARITY, dtype=cos.dtype, device=cos.device), m)
    among = (cos[:, m:] / temperature).masked_fill(torch.eye(t, dtype=torch.bool, device=cos.device), 0)
    nll = -among.sum(dim=1) / (t - 1)
    nll = nll + torch.logsumexp(cos, dim=-1)
    return nll.mean()


def scramble_neighbours(rows: torch.Tensor, b: int, t: int, n: int, scramble: bool) -> torch.Tensor:
    """Memory rows (B·T, K, E) of each token's K neighbours, best first -> (B, T, n, E) negatives: the reference's
    reading (`scramble`, a strided mix of the K rows) or the first n true neighbours."""
    k, e = rows.shape[1], rows.shape[2]
    if scramble:
        return rows.reshape(b, t, e, k).permute(0, 1, 3, 2)[:, :, :n]
    return rows.reshape(b, t, k, e)[:, :, :n]


class ExactTopK:
    """Exact top-k by inner product over `bank` (N, E) float32, in blocks of `block` bank rows."""

    def __init__(self, bank: torch.Tensor, k: int = SEARCHED, block: int = 16384):
        self.bank, self.k, self.block = bank, min(k, len(bank)), block

    @torch.no_grad()
    def search(self, queries: torch.Tensor) -> torch.Tensor:
        """(Q, E) -> indices (Q, k) int64, best first."""
        best_s = best_i = None
        queries = queries.to(self.bank.device, torch.float32)
        for start in range(0, len(self.bank), self.block):
            s, i = (queries @ self.bank[start : start + self.block].T).topk(min(self.k, self.block), dim=1)
            i += start
            if best_s is not None:
                s, pick = torch.cat([best_s, s], 1).topk(self.k, dim=1)
                i = torch.cat([best_i, i], 1).gather(1, pick)
            best_s, best_i = s, i
        return best_i


class ScannTopK:
    """The reference's ScaNN support index (SCANN) over `bank`; num_leaves is lowered to √N for a bank smaller than
    its 512 leaves need (a test-sized bank), num_leaves_to_search in proportion."""

    def __init__(self, bank: torch.Tensor, k: int = SEARCHED):
        import scann

        rows = np.ascontiguousarray(bank.detach().cpu().float().numpy())
        leaves = min(SCANN["num_leaves"], max(1, int(math.isqrt(len(rows)))))
        search = max(1, SCANN["num_leaves_to_search"] * leaves // SCANN["num_leaves"])
        self.k, self.device = min(k, len(rows)), bank.device
        self.searcher = (
            scann.scann_ops_pybind.builder(rows, self.k, "dot_product")
            .tree(num_leaves=leaves, num_leaves_to_search=search, training_sample_size=len(rows))
            .score_ah(
                dimensions_per_block=SCANN["dimensions_per_block"],
                anisotropic_quantization_threshold=SCANN["anisotropic_quantization_threshold"],
            )
            .reorder(SCANN["reorder"])
            .build()
        )

    def search(self, queries: torch.Tensor) -> torch.Tensor:
        index, _ = self.searcher.search_batched(np.ascontiguousarray(queries.detach().cpu().float().numpy()))
        return torch.from_numpy(index.astype(np.int64)).to(self.device)


SEARCHES = {"exact": ExactTopK, "scann": ScannTopK}


class DenseFungi:
    """Dense FUNGI on a timm ViT `model` (its input size and position embedding set by the caller before
    `features`); see the module docstring. Options: `search` ("exact" | "scann"), `scramble` (the reference's
    neighbour reading), `token_chunk` (tokens per einsum), `loss_dtype` (float16 as the reference)."""

    def __init__(
        self,
        model: torch.nn.Module,
        seed: int,
        search: str = "exact",
        scramble: bool = True,
        latent_dim: int = LATENT_DIM,
        token_chunk: int = 128,
        loss_dtype: torch.dtype = torch.float16,
    ):
        if search not in SEARCHES:
            raise ValueError(f"search={search!r}: one of {', '.join(SEARCHES)}")
        self.model, self.search, self.scramble, self.token_chunk = model, search, scramble, token_chunk
        self.loss_dtype = loss_dtype
        model.requires_grad_(False)  # only the hooked layer's output is differentiated
        self.layer = model.blocks[-1].attn.proj
        e = self.embed_dim = self.layer.in_features
        device = next(model.parameters()).device
        self.rng = torch.Generator().manual_seed(int(seed))
        bound = 1 / math.sqrt(e)
        self.head = torch.nn.Linear(e, latent_dim).requires_grad_(False)
        self.head.weight.copy_(torch.empty(latent_dim, e).uniform_(-bound, bound, generator=self.rng))
        self.head.bias.copy_(torch.empty(latent_dim).uniform_(-bound, bound, generator=self.rng))
        self.head.to(device)
        p = torch.rand(e, self.layer.out_features * (e + 1), generator=self.rng) > 0.5
        self.projection = (p.float() * 2 - 1).to(device)  # P (E, E_out·(E_in + 1)); P3 = its view (E, E_out, E_in + 1)
        self.scaling = 1 / math.sqrt(e)
        self.support: list[torch.Tensor] = []
        self.bank = self.index = None
        self._capture = False
        self.layer.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if self._capture:
            self._a = inputs[0].detach()
            self._y = output.detach().requires_grad_(True)
            return self._y
        return None

    # --- support bank --------------------------------------------------------------------------------------------

    def add_support(self, patch_tokens: torch.Tensor, patches: np.ndarray | torch.Tensor | None = None) -> None:
        """Raw patch tokens (N, P, E) of training images (no CLS), restricted to `patches` (N, K) row-major indices
        (None: all), L2-normalised, appended to the support bank."""
        if patches is not None:
            index = torch.as_tensor(np.asarray(patches), dtype=torch.int64, device=patch_tokens.device)
            patch_tokens = patch_tokens.gather(1, index[..., None].expand(-1, -1, patch_tokens.shape[-1]))
        rows = F.normalize(patch_tokens.detach().float().reshape(-1, patch_tokens.shape[-1]), dim=-1)
        self.support.append(rows)
        self.bank = self.index = None

    def build_index(self) -> None:
        if not self.support:
            raise RuntimeError("dense FUNGI needs a support bank: fit() received no training images")
        self.bank = torch.cat(self.support)
        self.support = [self.bank]
        self.index = SEARCHES[self.search](self.bank)

    # --- features ------------------------------------------------------------------------------------------------

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images (N, 3, H, W) -> (N, T - 1, 2E) features, in chunks of CHUNK_IMAGES images."""
        if self.index is None:
            self.build_index()
        return torch.cat([self._chunk(c) for c in x.split(CHUNK_IMAGES)])

    def _chunk(self, x: torch.Tensor) -> torch.Tensor:
        self._capture = True
        try:
            with torch.enable_grad():
                tokens = self.model.forward_features(x)  # (B, T, E) after the final norm, CLS included
                b, t, e = tokens.shape
                latent = self.head(tokens)
                loss = self._loss(tokens.detach(), latent)
                (g,) = torch.autograd.grad(loss, self._y)
        finally:
            self._capture = False
        g = g * b
        a = self._a
        projected = self._project(g[:, 1:].reshape(-1, e), a[:, 1:].reshape(-1, a.shape[-1]))
        tokens = F.normalize(tokens.detach()[:, 1:], dim=-1)
        projected = F.normalize(projected.reshape(b, t - 1, -1), dim=-1)
        return F.normalize(torch.cat([tokens, projected], dim=-1), dim=-1)

    def negatives(self, tokens: torch.Tensor) -> torch.Tensor:
        """Raw tokens (B, T, E) -> head(negatives) (B, T, NEGATIVES, L), without gradient."""
        b, t, e = tokens.shape
        index = self.index.search(tokens.reshape(b * t, e))
        rows = scramble_neighbours(self.bank[index], b, t, NEGATIVES, self.scramble)
        with torch.no_grad():
            return self.head(rows.reshape(-1, e)).reshape(b, t, NEGATIVES, -1)

    def _loss(self, tokens: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        b, t, _ = tokens.shape
        negatives = self.negatives(tokens)
        losses = []
        for i in range(b):
            candidates = negatives[i].reshape(t * NEGATIVES, -1)
            keep = torch.rand(candidates.shape[0], generator=self.rng) <= KEEP
            losses.append(info_nce(candidates[keep.to(candidates.device)], latent[i], dtype=self.loss_dtype))
        return torch.stack(losses).float().mean()

    def _project(self, g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """scaling · einsum('kij,ti,tj->tk', P3, g, [a, 1]) = scaling · P @ vec([g ⊗ a | g]) per row of g (N, E_out)
        and a (N, E_in), token_chunk rows at a time. Evaluated as one GEMM per chunk, (chunk, E_out·(E_in + 1)) @ Pᵀ:
        on 2 CPU cores 1.6× faster than torch.einsum's own path (P3·g first), which also builds a (chunk, E, E + 1)
        intermediate; tests/test_fungi.py checks both against the explicit per-token gradients."""
        a = torch.cat([a, torch.ones_like(a[:, :1])], dim=1)
        out = [
            (gc[:, :, None] * ac[:, None, :]).reshape(len(gc), -1) @ self.projection.T
            for gc, ac in zip(g.split(self.token_chunk), a.split(self.token_chunk))
        ]
        return self.scaling * torch.cat(out)

    def project_einsum(self, g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """`_project` through torch.einsum on P3 (the §3.3 recipe as written), for the tests."""
        e_out, e_in = g.shape[1], a.shape[1]
        p3 = self.projection.view(-1, e_out, e_in + 1)
        a = torch.cat([a, torch.ones_like(a[:, :1])], dim=1)
        out = [
            torch.einsum("kij,ti,tj->tk", p3, gc, ac)
            for gc, ac in zip(g.split(self.token_chunk), a.split(self.token_chunk))
        ]
        return self.scaling * torch.cat(out)
