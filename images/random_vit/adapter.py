"""random_vit: timm ViT-S/16 with seeded random weights, the "architecture alone" baseline.

global: CLS token after the final norm. dense: patch tokens after the final norm, on the (H/16, W/16) grid.
masks: the patch tokens upsampled bilinearly to (H, W), k-means (scikit-learn, seeded in setup) of each image's
pixels into 11 segments, as one-hot masks; reconstruction = each segment's mean colour.
Images are normalised here with ImageNet statistics, as the contract leaves normalisation to the method.
"""

import numpy as np
import timm
import torch
import torch.nn.functional as F

from benchsdk import Method, serve

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
SEGMENTS = 11


class RandomViT(Method):
    name, version = "random_vit", "1.1"
    outputs = ("global", "dense", "masks")
    patch_size, embed_dim = 16, 384

    def setup(self, seed, task):
        self.seed = seed
        torch.manual_seed(seed)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = (
            timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, dynamic_img_size=True)
            .eval()
            .to(self.device)
        )

    @torch.inference_mode()
    def _tokens(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float().div_(255)
        x = (x - MEAN.to(x.device)) / STD.to(x.device)
        return self.model.forward_features(x)  # (N, 1 + h*w, D), final norm applied

    def embed(self, images):
        return self._tokens(images)[:, 0].float().cpu().numpy()

    def embed_dense(self, images):
        n, h, w, _ = images.shape
        tokens = self._tokens(images)[:, self.model.num_prefix_tokens :]
        return tokens.reshape(n, h // 16, w // 16, -1).float().cpu().numpy()

    def segment(self, images):
        from sklearn.cluster import KMeans  # only this output needs scikit-learn

        n, h, w, _ = images.shape
        masks = np.zeros((n, SEGMENTS, h, w), np.float32)
        recon = np.zeros((n, 3, h, w), np.float32)
        for i, (tokens, image) in enumerate(zip(self.embed_dense(images), images)):
            pixels = _upsampled_in_token_span(tokens, h, w)
            labels = KMeans(SEGMENTS, n_init=1, random_state=self.seed).fit_predict(pixels).reshape(h, w)
            masks[i] = labels == np.arange(SEGMENTS)[:, None, None]
            counts = np.maximum(np.bincount(labels.ravel(), minlength=SEGMENTS), 1)
            for c in range(3):
                recon[i, c] = (np.bincount(labels.ravel(), image[..., c].ravel() / 255, SEGMENTS) / counts)[labels]
        return masks, recon


def _upsampled_in_token_span(tokens: np.ndarray, h: int, w: int) -> np.ndarray:
    """(h·w, r) bilinearly upsampled tokens (gh, gw, D), in coordinates of the r ≤ gh·gw dimensional span of the
    centred tokens: upsampling is affine with weights summing to 1, so distances between pixels, and hence the
    k-means clustering, are those of the D-dimensional upsampled tokens, at a fraction of the cost."""
    gh, gw, dim = tokens.shape
    flat = tokens.reshape(-1, dim).astype(np.float64)
    u, s, _ = np.linalg.svd(flat - flat.mean(0), full_matrices=False)
    coords = torch.from_numpy((u * s).T.reshape(1, -1, gh, gw))
    up = F.interpolate(coords, size=(h, w), mode="bilinear", align_corners=False)
    return up[0].reshape(len(s), h * w).T.numpy().astype(np.float32)


if __name__ == "__main__":
    serve(RandomViT())
