"""Test method sgd: a linear map of each image's mean colour, trained by `bench train` with plain SGD on data it makes
itself (targets of a fixed random linear map plus noise, seeded by the step: resumable without data state).

Its recipes' params: lr. $SGD_NAN_AT=k: the loss of step k is NaN. $SGD_STEP_SLEEP=s: each step sleeps s seconds
(so a test can kill the harness mid-run). Weights ($BENCH_WEIGHTS, what export_weights writes): W as .npy."""

import os
import time

import numpy as np

from benchsdk import Method, serve

TRUE_W = np.random.default_rng(123).normal(size=(3, 4))


class Sgd(Method):
    name, version, outputs, embed_dim = "sgd", "0", ("global",), 4

    def setup(self, seed, task):
        weights = os.environ.get("BENCH_WEIGHTS")
        self.w = np.load(weights) if weights else np.random.default_rng(seed).normal(size=(3, 4))

    def embed(self, images):
        return (images.reshape(len(images), -1, 3).mean(1) / 255) @ self.w

    def train_start(self, recipe, params, seed, checkpoint):
        self.lr, self.seed = float(params.get("lr", 0.1)), seed
        if checkpoint:
            state = np.load(checkpoint)
            self.w, self.step = state["w"], int(state["step"])
        else:
            self.w, self.step = np.random.default_rng(seed).normal(size=(3, 4)), 0
        return self.step

    def train_step(self, images):
        time.sleep(float(os.environ.get("SGD_STEP_SLEEP", "0")))
        rng = np.random.default_rng((self.seed, self.step))
        x = rng.random((32, 3))
        y = x @ TRUE_W + 0.01 * rng.normal(size=(32, 4))
        err = x @ self.w - y
        self.w -= self.lr * x.T @ err / len(x)
        self.step += 1
        if os.environ.get("SGD_NAN_AT") == str(self.step):
            return float("nan")
        return float((err**2).mean())

    def save_checkpoint(self, path):
        with open(path, "wb") as f:
            np.savez(f, w=self.w, step=self.step)

    def export_weights(self, path):
        with open(path, "wb") as f:
            np.save(f, self.w)


if __name__ == "__main__":
    serve(Sgd())
