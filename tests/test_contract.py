"""The method contract end to end: wire format, SDK server, harness session, local runner, misbehaving methods."""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from benchsdk import FitBatch
from benchsdk.wire import MAGIC, WireError, encode, read_frame
from harness.errors import MethodFailure, MethodTimeout, SpecError, UserError
from harness.runners.local import LocalRunner
from harness.specs import MethodSpec, load_spec

from conftest import images, method_spec, shared_code_method

TESTS = Path(__file__).parent
IMAGES = TESTS.parent / "images"


def reader(data: bytes):
    stream = io.BytesIO(data)

    def read_exact(n):
        buf = stream.read(n)
        if len(buf) != n:
            raise EOFError
        return buf

    return read_exact


# --- wire format -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "int64", "float16", "float32", "float64", "bool"])
def test_frames_round_trip_arrays_exactly(dtype):
    arrays = {"a": (np.random.default_rng(1).random((2, 3, 4)) * 100).astype(dtype), "empty": np.zeros((0, 5))}
    header, out = read_frame(reader(b"".join(bytes(c) for c in encode({"op": "x", "n": 1}, arrays))))
    assert header == {"op": "x", "n": 1}
    assert set(out) == {"a", "empty"}
    np.testing.assert_array_equal(out["a"], arrays["a"])
    assert out["a"].dtype == np.dtype(dtype) and out["empty"].shape == (0, 5)


def test_non_contiguous_and_big_endian_arrays_are_sent_as_little_endian_c_order():
    a = np.arange(24, dtype=">f4").reshape(4, 6)[:, ::2]
    _, out = read_frame(reader(b"".join(bytes(c) for c in encode({"ok": True}, {"a": a}))))
    np.testing.assert_array_equal(out["a"], a)


def test_bad_magic_is_a_wire_error_that_hints_at_stdout():
    with pytest.raises(WireError, match="print to stdout"):
        read_frame(reader(b"hello world, not a frame"))


def test_payload_over_the_limit_is_refused_before_it_is_read():
    data = b"".join(bytes(c) for c in encode({"ok": True}, {"a": np.zeros(1000, np.float32)}))
    with pytest.raises(WireError, match="exceeds the limit"):
        read_frame(reader(data[:200]), max_payload=100)  # payload bytes are never touched


def test_unknown_dtype_and_bad_shape_in_a_header_are_refused():
    import json
    import struct

    for spec in ({"name": "a", "dtype": "object", "shape": [1]}, {"name": "a", "dtype": "uint8", "shape": [-1]}):
        body = json.dumps({"ok": True, "arrays": [spec]}).encode()
        with pytest.raises(WireError):
            read_frame(reader(MAGIC + struct.pack("<I", len(body)) + body))


# --- a real method over the local runner -------------------------------------------------------------------------


def start(name: str, timeout_s: float = 60, seed: int = 0):
    return LocalRunner().start(method_spec(name), seed, {"name": "test", "output": "global"}, timeout_s)


def test_handshake_and_outputs_of_the_pixels_baseline():
    x = images(2, 64, 32)
    with start("pixels") as running:
        s = running.session
        assert s.info.protocol == 1 and s.info.name == "pixels" and set(s.info.outputs) == {"global", "dense", "masks"}
        g, d = s.embed(x), s.embed_dense(x)
    assert g.shape == (2, 48) and g.dtype == np.float32
    assert d.shape == (2, 4, 2, 48)
    # the dense feature of a patch is its 4x4 average pool: check one patch independently
    patch = x[1, 16:32, 16:32].astype(np.float64) / 127.5 - 1
    expected = patch.reshape(4, 4, 4, 4, 3).mean(axis=(1, 3)).reshape(-1)
    np.testing.assert_allclose(d[1, 1, 1], expected, atol=1e-5)


def test_method_prints_on_stdout_do_not_corrupt_the_stream():
    with start("chatty") as running:
        out = running.session.embed(images())
    assert out.shape == (3, 4)
    assert "hello on stdout" in running.log_tail and "raw bytes on fd 1" in running.log_tail


def test_fit_streams_training_images_and_labels_only_when_allowed():
    batches = [FitBatch(images(4, seed=i), np.arange(4, dtype=np.int64) + i) for i in range(3)]
    mean = np.concatenate([b[0] for b in batches]).reshape(-1, 3).mean(0)
    for with_labels, label_sum in ((False, -1.0), (True, float(sum(b[1].sum() for b in batches)))):
        with start("fitter") as running:
            running.session.fit(iter(batches), with_labels=with_labels)
            out = running.session.embed(np.zeros((1, 16, 16, 3), np.uint8))
        np.testing.assert_allclose(out[0, :3], mean, rtol=1e-5)
        assert out[0, 3] == label_sum


def test_an_error_inside_fit_fails_the_stage_and_the_method_keeps_serving(monkeypatch):
    monkeypatch.setenv("FITTER_FAIL_AT", "2")
    with start("fitter") as running:
        with pytest.raises(MethodFailure, match="fit failed at batch 2"):
            running.session.fit(iter([FitBatch(images(2, seed=i)) for i in range(4)]), with_labels=False)
        assert running.session.embed(images(1)).shape == (1, 4)


def test_a_method_that_returns_from_fit_early_stops_the_stream(monkeypatch):
    monkeypatch.setenv("FITTER_STOP_AFTER", "2")
    sent = []

    def batches():
        for i in range(5):
            sent.append(i)
            yield FitBatch(images(2, seed=i))

    with start("fitter") as running:
        running.session.fit(batches(), with_labels=False)
        out = running.session.embed(np.zeros((1, 16, 16, 3), np.uint8))
    assert sent == [0, 1]  # the third batch was never made
    mean = np.concatenate([images(2, seed=i) for i in range(2)]).reshape(-1, 3).mean(0)
    np.testing.assert_allclose(out[0, :3], mean, rtol=1e-5)
    assert running.session.fit_seconds > 0 and running.session.images_sent == 4 + 1  # two fit batches, one embed


@pytest.mark.parametrize(
    "name, error",
    [
        ("crasher", r"closed its output stream.*\(exited with code 3\)"),
        ("raiser", "boom from the method"),
        ("nan_out", "NaN or Inf"),
        ("wrong_count", r"features has shape \(2, 4\), expected \(3, 4\)"),
    ],
)
def test_misbehaving_methods_become_method_failures(name, error):
    with pytest.raises(MethodFailure, match=error):
        with start(name) as running:
            running.session.embed(images())


def test_sdk_methods_move_to_the_contract_socket_after_info_or_keep_stdio_when_none_is_offered(monkeypatch):
    x = images(4, 64, 64)
    outputs = {}
    for transport in ("socket", "stdio"):
        if transport == "stdio":
            monkeypatch.setenv("BENCH_TRANSPORT", "stdio")  # the harness offers no socket
        with start("pixels") as running:
            outputs[transport] = running.session.embed_dense(x), running.session.embed(x)
        assert running.session.info.transport == transport
    for a, b in zip(outputs["socket"], outputs["stdio"]):
        np.testing.assert_array_equal(a, b)


def test_an_unknown_transport_setting_is_a_user_error_before_anything_starts(monkeypatch):
    monkeypatch.setenv("BENCH_TRANSPORT", "carrier-pigeon")
    with pytest.raises(UserError, match="BENCH_TRANSPORT='carrier-pigeon': use socket"):
        with start("pixels"):
            pass


def adhoc(tmp_path: Path, behaviour: str, outputs: str = "[global]", more_yaml: str = "") -> MethodSpec:
    """A test method whose folder (and so behaviour, see tests/methods/_misbehave) is made up on the spot."""
    folder = tmp_path / behaviour
    shutil.copytree(TESTS / "methods" / "_misbehave", tmp_path / "_misbehave", dirs_exist_ok=True)
    folder.mkdir()
    (folder / "adapter.py").write_text((TESTS / "methods" / "crasher" / "adapter.py").read_text())  # by folder name
    (folder / "method.yaml").write_text(
        f"name: {behaviour}\nversion: '0'\ndescription: x\noutputs: {outputs}\ninclude: [../_misbehave]\n{more_yaml}"
    )
    return load_spec(MethodSpec, folder / "method.yaml")


def test_stdout_after_the_move_to_the_socket_goes_to_the_log_and_never_blocks_the_method(tmp_path):
    with LocalRunner().start(adhoc(tmp_path, "loud"), 0, {}, 20) as running:
        assert running.session.embed(images()).shape == (3, 4)  # 2.6 MB on stdout: far beyond a pipe's buffer
    assert running.session.info.transport == "socket" and "stray stdout" in running.log_tail


def test_a_method_that_cannot_reach_the_socket_stays_on_stdio(tmp_path):
    with LocalRunner().start(adhoc(tmp_path, "unreachable"), 0, {}, 60) as running:
        assert running.session.embed(images()).shape == (3, 4)
    assert running.session.info.transport == "stdio"
    assert (
        "cannot connect to /nonexistent/contract.sock" in running.log_tail
        and "staying on stdin/stdout" in running.log_tail
    )


@pytest.mark.parametrize(
    "behaviour, failure, error",
    [
        ("exits_instead", MethodFailure, "said it would connect to the contract socket, but wrote to stdout or exited"),
        ("pigeon", MethodFailure, "method asks for transport 'pigeon'"),
        ("no_connect", MethodTimeout, "did not connect to the contract socket within the task's time limit"),
    ],
)
def test_a_method_that_breaks_the_move_to_the_socket_fails_the_handshake(tmp_path, behaviour, failure, error):
    t0 = time.monotonic()
    with pytest.raises(failure, match=error):
        with LocalRunner().start(adhoc(tmp_path, behaviour), 0, {}, 4):
            pass
    assert time.monotonic() - t0 < 15


def test_a_hanging_method_times_out_and_its_process_is_killed():
    t0 = time.monotonic()
    with pytest.raises(MethodTimeout):
        with start("hanger", timeout_s=4) as running:
            running.session.embed(images())
    assert time.monotonic() - t0 < 20
    assert "adapter starting" in running.log_tail
    # every process of the method's group is gone
    assert not any(
        p.name.isdigit() and _cmdline(p).find("hanger/adapter.py") >= 0 and "hanger" in _cwd(p)
        for p in Path("/proc").iterdir()
    )


def _cmdline(p: Path) -> str:
    try:
        return (p / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _cwd(p: Path) -> str:
    try:
        return os.readlink(p / "cwd")
    except OSError:
        return ""


def test_declared_outputs_missing_from_info_fail_the_handshake(tmp_path):
    spec = adhoc(tmp_path, "overclaimer", outputs="[global, dense, masks]")  # its info lists global and dense only
    with pytest.raises(MethodFailure, match="masks"):
        with LocalRunner().start(spec, 0, {}, 60):
            pass


def test_weights_reach_the_method_and_are_part_of_the_result_key(tmp_path):
    weights = tmp_path / "w" / "model.bin"  # under the weights root; 4th feature: its first byte
    spec = adhoc(tmp_path, "weighted", more_yaml=f"weights: {weights}\n")
    spec = spec.model_copy(update={"weights_root": weights.parent})
    with pytest.raises(SpecError, match=r"method.yaml: weights: '.*/w/model.bin': .*/w/model.bin does not exist"):
        LocalRunner().result_ref(spec)
    weights.parent.mkdir()
    refs = []
    for first in (7, 9):
        weights.write_bytes(bytes([first]) + b"rest")
        with LocalRunner().start(spec, 0, {}, 60) as running:
            assert (running.session.embed(images())[:, 3] == first).all()
        refs.append(LocalRunner().result_ref(spec))
    assert refs[0] != refs[1] and all(r.startswith(LocalRunner().prepare(spec) + "+weights-sha256:") for r in refs)


VARIANTS = "variants:\n  dim6: {embed_dim: 6}\n  big: {embed_dim: 8}\n"


def test_the_variant_that_runs_reaches_the_method_as_bench_variant(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_VARIANT", "dim9")  # the harness's own environment is not the method's
    spec = adhoc(tmp_path, "variable", more_yaml="embed_dim: 4\n" + VARIANTS)
    for method, width in ((spec.variant("dim6"), 6), (spec, 4)):
        with LocalRunner().start(method, 0, {}, 60) as running:
            assert running.session.embed(images()).shape == (3, width)
            assert running.session.info.embed_dim == width


def test_a_variant_the_adapter_does_not_honour_fails_the_handshake(tmp_path):
    spec = adhoc(tmp_path, "variable", more_yaml="embed_dim: 4\n" + VARIANTS).variant("big")
    with pytest.raises(MethodFailure, match=r"declares embed_dim 8 for variable@big but the method's info says 4 "):
        with LocalRunner().start(spec, 0, {}, 60):
            pass


def test_a_method_without_weights_gets_no_bench_weights_from_the_harness_environment(tmp_path, monkeypatch):
    (tmp_path / "decoy.bin").write_bytes(b"\x63")
    monkeypatch.setenv("BENCH_WEIGHTS", str(tmp_path / "decoy.bin"))
    with LocalRunner().start(adhoc(tmp_path, "weighted"), 0, {}, 60) as running:
        assert (running.session.embed(images())[:, 3] == -1).all()  # its 4th feature: -1 without weights


def test_an_included_folder_is_on_the_adapters_path_and_part_of_its_result_key(tmp_path):
    spec = shared_code_method(tmp_path / "methods")
    refs = []
    for width in (5, 12):  # the included module changes: so do the outputs and the result key
        shared_code_method(tmp_path / "methods", width)
        with LocalRunner().start(spec, 0, {}, 60) as running:
            assert (running.session.embed(images()) == width).all() and running.session.info.embed_dim == width
        refs.append(LocalRunner().result_ref(spec))
    assert refs[0] != refs[1] and refs[1] == "code-sha256:" + spec.code_hash
