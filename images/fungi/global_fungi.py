"""Global FUNGI features (Simoncini et al., "No Train, all Gain", NeurIPS 2024) for the kNN protocols, computed by the
authors' own package: PyPI `fungivision==0.0.2` (MIT; WalterSimoncini/fungivision 12ae1d4), used as is, never copied
or patched. The feature of an image is

    cat(normalize(CLS), normalize(g_KL), normalize(g_DINO), normalize(g_SimCLR))        (4·E; 1536 for ViT-S/16)

where CLS is the backbone's CLS token after the final norm (what images/dino's `embed` gives at 224) and the three
gradient blocks are `FUNGIWrapper(model, "blocks.11.attn.proj", extractor_configs=[KLConfig(), DINOConfig(),
SimCLRConfig(num_patches=4, stride_scale=6)])`'s output, as the package README builds it: per-image gradients of the
target layer's weight and bias under each self-supervised loss, summed over the loss's views, projected to E by one
shared random ±1 matrix P (E × E·(E+1)), each block L2-normalised by the wrapper (METHODS.md §3.1).

Inputs. fungivision takes a list of PIL images with "NO transformation applied" (its README): each objective makes its
own views from the PIL image and normalises them with the ImageNet mean/std itself. The harness sends uint8 RGB
batches (N, 224, 224, 3), already resized (shorter side 256, bicubic) and center-cropped to 224 (PROTOCOLS.md §C);
each image goes to the wrapper as `PIL.Image.fromarray(image)` (mode RGB), nothing else done to it. On top of that
fungivision applies, per objective:
- KL (1 view): `ToImage` → `Resize((256, 256))` bilinear, antialias, on the uint8 tensor → `CenterCrop(224)` →
  /255 → mean/std. On our 224 crop this is a 256/224 zoom on its centre (a second centre crop).
- DINO (12 views): 2 `RandomResizedCrop(224, scale=(0.25, 1))` + 10 `RandomResizedCrop(224, scale=(0.05, 0.25))`,
  bicubic on the PIL image, then `ToTensor` (/255) → mean/std; no colour augmentation. The crops are random: drawn
  from torch's global CPU RNG (see Seeding).
- SimCLR (49 views): `Resize((224, 224))` bicubic on the PIL image (a no-op size here) → `ToTensor` → 7×7 windows of
  112 px at stride 18 → each resized to 224 (bicubic, antialias, tensor) → mean/std. The loss contrasts them with the
  negatives: 64 training images × 49 views, encoded once in `fit_negatives` (no grad), as fungivision's `setup`.
- The embedding (CLS) is computed here as images/dino does it: uint8 / 255 → mean/std → `forward_features(x)[:, 0]`,
  on the harness's image itself (fungivision leaves the embedding to the user, "each model requires its own inference
  transform"). Only 224×224 inputs are accepted: at another size the embedding would need images/dino's official
  position-embedding interpolation, which this module does not do.
Deliberate differences from the paper's pipeline: the views are made from the harness's 224 centre crop, not from the
raw image (the contract only ever sends preprocessed images), so KL's and SimCLR's `Resize` do not see the original
aspect ratio; fp32 throughout (`use_fp16=False`; the README's GPU demo runs bf16 autocast); the 64 negatives are the
first 64 images given to `fit_negatives`, not 64 drawn from the whole train split (the wrapper's `randperm` then only
orders them).

Seeding. fungivision draws everything random from torch's global CPU RNG. Every call into it here runs inside
`torch.random.fork_rng`, so the caller's global RNG is left as it was, and the draws come, in this order, from:
1. `torch.manual_seed(seed)` at construction, then the wrapper's own draws: `model_feature_dim`'s probe
   `torch.randn(1, 3, 224, 224)`, P (`torch.rand(E, E·(E+1))`), then the projection heads in config order: KL
   `Linear(E, 768)`; DINO student `Linear(E, 2048)`, then DINO teacher `Linear(E, 2048)`; SimCLR `Linear(E, 96)`.
2. The same stream, continued, in `fit_negatives` once the 64 images are in: SimCLR's `setup` draws
   `torch.randperm(64)` (the order of the negatives).
3. For the DINO crops of each image (the only random views), by default (`views="image"`) the RNG is re-seeded with
   `view_seed(seed, image)` (from a SHA-256 of the seed and the image's bytes) just before fungivision's own
   `DINOTransform` makes that image's 12 crops (the DINO extractor's `transform` attribute is set to a callable that
   seeds and then calls the package's transform, unchanged; nothing else draws while views are made). So a
   feature is a function of (seed, pixels) only: the same whatever the batch size, the order of the requests or the
   other images sent, and a duplicated image gets the same feature. The README's loop instead continues one stream
   over the dataset, so there an image's crops depend on its position; `views="stream"` reproduces that exactly
   (the stream of 1-2, continued over every image in the order sent; the crops per image are drawn in that order
   whatever the batching).
Two instances with one seed (on the same weights) therefore give identical features.

fungivision 0.0.2's defects, worked around without touching it:
- `FUNGIWrapper(projection=P)` raises UnboundLocalError (`scaling` is only set when it draws P itself): P is never
  passed; the wrapper draws it from the seeded RNG (step 1).
- `SimCLRGradientsExtractor` hands `input_dim` to `Patchify` under a name it ignores (`image_size` stays 224): harmless
  at 224, the only input size used (`input_dim=224`); checked at construction.
- The wrapper does not put the model in eval mode (it is done here; timm's ViT has no dropout or batch norm, so it
  changes nothing) and freezes and hooks the model in place (every parameter but the target layer's gets
  `requires_grad=False`, and autograd_hacks hooks the target layer). A model can be wrapped once only (a second set of
  hooks breaks its backprop count): a ValueError says so. Its images/dino `embed` keeps working.
- Its deprecation warnings (v2 `ToTensor`, `torch.cuda.amp.autocast`, the non-full backward hook, kl_div 'mean') are
  silenced around its calls; they repeat on every call and change nothing.

Cost: 1 + 12 + 49 = 62 forward passes at 224 per image (backward only from the loss to blocks.11.attn.proj, which is
all that requires grad) plus the embedding forward, and 64 × 49 = 3,136 no-grad forwards once for the negatives.
`images_per_call` images go to the wrapper per call (default 1: 49 views in a batch, bounded memory; more batches the
views of several images, which changes no draw and only the float rounding of batched matmuls, about 2e-6, and gave no
speed-up on the 2-core CPU; it may on a GPU). docs/fungi_global.md has the measured times.
"""

from __future__ import annotations

import hashlib
import warnings
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from fungivision.config import DINOConfig, KLConfig, SimCLRConfig
from fungivision.wrapper import FUNGIWrapper
from PIL import Image

TARGET_LAYER = "blocks.11.attn.proj"
NUM_NEGATIVES = 64  # SimCLRConfig.comparison_batch_size's default
INPUT_DIM = 224
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
VIEWS = ("image", "stream")
_QUIET = (  # fungivision's per-call deprecation warnings (module docstring)
    r"The transform `ToTensor\(\)` is deprecated",
    r"`torch.cuda.amp.autocast\(args...\)` is deprecated",
    r"Using a non-full backward hook",
    r"reduction: 'mean' divides the total loss",
)


def extractor_configs(num_negatives: int = NUM_NEGATIVES) -> list:
    """The wrapper's objectives, in this order (it fixes the RNG order of their heads): the README's KL, DINO and
    SimCLR(num_patches=4, stride_scale=6), package defaults otherwise."""
    return [KLConfig(), DINOConfig(), SimCLRConfig(num_patches=4, stride_scale=6, comparison_batch_size=num_negatives)]


def view_seed(seed: int, image: np.ndarray) -> int:
    """The torch seed of one image's DINO crops under views="image": SHA-256 of the seed, the image's shape and its
    bytes, first 8 bytes, as a non-negative int64."""
    h = hashlib.sha256(f"fungi-views:{int(seed)}:{image.shape}:".encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return int.from_bytes(h.digest()[:8], "little") & (2**63 - 1)


class SeededViews:
    """fungivision's DINOTransform (unchanged), called with the torch RNG seeded from view_seed(seed, image) first:
    the DINO extractor's `transform` under views="image"."""

    def __init__(self, transform, seed: int):
        self.transform, self.seed = transform, int(seed)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        torch.manual_seed(view_seed(self.seed, np.asarray(image)))
        return self.transform(image)


def to_pil(image: np.ndarray) -> Image.Image:
    """One harness image (H, W, 3) uint8 RGB as the PIL image fungivision takes."""
    return Image.fromarray(np.ascontiguousarray(image))  # (H, W, 3) uint8: mode RGB


def _check_batch(images: np.ndarray, what: str) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{what}: expected uint8 RGB images (N, H, W, 3), got {images.dtype} {images.shape}")
    return images


@contextmanager
def _quiet():
    with warnings.catch_warnings():
        for message in _QUIET:
            warnings.filterwarnings("ignore", message=message)
        yield


class GlobalFungi:
    """Global FUNGI of a timm DINO ViT (see the module docstring): `fit_negatives` until `needs_more` is False, then
    `features`.

    model: the timm ViT (images/dino builds `timm.create_model("vit_small_patch16_224", num_classes=0)`); frozen and
    hooked in place. seed: the setup seed (Seeding, in the module docstring). views: "image" (default) or "stream".
    images_per_call: images per wrapper call. target_layer and num_negatives: fungivision's (tests use a shallower
    model and fewer negatives)."""

    def __init__(
        self,
        model: torch.nn.Module,
        seed: int,
        device: str | torch.device = "cpu",
        *,
        views: str = "image",
        images_per_call: int = 1,
        target_layer: str = TARGET_LAYER,
        num_negatives: int = NUM_NEGATIVES,
    ):
        if views not in VIEWS:
            raise ValueError(f"views must be one of {VIEWS}, not {views!r}")
        if hasattr(model, "autograd_hacks_hooks"):
            raise ValueError("this model is already wrapped by fungivision (its hooks are on it): give a fresh copy")
        if images_per_call < 1:
            raise ValueError(f"images_per_call must be at least 1, not {images_per_call}")
        self.seed, self.views, self.num_negatives = int(seed), views, int(num_negatives)
        self.images_per_call = int(images_per_call)
        self.device = torch.device(device)
        self.model = model.eval()
        with self._rng(seed=self.seed):
            self.wrapper = FUNGIWrapper(
                model=self.model,
                target_layer=target_layer,
                device=self.device,
                input_dim=INPUT_DIM,
                use_fp16=False,
                extractor_configs=extractor_configs(self.num_negatives),
            )
            self._stream = torch.get_rng_state()
        self.embed_dim = self.wrapper.embeddings_dim
        simclr = self.wrapper.extractors[2]
        if simclr.transform.patch_size * 2 != INPUT_DIM:  # the input_dim defect is harmless only at 224
            raise RuntimeError(f"fungivision's Patchify windows are {simclr.transform.patch_size} px, not 112")
        if views == "image":
            dino = self.wrapper.extractors[1]
            dino.transform = SeededViews(dino.transform, self.seed)
        self._negatives: list[np.ndarray] = []
        self.ready = False

    @contextmanager
    def _rng(self, state: torch.Tensor | None = None, seed: int | None = None):
        """fungivision's draws inside a fork of the global CPU RNG, starting from `state` or `seed`."""
        with torch.random.fork_rng(devices=[]), _quiet():
            if seed is not None:
                torch.manual_seed(seed)
            else:
                torch.set_rng_state(state)
            yield

    @property
    def needs_more(self) -> bool:
        """True until num_negatives (64) training images have been given to fit_negatives."""
        return not self.ready

    @property
    def feature_dim(self) -> int:
        return 4 * self.embed_dim

    def fit_negatives(self, images: np.ndarray) -> bool:
        """Collect training images (uint8 (N, H, W, 3)) for SimCLR's negatives; returns `needs_more`. The first
        num_negatives given are kept (later ones are ignored); with the last of them, fungivision's `setup` encodes
        them (49 views each, no grad), on the RNG stream of construction."""
        images = _check_batch(images, "fit_negatives")
        if self.ready:
            return False
        room = self.num_negatives - len(self._negatives)
        self._negatives.extend(np.array(image) for image in images[:room])
        if len(self._negatives) == self.num_negatives:
            self._setup_negatives()
        return self.needs_more

    def finish_negatives(self) -> int:
        """The training split has ended: set the negatives up from the images collected so far, however few, as
        fungivision's `setup` does on a dataset smaller than 64 (it takes them all). Returns how many it used."""
        if not self.ready:
            if not self._negatives:
                raise RuntimeError("global FUNGI needs at least one training image for its SimCLR negatives")
            used = len(self._negatives)
            self._setup_negatives()
            return used
        return self.num_negatives

    def _setup_negatives(self) -> None:
        with self._rng(self._stream):
            self.wrapper.setup(dataset=[(to_pil(image), 0) for image in self._negatives])
            self._stream = torch.get_rng_state()
        self._negatives, self.ready = [], True

    def embed(self, images: np.ndarray) -> torch.Tensor:
        """The CLS token after the final norm, (N, E) float32, as images/dino's embed at 224 (not normalised)."""
        images = _check_batch(images, "embed")
        if images.shape[1:3] != (INPUT_DIM, INPUT_DIM):
            raise ValueError(f"global FUNGI takes {INPUT_DIM}×{INPUT_DIM} images, got {images.shape[1:3]}")
        with torch.inference_mode():
            x = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float().div_(255)
            x = (x - MEAN.to(x.device)) / STD.to(x.device)
            return self.model.forward_features(x)[:, 0].float()

    def gradients(self, images: np.ndarray) -> torch.Tensor:
        """fungivision's three L2-normalised gradient blocks, (N, 3E) float32, images_per_call images per wrapper
        call."""
        images = _check_batch(images, "gradients")
        if self.needs_more:
            raise RuntimeError(
                f"global FUNGI needs {self.num_negatives} training images for its SimCLR negatives before features; "
                f"it has {len(self._negatives)}: give more to fit_negatives"
            )
        out = []
        for start in range(0, len(images), self.images_per_call):
            chunk = [to_pil(image) for image in images[start : start + self.images_per_call]]
            with self._rng(self._stream):  # views="image": SeededViews re-seeds per image
                out.append(self.wrapper(chunk).detach())
                if self.views == "stream":
                    self._stream = torch.get_rng_state()
        return torch.cat(out).float() if out else torch.zeros(0, 3 * self.embed_dim)

    def features(self, images: np.ndarray) -> np.ndarray:
        """cat(normalize(CLS), g_KL, g_DINO, g_SimCLR): (N, 4E) float32, each E-block unit-norm."""
        grads = self.gradients(images)
        emb = F.normalize(self.embed(images), dim=-1, p=2)
        return torch.cat([emb, grads.to(emb.device)], dim=-1).cpu().numpy().astype(np.float32)
