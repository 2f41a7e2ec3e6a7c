"""The converter CLI and the checkpoints it writes: composite, branch and -O files; strict key matching."""

import os
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
import torch_reference as ref

from classsr_jax import checkpointing
from classsr_jax.checkpointing import resolve_model_dir
from classsr_jax.cli import convert
from classsr_jax.models import ModelSpec, conversion

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_convert(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", "classsr_jax.convert", *args], capture_output=True, text=True, cwd=REPO, env=env
    )


@pytest.fixture(scope="module")
def carn_composite(tmp_path_factory):
    model = ref.build_classsr("carn").eval()
    ref.randomize_(model, seed=7)
    path = tmp_path_factory.mktemp("pth") / "ClassSR_CARN.pth"
    torch.save(model.state_dict(), path)
    return model, str(path)


def test_composite_file_converts_and_reopens(carn_composite, tmp_path):
    model, path = carn_composite
    out = tmp_path / "classsr_carn"
    result = run_convert("--model", "carn", "--input", path, "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert "ClassSR-carn x4 (widths 36/52/64)" in result.stdout
    loaded = checkpointing.load_model(str(out))
    assert loaded.spec == ModelSpec("classsr", "carn", (36, 52, 64), 4, {"group": 4})
    # BatchNorm statistics travel: net2's first Block fusion running_var is the reference's.
    np.testing.assert_array_equal(
        loaded.variables["batch_stats"]["net2"]["block_0"]["fusion_0"]["bn"]["var"],
        model.net2.b1.c1[1].running_var.numpy(),
    )
    assert loaded.metadata["converted_from"] == path


def test_branch_of_composite_is_the_o_network(carn_composite, tmp_path):
    model, path = carn_composite
    out = tmp_path / "carn_o"
    assert run_convert("--model", "carn", "--input", path, "--branch", "3", "--output", str(out)).returncode == 0
    loaded = checkpointing.load_model(str(out))
    assert loaded.spec.kind == "network" and loaded.spec.widths == (64,)
    x = np.random.default_rng(0).random((1, 32, 32, 3), dtype=np.float32)
    expected = model.net3(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy().transpose(0, 2, 3, 1)
    got = loaded.spec.build().apply(loaded.variables, x)
    assert np.abs(np.asarray(got) - expected).max() < 1e-5


def test_single_branch_file(tmp_path):
    net = ref.build("srresnet", 52).eval()
    ref.randomize_(net, seed=1)
    path = tmp_path / "SRResNet_branch2.pth"
    torch.save(net.state_dict(), path)
    out = tmp_path / "branch2"
    result = run_convert("--model", "srresnet", "--input", str(path), "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert checkpointing.load_model(str(out)).spec == ModelSpec("network", "srresnet", (52,), 4, {"nb": 16})


def test_every_bad_key_is_reported_in_one_line(tmp_path):
    net = ref.build("fsrcnn", 16)
    sd = net.state_dict()
    del sd["body_conv.2.bias"]
    sd["extra.weight"] = torch.zeros(3)
    sd["body_conv.3.weight"] = torch.zeros(12, 12, 5, 5)
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    result = run_convert("--model", "fsrcnn", "--input", str(path), "--output", str(tmp_path / "out"))
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line == (
        f"error: {path} does not match fsrcnn x4 (widths 16): 1 missing key: body_conv.2.bias; "
        "1 unexpected key: extra.weight; 1 wrong shape key: body_conv.3.weight (12, 12, 5, 5) (expected (12, 12, 3, 3))"
    )
    assert not (tmp_path / "out").exists()


def test_wrong_model_and_unreadable_file(tmp_path):
    net = ref.build("fsrcnn", 16)
    path = tmp_path / "fsrcnn.pth"
    torch.save(net.state_dict(), path)
    with pytest.raises(convert.ConvertError, match=r"lacks key entry.weight: is it a carn checkpoint\?"):
        conversion.convert_state_dict("carn", conversion.load_torch_state_dict(str(path)), str(path))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a pickle")
    result = run_convert("--model", "fsrcnn", "--input", str(junk), "--output", str(tmp_path / "o"))
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot read {junk} as a PyTorch checkpoint")
    assert len(result.stderr.strip().splitlines()) == 1


def test_existing_output_is_not_overwritten(tmp_path):
    spec = ModelSpec("network", "fsrcnn", (16,))
    variables = spec.init()
    out = tmp_path / "ckpt"
    checkpointing.save_model(str(out), spec, variables)
    before = sorted(os.listdir(out))
    with pytest.raises(checkpointing.CheckpointError, match="exists already"):
        checkpointing.save_model(str(out), spec, variables)
    assert sorted(os.listdir(out)) == before
    # With overwrite the swap happens only once the new checkpoint is complete.
    changed = jax.tree_util.tree_map(lambda a: a + 1, variables)
    checkpointing.save_model(str(out), spec, changed, overwrite=True)
    reloaded = checkpointing.load_model(str(out)).variables
    np.testing.assert_array_equal(reloaded["params"]["head_conv"]["bias"], changed["params"]["head_conv"]["bias"])
    assert [p for p in os.listdir(tmp_path) if p != "ckpt"] == []


def test_not_a_checkpoint_is_one_line(tmp_path):
    with pytest.raises(checkpointing.CheckpointError, match=r"does not exist$"):
        checkpointing.load_model(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(checkpointing.CheckpointError, match=r"is not a classsr_jax checkpoint"):
        checkpointing.load_model(str(tmp_path / "empty"))


def test_workdir_means_its_exported_classsr_model(tmp_path):
    spec = ModelSpec("classsr", "fsrcnn", (16, 36, 56))
    checkpointing.save_model(str(tmp_path / "export" / "classsr"), spec, spec.init())
    assert checkpointing.load_model(resolve_model_dir(str(tmp_path))).spec == spec


def test_state_dict_round_trip_through_flax():
    from classsr_jax.models.torch_names import variables_to_state_dict

    model = ref.build_classsr("fsrcnn")
    ref.randomize_(model, seed=3)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    spec, variables = conversion.convert_state_dict("fsrcnn", sd)
    back = variables_to_state_dict(variables, spec)
    assert list(back) == list(sd)  # the original's key order
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k])


@pytest.mark.parametrize("network", ["carn", "srresnet", "rcan"])
def test_key_order_matches_the_original(network):
    from classsr_jax.models.torch_names import model_keys

    extra = {"n_resgroups": 2, "n_resblocks": 2} if network == "rcan" else {}
    model = ref.build_classsr(network, **extra)
    spec = ModelSpec("classsr", network, ref.WIDTHS[network], 4, extra)
    assert [m.torch_key for m in model_keys(spec)] == list(model.state_dict())


# ---------------------------------------------------------------------------------------------- half precision


@pytest.mark.parametrize("dtype, rounded", [(torch.bfloat16, ml_dtypes.bfloat16), (torch.float16, np.float16)])
def test_half_precision_file_converts_to_the_rounded_weights(carn_composite, tmp_path, dtype, rounded):
    model, _ = carn_composite
    state = model.state_dict()
    name = str(dtype).removeprefix("torch.")
    path = tmp_path / f"ClassSR_CARN_{name}.pth"
    torch.save({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}, path)
    out = tmp_path / "converted"
    result = run_convert("--model", "carn", "--input", str(path), "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f"ClassSR-carn x4 (widths 36/52/64) ({name} tensors cast to float32)")
    loaded = checkpointing.load_model(str(out))
    assert loaded.metadata["cast_to_float32"] == [name]
    # The float32 file's weights, rounded to the half type by numpy / ml_dtypes instead of torch.
    _, full = conversion.convert_state_dict("carn", {k: v.numpy() for k, v in state.items()})
    expected = jax.tree_util.tree_map(lambda a: np.asarray(a).astype(rounded).astype(np.float32), full)
    got_leaves, got_tree = jax.tree_util.tree_flatten(loaded.variables)
    want_leaves, want_tree = jax.tree_util.tree_flatten(expected)
    assert got_tree == want_tree
    for got, want in zip(got_leaves, want_leaves):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
    # The rounding is real, so the comparison above could tell the two files apart.
    assert any(not np.array_equal(w, f) for w, f in zip(want_leaves, jax.tree_util.tree_leaves(full)))


def test_every_floating_dtype_becomes_float32_and_counters_stay_integers(tmp_path):
    path = tmp_path / "mixed.pth"
    torch.save(
        {
            "a": torch.tensor([1.0, 1 / 3], dtype=torch.bfloat16),
            "b": torch.tensor([1 / 3], dtype=torch.float64),
            "c": torch.tensor([0.5]),
            "bn.num_batches_tracked": torch.tensor(12345),
        },
        path,
    )
    arrays, cast = conversion.read_state_dict(str(path))
    assert cast == ["bfloat16", "float64"]
    assert {k: v.dtype for k, v in arrays.items()} == {
        "a": np.float32, "b": np.float32, "c": np.float32, "bn.num_batches_tracked": np.int64
    }
    np.testing.assert_array_equal(arrays["a"], [1.0, 0.333984375])  # 1/3 in bfloat16, exactly
    np.testing.assert_array_equal(arrays["b"], [np.float32(1 / 3)])
    assert arrays["bn.num_batches_tracked"] == 12345


# ---------------------------------------------------------------------------------------------- bad keys


def test_wrong_rank_missing_and_unexpected_keys_in_one_error(tmp_path):
    sd = ref.build_classsr("fsrcnn").state_dict()
    sd["net1.head_conv.0.weight"] = torch.zeros(16, 3, 5)  # a rank too few
    del sd["net2.body_conv.2.bias"]
    sd["net3.extra.weight"] = torch.zeros(3)
    path = tmp_path / "ckpt.pth"
    torch.save(sd, path)
    out = tmp_path / "out"
    result = run_convert("--model", "fsrcnn", "--input", str(path), "--output", str(out))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: {path} does not match ClassSR-fsrcnn x4 (widths 16/36/56): 1 missing key: net2.body_conv.2.bias; "
        "1 unexpected key: net3.extra.weight; "
        "1 wrong shape key: net1.head_conv.0.weight (16, 3, 5) (expected (16, 3, 5, 5))"
    ]
    assert result.stdout == ""
    assert not out.exists()


def test_many_bad_keys_show_the_first_six_and_the_count():
    sd = {k: v.numpy() for k, v in ref.build_classsr("fsrcnn").state_dict().items()}
    biases = [k for k in sd if k.endswith(".bias")]  # the original's key order
    for k in biases:
        sd[k] = sd[k][None]  # (n,) → (1, n): every bias a rank too many
    with pytest.raises(convert.ConvertError) as e:
        conversion.convert_state_dict("fsrcnn", sd, "many.pth")
    shown = ", ".join(f"{k} {sd[k].shape} (expected ({sd[k].shape[1]},))" for k in biases[:6])
    assert str(e.value) == (
        f"many.pth does not match ClassSR-fsrcnn x4 (widths 16/36/56): "
        f"{len(biases)} wrong shape keys: {shown} … ({len(biases)} in all)"
    )


def test_a_size_the_shapes_are_read_from_must_be_there():
    sd = {k: v.numpy() for k, v in ref.build_classsr("carn").state_dict().items()}
    sd["net2.b1.b1.body.0.weight"] = np.zeros(52, np.float32)
    with pytest.raises(convert.ConvertError) as e:
        conversion.convert_state_dict("carn", sd, "carn.pth")
    assert str(e.value) == "carn.pth: net2.b1.b1.body.0.weight has shape (52,), which is no carn layer"


# ---------------------------------------------------------------------------------------------- the command


def call_convert(capsys, *args):
    """The command in this process: (exit code, stdout, stderr lines)."""
    code = convert.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err.splitlines()


@pytest.fixture
def small_pth(tmp_path):
    path = tmp_path / "fsrcnn.pth"
    torch.save(ref.build("fsrcnn", 16).state_dict(), path)
    return path


@pytest.mark.parametrize(
    "args, message",
    [
        (["--input", "x.pth", "--output", "o"], "--model is required"),
        (["--model", "fsrcnn", "--output", "o"], "--input is required"),
        (["--model", "fsrcnn", "--input", "x.pth"], "--output is required"),
        (["--model", "edsr", "--input", "x.pth", "--output", "o"],
         "flag --model=edsr: value should be one of <fsrcnn|carn|srresnet|rcan>"),
        (["--model", "fsrcnn", "--input", "x.pth", "--output", "o", "--branch", "0"],
         "flag --branch=0: 0 is not a positive integer"),
        (["--model", "fsrcnn", "--input", "x.pth", "--output", "o", "--scale", "8"],
         "flag --scale=8: --scale must be 2, 3 or 4"),
        (["--model", "fsrcnn", "--input", "x.pth", "--output", "o", "more.pth"], "unexpected arguments: more.pth"),
        (["--model", "fsrcnn", "--input", "x.pth", "--output", "o", "--widths", "3"],
         "Unknown command line flag 'widths'"),
    ],
)
def test_flag_errors_exit_2_with_one_line(capsys, monkeypatch, args, message):
    monkeypatch.setattr(convert, "check_paths", lambda *a: pytest.fail("flags are checked before any work"))
    assert call_convert(capsys, *args) == (2, "", [f"error: {message}"])


def test_flag_error_is_the_process_exit_code(tmp_path):
    result = run_convert("--model", "fsrcnn", "--input", str(tmp_path / "x.pth"))
    assert (result.returncode, result.stdout, result.stderr) == (2, "", "error: --output is required\n")


def test_paths_are_checked_before_any_work(capsys, monkeypatch, tmp_path, small_pth):
    monkeypatch.setattr(convert, "read_state_dict", lambda path: pytest.fail("read before the paths were checked"))
    original = small_pth.read_bytes()
    folder = tmp_path / "folder"
    (folder / "keep").mkdir(parents=True)
    symlink = tmp_path / "link.pth"
    symlink.symlink_to(small_pth)
    hardlink = tmp_path / "hard.pth"
    os.link(small_pth, hardlink)
    base = ("--model", "fsrcnn", "--input", str(small_pth))
    inside, again = small_pth / "sub", "; choose another output"
    cases = [
        (["--model", "fsrcnn", "--input", str(tmp_path / "no.pth"), "--output", str(tmp_path / "o")],
         f"input {tmp_path / 'no.pth'} does not exist"),
        ([*base, "--output", str(folder)], f"--output {folder} exists already; pass --overwrite to replace it"),
        ([*base, "--output", str(folder), "--overwrite"],
         f"--output {folder} exists and is not a classsr_jax checkpoint; --overwrite replaces only a checkpoint"),
        ([*base, "--output", str(small_pth), "--overwrite"], f"--output {small_pth} is the input {small_pth}{again}"),
        ([*base, "--output", str(symlink), "--overwrite"], f"--output {symlink} is the input {small_pth}{again}"),
        ([*base, "--output", str(hardlink), "--overwrite"], f"--output {hardlink} is the input {small_pth}{again}"),
        ([*base, "--output", str(inside)], f"--output {inside} lies inside the input {small_pth}{again}"),
        ([*base, "--output", str(tmp_path), "--overwrite"], f"--output {tmp_path} holds the input {small_pth}{again}"),
    ]
    for args, message in cases:
        assert call_convert(capsys, *args) == (1, "", [f"error: {message}"]), args
    assert small_pth.read_bytes() == original
    assert os.listdir(folder) == ["keep"]
    assert sorted(os.listdir(tmp_path)) == ["folder", "fsrcnn.pth", "hard.pth", "link.pth"]


def test_overwrite_replaces_a_converted_checkpoint(capsys, tmp_path, small_pth):
    out = tmp_path / "ckpt"
    args = ("--model", "fsrcnn", "--input", str(small_pth), "--output", str(out))
    code, stdout, _ = call_convert(capsys, *args)
    assert (code, stdout) == (0, f"converted {small_pth} → {out}: fsrcnn x4 (widths 16)\n")
    assert call_convert(capsys, *args)[0] == 1
    code, stdout, _ = call_convert(capsys, *args, "--overwrite")
    assert (code, stdout) == (0, f"converted {small_pth} → {out}: fsrcnn x4 (widths 16)\n")
    assert checkpointing.load_model(str(out)).spec == ModelSpec("network", "fsrcnn", (16,), 4, {"s": 12, "m": 4})
