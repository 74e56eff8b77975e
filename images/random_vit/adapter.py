"""random_vit: timm ViT-S/16 with seeded random weights, the "architecture alone" baseline.

global: CLS token after the final norm. dense: patch tokens after the final norm, on the (H/16, W/16) grid.
Images are normalised here with ImageNet statistics, as the contract leaves normalisation to the method.
"""

import numpy as np
import timm
import torch

from benchsdk import Method, serve

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class RandomViT(Method):
    name, version = "random_vit", "1.0"
    outputs = ("global", "dense")
    patch_size, embed_dim = 16, 384

    def setup(self, seed, task):
        torch.manual_seed(seed)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0,
                                       dynamic_img_size=True).eval().to(self.device)

    @torch.inference_mode()
    def _tokens(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float().div_(255)
        x = (x - MEAN.to(x.device)) / STD.to(x.device)
        return self.model.forward_features(x)  # (N, 1 + h*w, D), final norm applied

    def embed(self, images):
        return self._tokens(images)[:, 0].float().cpu().numpy()

    def embed_dense(self, images):
        n, h, w, _ = images.shape
        tokens = self._tokens(images)[:, self.model.num_prefix_tokens:]
        return tokens.reshape(n, h // 16, w // 16, -1).float().cpu().numpy()


if __name__ == "__main__":
    serve(RandomViT())
