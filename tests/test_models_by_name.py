"""torchvision and timm models by name (`model=torchvision`, `model=timm`): built for the data
(channels, small images, the loss's outputs), trained from the CLI, every mistake one line, and
`lossbench list models [PATTERN]`."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import read_metrics, run_dirs
from lossbench.errors import UserError
from lossbench.library_models import timm_model, torchvision_model
from lossbench.models import resnet18, with_cosine_head

TINY = ["dataset=fake_images", "dataset.n_samples=24", "dataset.n_test=8", "dataset.num_classes=2",
        "trainer=smoke", "trainer.batch_size=8", "trainer.plots=false"]


def first_conv(model: torch.nn.Module) -> torch.nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("build, name, kwargs", [
    (torchvision_model, "resnet18", {}),
    (torchvision_model, "mobilenet_v3_small", {}),
    (timm_model, "resnet18", {}),
    (timm_model, "convnext_atto", {}),
    (timm_model, "vit_tiny_patch16_224", {"img_size": 32}),
])
@pytest.mark.parametrize("channels", [1, 3])
def test_a_model_by_name_takes_the_datas_channels_and_returns_the_losss_outputs(
        build, name, kwargs, channels):
    model = build((channels, 32, 32), 7, name, kwargs=kwargs)
    assert first_conv(model).in_channels == channels
    model.train()
    assert model(torch.randn(2, channels, 32, 32)).shape == (2, 7)
    cosine = with_cosine_head(model)  # LDAM's head replaces the library's classifier
    assert cosine(torch.randn(2, channels, 32, 32)).abs().max() <= 1 + 1e-6


@pytest.mark.parametrize("build", [torchvision_model, timm_model])
def test_a_resnet_on_small_images_gets_the_builtin_resnet18s_stem(build):
    small = build((3, 32, 32), 10, "resnet18")
    builtin = resnet18((3, 32, 32), 10)
    assert small.conv1.kernel_size == builtin.conv1.kernel_size == (3, 3)
    assert small.conv1.stride == (1, 1) and isinstance(small.maxpool, torch.nn.Identity)
    large = build((3, 128, 128), 10, "resnet18")
    assert large.conv1.kernel_size == (7, 7)  # ImageNet-sized images keep the ImageNet stem
    assert build((3, 128, 128), 10, "resnet18", small_input_stem=True).conv1.stride == (1, 1)
    if build is torchvision_model:  # the same architecture: the same parameters
        assert sum(p.numel() for p in small.parameters()) == sum(
            p.numel() for p in builtin.parameters())


def test_trained_weights_keep_their_filters_on_grey_images():
    import torchvision

    rgb = torchvision.models.get_model("resnet18", num_classes=3)
    from lossbench.library_models import adapt_input_channels

    weight = rgb.conv1.weight.detach().clone()  # (64, 3, 7, 7)
    grey = adapt_input_channels(rgb, 1)
    torch.testing.assert_close(grey.conv1.weight, weight.sum(dim=1, keepdim=True))


@pytest.mark.parametrize("build, name, message", [
    (torchvision_model, "resnt18", "did you mean resnet18"),
    (timm_model, "convnxt_atto", "did you mean convnext_atto"),
    (torchvision_model, "fasterrcnn_resnet50_fpn", "not an image classifier"),
    (torchvision_model, "vit_b_16", "model.kwargs.image_size=32"),
    (timm_model, "vit_tiny_patch16_224", "model.kwargs.img_size=32"),
    (timm_model, "convnext_atto", "small_input_stem=true: ConvNeXt is not a ResNet"),
])
def test_a_model_that_cannot_serve_is_refused_naming_the_fix(build, name, message):
    extra = {"small_input_stem": True} if "small_input_stem" in message else {}
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        build((3, 32, 32), 4, name, **extra)


@pytest.mark.parametrize("model, channels", [
    (["model=torchvision", "model.name=resnet18"], 3),
    (["model=timm", "model.name=convnext_atto"], 1),
    (["model=timm", "model.name=vit_tiny_patch16_224", "+model.kwargs.img_size=32",
      "model.drop_rate=0.1"], 3),
])
def test_lossbench_trains_a_model_by_name(cli, tmp_path, model, channels):
    proc = cli("train", *TINY, f"dataset.image_size=[{channels},32,32]", *model)
    assert proc.returncode == 0, proc.stderr
    (run,) = run_dirs(tmp_path)
    metrics = read_metrics(run)
    assert metrics["status"] == "completed"
    assert metrics["choices"]["model"] == model[0].split("=")[1]
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0


@pytest.mark.parametrize("args, message", [
    ([*TINY, "model=torchvision", "model.name=resnt18"],
     "model.name=resnt18 is not a torchvision model; did you mean resnet18"),
    ([*TINY, "model=timm", "model.name=deit_tiny_patch16_224"], "model.kwargs.img_size=32"),
    ([*TINY, "model=torchvision", "model.name=maskrcnn_resnet50_fpn"], "not an image classifier"),
    (["trainer=smoke", "dataset=iris", "model=torchvision"],
     "model=torchvision needs (C, H, W) images, but the data's samples have shape (4,)"),
])
def test_a_wrong_model_choice_is_one_line_and_exit_2(cli, tmp_path, args, message):
    proc = cli("train", *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("lossbench: error: ") and proc.stderr.count("\n") == 1
    assert message in proc.stderr
    assert run_dirs(tmp_path) == []


def offline(tmp_path) -> dict[str, str]:
    """No network for real: the Hub in offline mode, downloads through a proxy port that
    refuses connections, and empty caches, so that nothing was fetched before."""
    return {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
            "TORCH_HOME": str(tmp_path / "torch"), "https_proxy": "http://127.0.0.1:9",
            "HTTPS_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}


@pytest.mark.parametrize("args, message", [
    (["model=torchvision", "model.weights=DEFAULT"],
     "model.weights=DEFAULT: cannot download https://download.pytorch.org/models/resnet18-"),
    (["model=timm", "model.pretrained=true"],
     "model.pretrained=true: cannot fetch the weights of resnet18 (Hub repo timm/"),
])
def test_trained_weights_offline_are_one_line_naming_what_was_wanted(cli, tmp_path, args,
                                                                      message):
    proc = cli("train", *TINY, *args, env=offline(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and message in proc.stderr
    if "weights" in args[1]:  # where the file was to go, so that it can be put there
        assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-") in proc.stderr


def test_an_unknown_weight_name_lists_the_models_weights():
    with pytest.raises(UserError, match="IMAGENET1K_V1, DEFAULT"):
        torchvision_model((3, 32, 32), 4, "resnet18", weights="IMAGENET")


def test_without_timm_the_choice_names_the_extra_to_install(cli, tmp_path):
    # timm absent for real: a package of that name that cannot be imported shadows it
    stub = tmp_path / "no_timm" / "timm"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'timm'\", "
                                      "name='timm')\n")
    import os

    path = os.pathsep.join(filter(None, [str(stub.parent), os.environ.get("PYTHONPATH")]))
    proc = cli("train", *TINY, "model=timm", env={"PYTHONPATH": path})
    assert proc.returncode == 2
    assert proc.stderr == ("lossbench: error: model=timm needs the timm package: pip install "
                           "'lossbench[timm]'\n")


def test_list_models_matches_a_pattern_in_every_library(cli):
    proc = cli("list", "models", "resnet1")
    assert proc.returncode == 0, proc.stderr
    blocks = {b.split(" (", 1)[0]: b for b in proc.stdout.strip().split("\n\n")}
    assert set(blocks) == {"models", "torchvision models matching 'resnet1'",
                           "timm models matching 'resnet1'"}
    assert "resnet18" in blocks["models"] and "mlp" not in blocks["models"]
    import timm
    import torchvision.models as tvm

    listed_tv = blocks["torchvision models matching 'resnet1'"].split("\n", 1)[1].split()
    assert listed_tv == [n for n in tvm.list_models(module=tvm) if "resnet1" in n]
    listed_timm = blocks["timm models matching 'resnet1'"].split("\n", 1)[1].split()
    assert listed_timm == [n for n in timm.list_models() if "resnet1" in n]
    wildcard = cli("list", "models", "convnext_at*")
    assert "convnext_atto" in wildcard.stdout and "torchvision models" not in wildcard.stdout


def test_list_models_with_a_misspelt_name_says_did_you_mean(cli):
    proc = cli("list", "models", "convnxt_atto")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("lossbench: error: lossbench list models: no model matches "
                                  "'convnxt_atto'; did you mean convnext_atto")
    assert proc.stderr.count("\n") == 1


def test_listing_every_group_and_help_import_no_model_or_data_library(tmp_path):
    code = ("import sys, contextlib, io\nfrom lossbench.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    for argv in (['--help'], ['list']):\n"
            "        try:\n            main(argv)\n"
            "        except SystemExit as e:\n            assert not e.code, e.code\n"
            "print(sorted(m for m in ('torch', 'timm', 'datasets', 'torchvision') "
            "if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
