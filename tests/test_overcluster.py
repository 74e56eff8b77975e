import numpy as np
import pytest
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, jaccard_score
from sklearn.preprocessing import StandardScaler

import benchsdk
from harness.data.base import InMemoryDataset
from harness.errors import MethodFailure, UserError
from harness.protocols import PROTOCOLS
from harness.protocols.base import RunContext
from harness.protocols.common import neco_eval_sample
from harness.protocols.metrics import (
    contingency,
    hungarian_mapping,
    many_to_one_mapping,
    miou_crossfit,
    miou_hungarian,
    miou_many_to_one,
)
from harness.protocols.overcluster import (
    OverclusterParams,
    kmeans,
    kmeans_model,
    score_clusters,
    standardize_and_project,
    upsample_clusters,
)

from colour_coded import PATCH, C, PaletteSplit, palette_features
from conftest import session_of


def sklearn_miou(gt, pred, num_classes, ignore=255):
    keep = gt != ignore
    return 100 * jaccard_score(gt[keep], pred[keep], labels=range(num_classes), average=None, zero_division=0).mean()


# --- matching and metrics ------------------------------------------------------------------------------------------


def test_many_to_one_matches_a_direct_majority_vote():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, 4000)
    pred = (gt * 3 + rng.integers(0, 4, 4000)) % 13  # 13 clusters, mostly tied to one class each
    gt[:50] = 255
    conf = contingency(gt, pred, 5, 13, ignore_index=255)
    keep = gt != 255
    direct = [np.bincount(gt[keep][pred[keep] == c], minlength=5).argmax() for c in range(13)]
    np.testing.assert_array_equal(many_to_one_mapping(conf), direct)
    remapped = np.asarray(direct)[pred]
    assert 100 * miou_many_to_one(conf)[0] == pytest.approx(sklearn_miou(gt, remapped, 5))


def test_many_to_one_ties_and_empty_clusters_go_to_the_lowest_class():
    conf = np.array([[0, 5, 0], [0, 5, 1], [0, 0, 1]])
    np.testing.assert_array_equal(many_to_one_mapping(conf), [0, 0, 1])


def test_hungarian_is_used_when_k_equals_the_classes():
    gt = np.repeat([[0, 0, 1, 2]], 6, axis=0).reshape(6, 2, 2)
    maps = np.repeat([[0, 1, 1, 2]], 6, axis=0).reshape(6, 2, 2)  # clusters 0 and 1 both mostly class 0
    conf = contingency(gt, maps, 3, 3)
    hungarian = score_clusters(gt, maps, 3, 3, 255)
    assert hungarian["miou"] == pytest.approx(100 * miou_hungarian(conf)[0])
    assert hungarian["miou"] != pytest.approx(100 * miou_many_to_one(conf)[0])
    many = score_clusters(gt, maps, 3, 4, 255)  # 3 clusters, 4 classes: many-to-one
    assert many["miou"] == pytest.approx(100 * miou_many_to_one(contingency(gt, maps, 4, 3))[0])


def test_heldout_mapping_removes_self_labelling():
    """Every image gets its own clusters: many-to-one names each after its own pixels (100), held out cannot."""
    rng = np.random.default_rng(1)
    masks = rng.integers(0, 3, size=(6, 8, 8))
    maps = masks + 3 * np.arange(6)[:, None, None]
    scores = score_clusters(masks, maps, 18, 3, 255)
    assert scores["miou"] == pytest.approx(100)
    assert scores["miou_heldout"] < 40
    # clusters shared across images keep their held-out score
    assert score_clusters(masks, masks, 5, 3, 255)["miou_heldout"] == pytest.approx(100)


def test_crossfit_uses_the_other_half():
    conf_a = np.array([[10, 0], [0, 10]])
    conf_b = np.array([[0, 10], [10, 0]])  # the other half labels the clusters the other way round
    assert miou_crossfit(conf_a, conf_b, many_to_one_mapping)[0] == 0
    assert miou_crossfit(conf_a, conf_a, hungarian_mapping)[0] == 1


# --- features, k-means, resizing -----------------------------------------------------------------------------------


def test_standardize_and_project_matches_sklearn():
    x = np.random.default_rng(2).normal(size=(500, 8)).astype(np.float32) * np.arange(1, 9) + 3
    ours = standardize_and_project(x.copy(), 3)
    ref = PCA(3).fit_transform(StandardScaler().fit_transform(x))
    for i in range(3):  # components agree up to sign
        assert abs(np.corrcoef(ours[:, i], ref[:, i])[0, 1]) == pytest.approx(1, abs=1e-4)
    assert standardize_and_project(x.copy(), 50).shape == (500, 8)  # fewer dims than pca_dim: keep all


def test_kmeans_honours_its_settings_and_agrees_with_sklearn():
    model = kmeans_model(50, 500, iters=100, restarts=5, seed=3)
    assert (model.cp.niter, model.cp.nredo, model.cp.seed, model.cp.spherical) == (100, 5, 3, False)
    assert model.cp.max_points_per_centroid == 256  # faiss subsamples 256·K training points, as in the reference
    rng = np.random.default_rng(3)
    centres = rng.normal(scale=10, size=(6, 5))
    x = (centres[rng.integers(0, 6, 1500)] + rng.normal(size=(1500, 5))).astype(np.float32)
    labels, inertia = kmeans(x, 6, iters=100, restarts=5, seed=0)
    ref = KMeans(6, init="random", n_init=5, max_iter=100, random_state=0).fit(x)
    assert adjusted_rand_score(labels, ref.labels_) == pytest.approx(1)
    assert inertia == pytest.approx(ref.inertia_, rel=1e-4)
    # iterations and restarts take effect: one iteration ends worse; restarts never end worse than the first alone
    hard = rng.normal(size=(2000, 2)).astype(np.float32)
    assert kmeans(hard, 30, 1, 1, 7)[1] > kmeans(hard, 30, 100, 1, 7)[1]
    assert kmeans(hard, 30, 5, 5, 7)[1] <= kmeans(hard, 30, 5, 1, 7)[1] + 1e-3


def test_upsample_clusters_is_torch_nearest():
    labels = np.arange(2 * 7 * 7) % 300
    maps = upsample_clusters(labels, 2, 7, 100)
    index = np.floor(np.arange(100) * 7 / 100).astype(int)
    np.testing.assert_array_equal(maps, labels.reshape(2, 7, 7)[:, index][:, :, index])


def test_eval_sample_matches_torchvision_pipeline():
    rng = np.random.default_rng(4)
    mask = rng.integers(0, 21, size=(37, 53)).astype(np.uint8)
    mask[:3] = 255
    split = PaletteSplit("val", [mask], images=[np.zeros((37, 53, 3), np.uint8)])
    _, ours = neco_eval_sample(split, 448, 100, 0)
    to_448 = T.Compose([T.Resize((448, 448), interpolation=T.InterpolationMode.NEAREST), T.ToTensor()])
    ref = to_448(Image.fromarray(mask))
    ref = F.interpolate(ref[None] * 255, size=(100, 100), mode="nearest")[0, 0].numpy().astype(np.uint8)
    np.testing.assert_array_equal(ours, ref)


# --- the protocol end to end ---------------------------------------------------------------------------------------


def grid_masks(n, size=64, seed=5):
    """Masks constant on each 16-px patch, every class present in every image, a few ignored pixels."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, C, size=(n, size // PATCH, size // PATCH))
    coarse[:, 0, :C] = np.arange(C)
    masks = np.kron(coarse, np.ones((PATCH, PATCH), dtype=np.int64)).astype(np.uint8)
    masks[:, -2:, -3:] = 255
    return list(masks)


class Palette(benchsdk.Method):
    """oracle: one-hot class of each patch's colour (+ a little noise); random: noise; wrong_shape: breaks."""

    name, version, outputs = "palette", "0", ("dense",)
    patch_size, embed_dim = PATCH, C

    def __init__(self, mode="oracle"):
        self.mode = mode

    def embed_dense(self, images):
        n, h, w, _ = images.shape
        rng = np.random.default_rng(int(images.sum()) % 2**32)
        noise = rng.normal(scale=0.01, size=(n, h // PATCH, w // PATCH, C)).astype(np.float32)
        if self.mode == "random":
            return noise * 100
        features = palette_features(images) + noise
        return features[:, :-1] if self.mode == "wrong_shape" else features


def run(session, seed=0, n=6, **params):
    params = {"input_size": 64, "k": 4, "num_seeds": 2, "kmeans_iters": 20, **params}
    ctx = RunContext(session=session_of(session), seed=seed, batch_size=4, num_workers=0, progress=False)
    protocol = PROTOCOLS["overcluster"](OverclusterParams(**params))
    outcome = protocol.run(InMemoryDataset({"val": PaletteSplit("val", grid_masks(n))}), ctx)
    assert protocol.main_metric in outcome.metrics
    return outcome


@pytest.mark.parametrize("k", [4, 12])  # Hungarian, many-to-one
def test_oracle_features_score_100(k):
    outcome = run(Palette(), k=k, n=20)  # enough images for every sub-cluster to appear in both halves
    assert outcome.metrics["miou"] == pytest.approx(100)
    assert outcome.metrics["miou_heldout"] == pytest.approx(100)
    assert outcome.details["matching"] == ("Hungarian" if k == C else "many-to-one (majority class)")
    assert outcome.details["miou_per_seed"] == [100, 100] and outcome.details["seeds"] == [0, 1]
    assert outcome.details["points_clustered"] == 20 * 16 and outcome.details["pca_dim"] == C
    assert any("PCA keeps all" in note for note in outcome.notes)


def test_random_features_score_low():
    outcome = run(Palette("random"), k=8, n=12)
    assert outcome.metrics["miou"] < 30 and outcome.metrics["miou_heldout"] < 30  # oracle: 100


def test_seeds_come_from_the_run_seed():
    assert run(Palette(), seed=3, num_seeds=2).details["seeds"] == [6, 7]


def test_errors():
    with pytest.raises(UserError, match=r"params.k=97 clusters exceeds the 96 patch features"):
        run(Palette(), k=97)
    with pytest.raises(MethodFailure, match="shape"):
        run(Palette("wrong_shape"))
