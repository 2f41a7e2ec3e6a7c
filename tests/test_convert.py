"""The converter CLI and the checkpoints it writes: composite, branch and -O files; strict key matching."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

import torch_reference as ref
from classsr_jax import checkpointing, convert
from classsr_jax.models import ModelSpec

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
    got = loaded.build().apply(loaded.variables, x)
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
        convert.convert_state_dict("carn", convert.load_torch_state_dict(str(path)), str(path))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a pickle")
    result = run_convert("--model", "fsrcnn", "--input", str(junk), "--output", str(tmp_path / "o"))
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot read {junk} as a PyTorch checkpoint")
    assert len(result.stderr.strip().splitlines()) == 1


def test_existing_output_is_not_overwritten(tmp_path):
    spec = ModelSpec("network", "fsrcnn", (16,))
    variables = checkpointing.init_variables(spec)
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
    checkpointing.save_model(str(tmp_path / "export" / "classsr"), spec, checkpointing.init_variables(spec))
    assert checkpointing.load_model(str(tmp_path)).spec == spec


def test_state_dict_round_trip_through_flax():
    from classsr_jax.models.torch_names import variables_to_state_dict

    model = ref.build_classsr("fsrcnn")
    ref.randomize_(model, seed=3)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    spec, variables = convert.convert_state_dict("fsrcnn", sd)
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
