"""GFPGAN v1.4 network (compatibility with the reference architecture) and the enhance stage.

The reference is the ``gfpgan`` package's own source (GFPGANv1Clean + its StyleGAN2 "clean"
generator), fetched as sdists with ``pip download`` (no install: the package would replace CPU
torch with CUDA torch, and basicsr cannot be imported without torchvision). The few files the
architecture needs are copied into a temporary package and imported with stub parents, with
``torchvision`` blocked so that it can never be imported; sys.modules and sys.path are restored
afterwards. Where the sdists cannot be fetched (no registry), those tests skip.

The reference comparison runs one 512×512 forward of each network: slow-ish on CPU (about 15 s on
2 cores for both).
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from dubline.schemas.manifest_io import read_rows, write_manifest
from dubline.schemas.manifests import EXPRESSION_NAMES, FACE_TRACKS, FRAME_CHUNK, MESH_POINTS, RENDERED_TRACKS
from dubline.stages.base import StageJob, run_job
from dubline.stages.enhance import SKIPPED_NO_WEIGHTS, EnhanceStage
from dubline.stages.enhance.gfpgan import GFPGANv1Clean, load_gfpgan
from dubline.stages.chunk_images import decode_rgba
from dubline.stages.enhance.restore import CROP_TEMPLATE, DTYPES, FFHQ_TEMPLATE_512, blend_enhanced, crop_to_ffhq
from dubline.stages.enhance.stage import PRECISIONS

SDISTS = {"gfpgan": "1.3.8", "basicsr": "1.4.2"}
CACHE = Path(os.environ.get("DUBLINE_CACHE", Path.home() / ".cache" / "dubline")) / "gfpgan-reference"
#: (sdist, member inside it, where it goes in the temporary package)
REFERENCE_FILES = (
    ("gfpgan", "gfpgan/archs/gfpganv1_clean_arch.py", "gfpgan/archs/gfpganv1_clean_arch.py"),
    ("gfpgan", "gfpgan/archs/stylegan2_clean_arch.py", "gfpgan/archs/stylegan2_clean_arch.py"),
    ("basicsr", "basicsr/utils/registry.py", "basicsr/utils/registry.py"),
)
V14 = dict(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None, fix_decoder=False,
           num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True)


# --------------------------------------------------------------------------------------------
# The reference architecture, isolated


def _sdist(name: str) -> Path:
    """The cached sdist of ``name``, downloaded (not installed) on first use; skip if impossible."""
    path = CACHE / f"{name}-{SDISTS[name]}.tar.gz"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        # --no-build-isolation: preparing the metadata must not build an env (basicsr's would pull torch)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation",
                   "--no-binary", name, f"{name}=={SDISTS[name]}", "-d", str(CACHE), "-q"]
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=120)
        except (subprocess.SubprocessError, OSError) as error:
            pytest.skip(f"cannot fetch the {name} {SDISTS[name]} sdist for the reference architecture: {error}")
    return path


def _member(name: str, inner: str) -> str:
    with tarfile.open(_sdist(name)) as tar:
        handle = tar.extractfile(f"{name}-{SDISTS[name]}/{inner}")
        assert handle is not None
        return handle.read().decode("utf-8")


def _arch_util_source() -> str:
    """basicsr.archs.arch_util cut down to ``default_init_weights`` (the real module imports
    torchvision and compiled ops): the function's own source, with the imports it uses."""
    source = _member("basicsr", "basicsr/archs/arch_util.py")
    (function,) = [n for n in ast.parse(source).body
                   if isinstance(n, ast.FunctionDef) and n.name == "default_init_weights"]
    header = ("import torch\nfrom torch import nn as nn\nfrom torch.nn import init as init\n"
              "from torch.nn.modules.batchnorm import _BatchNorm\n\n\n")
    decorators = "".join(f"@{ast.get_source_segment(source, d)}\n" for d in function.decorator_list)
    return header + decorators + ast.get_source_segment(source, function) + "\n"


@contextlib.contextmanager
def reference_arch(folder: Path) -> Iterator[object]:
    """Import the reference ``gfpganv1_clean_arch`` module from ``folder``; undo every trace after."""
    for _, inner, target in REFERENCE_FILES:
        sdist = target.split("/")[0]
        (folder / target).parent.mkdir(parents=True, exist_ok=True)
        (folder / target).write_text(_member(sdist, inner))
    (folder / "basicsr/archs").mkdir(parents=True, exist_ok=True)
    (folder / "basicsr/archs/arch_util.py").write_text(_arch_util_source())
    for package in ("basicsr", "basicsr/utils", "basicsr/archs", "gfpgan", "gfpgan/archs"):
        (folder / package / "__init__.py").write_text("")  # the real ones import everything

    names = ("basicsr", "gfpgan", "torchvision")
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in names}
    for key in saved:
        del sys.modules[key]
    sys.modules["torchvision"] = None  # type: ignore[assignment]  # any import of it fails loudly
    sys.path.insert(0, str(folder))
    try:
        import importlib

        yield importlib.import_module("gfpgan.archs.gfpganv1_clean_arch")
    finally:
        sys.path.remove(str(folder))
        for key in [k for k in sys.modules if k.split(".")[0] in names]:
            del sys.modules[key]
        sys.modules.update(saved)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The reference v1.4 network with random weights (noise strengths and biases made non-zero)."""
    with reference_arch(tmp_path_factory.mktemp("gfpgan_ref")) as arch:
        torch.manual_seed(0)
        net = arch.GFPGANv1Clean(**V14).eval()
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for name, p in net.named_parameters():
            if not p.any():  # zero-initialised: StyleConv noise weights and the biases
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))
    return net


def test_reference_is_isolated(reference):
    assert "torchvision" not in sys.modules  # it was blocked while the reference was imported
    assert not any(k.split(".")[0] in ("basicsr", "gfpgan") for k in sys.modules)
    assert type(reference).__module__ == "gfpgan.archs.gfpganv1_clean_arch"


def test_state_dict_keys_and_shapes_match_reference(reference):
    ours = GFPGANv1Clean().state_dict()
    theirs = reference.state_dict()
    assert list(ours) == list(theirs)  # same names, same order
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    assert len(ours) == 285 and sum(v.numel() for v in ours.values()) > 86_000_000


@pytest.mark.timeout(180)
def test_output_matches_reference_on_random_weights(reference):
    """Slow: one 512×512 forward of each network on CPU."""
    ours = GFPGANv1Clean().eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.inference_mode():
        expected, _ = reference(x.clone(), return_rgb=False, randomize_noise=False)
        got = ours(x.clone())
    assert got.shape == expected.shape == (1, 3, 512, 512)
    assert expected.abs().max() > 0.1  # a meaningful output, not all zeros
    assert (got - expected).abs().max().item() < 1e-4


# --------------------------------------------------------------------------------------------
# Weights files


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> tuple[str, dict[str, torch.Tensor]]:
    """A random v1.4 state dict saved like the official checkpoint: {"params_ema": state_dict}."""
    torch.manual_seed(3)
    state = GFPGANv1Clean().state_dict()
    path = tmp_path_factory.mktemp("weights") / "GFPGANv1.4-random.pth"
    torch.save({"params_ema": state}, path)
    return str(path), state


def test_load_pth_and_safetensors_from_urls(random_weights, tmp_path):
    from safetensors.torch import save

    path, state = random_weights
    net = load_gfpgan(path, "cpu", torch.float32)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    key = "stylegan_decoder.style_convs.3.modulated_conv.weight"
    assert torch.equal(net.state_dict()[key], state[key])
    # safetensors through an fsspec URL; the half precision copy is cast on load
    import fsspec

    with fsspec.open("memory://enhance-test/gfpgan.safetensors", "wb") as f:
        f.write(save({k: v.half() for k, v in state.items()}))
    half = load_gfpgan("memory://enhance-test/gfpgan.safetensors", "cpu", torch.bfloat16)
    assert half.state_dict()[key].dtype == torch.bfloat16
    assert torch.allclose(half.state_dict()[key].float(), state[key], atol=1e-2)


def test_corrupt_or_mismatched_weights_name_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.pth"):
        EnhanceStage(weights=str(corrupt)).setup()
    wrong = tmp_path / "wrong.pth"
    torch.save({"params_ema": {"conv_body_first.weight": torch.zeros(1), "extra.weight": torch.zeros(2)}}, wrong)
    with pytest.raises(ValueError, match=r"wrong.pth.*missing keys: conv_body_first.bias.*unexpected keys: extra.weight"):
        load_gfpgan(str(wrong))
    with pytest.raises(ValueError, match="missing.pth"):
        load_gfpgan(str(tmp_path / "missing.pth"))


# --------------------------------------------------------------------------------------------
# The stage


def _encode(rgba: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="WEBP", lossless=True, exact=True)
    return buffer.getvalue()


def _rendered(folder: Path) -> tuple[dict, list[np.ndarray]]:
    """A tiny render output: one track, one chunk of 3 RGBA crops (two with a mouth blob, one
    empty), and the faces stage's manifest with the original crops (JPEG) of the same frames."""
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:512, :512]
    blob = np.clip(1.5 - np.hypot((xx - 256) / 90, (yy - 380) / 50), 0, 1)  # feathered ellipse, 1 inside
    crops, rows, originals = [], [], []
    for i in range(3):
        rgb = (rng.random((512, 512, 3)) * 60 + np.linspace(80, 180, 512)[:, None, None]).astype(np.uint8)
        alpha = (blob * 255).astype(np.uint8) if i < 2 else np.zeros((512, 512), np.uint8)
        image = _encode(np.dstack([rgb, alpha]))
        crops.append(decode_rgba(image))
        common = {"title_id": "t", "shot_index": 0, "track_id": 1, "frame_index": 10 + i, "affine": [1, 0, 5, 0, 1, 7]}
        rows.append({**common, "image": image, "image_format": "webp"})
        ok, jpeg = cv2.imencode(".jpg", rgb[..., ::-1])
        originals.append({**common, "image": jpeg.tobytes(), "image_format": "jpeg"})
    chunk_url = write_manifest(rows, FRAME_CHUNK, str(folder / "render" / "track0001_0000.parquet"))
    render_url = write_manifest([{"title_id": "t", "language": "de", "shot_index": 0, "track_id": 1,
                                  "frame_index": [10, 11, 12], "chunk_urls": [chunk_url], "chunk_index": [0]}],
                                RENDERED_TRACKS, str(folder / "rendered.parquet"))
    faces_chunk = write_manifest(originals, FRAME_CHUNK, str(folder / "faces" / "track0001_0000.parquet"))
    zeros = lambda width: np.zeros((3, width), np.float32)  # noqa: E731
    faces_url = write_manifest([{
        "title_id": "t", "shot_index": 0, "track_id": 1, "dubbable": True, "skip_reason": None,
        "frame_index": [10, 11, 12], "bbox": zeros(4), "landmarks": zeros(MESH_POINTS * 3), "pose": zeros(6),
        "expression": zeros(len(EXPRESSION_NAMES)), "blink": zeros(2), "identity": [0.0] * (MESH_POINTS * 3),
        "blendshapes": [], "chunk_urls": [faces_chunk]}], FACE_TRACKS, str(folder / "faces.parquet"))
    row = {"title_id": "t", "language": "de", "render_url": render_url, "chunks_url": str(folder / "enhanced"),
           "faces_url": faces_url}
    return row, crops


class _Recorder:
    """Stands in for the network: remembers what it was shown and returns a flat grey face."""

    def __init__(self, out_size: int):
        self.out_size = out_size
        self.seen: list[torch.Tensor] = []

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return torch.zeros_like(x)


def test_blend_shows_the_network_the_crop_and_changes_only_the_alpha():
    rng = np.random.default_rng(5)
    crops = rng.integers(0, 256, (2, 96, 96, 4), dtype=np.uint8)
    crops[..., 3] = 0
    crops[:, 60:80, 30:70, 3] = 200
    net = _Recorder(96)
    out = blend_enhanced(net, crops, 0.5, torch.device("cpu"), align=False)
    (seen,) = net.seen
    expected = crops[..., :3].astype(np.float32) / 127.5 - 1
    assert torch.allclose(seen.permute(0, 2, 3, 1), torch.from_numpy(expected), atol=1e-6)
    inside = crops[..., 3] > 0
    assert np.array_equal(out[..., 3], crops[..., 3]) and np.array_equal(out[~inside], crops[~inside])
    w = 0.5 * 200 / 255  # grey (127.5) blended in with weight strength · alpha
    assert np.abs(out[inside][:, :3] - (crops[inside][:, :3] * (1 - w) + 127.5 * w)).max() <= 0.51


def test_crops_are_shown_to_the_network_in_ffhq_framing():
    """Marks on the crop template's eyes and nose tip land on FFHQ's (GFPGAN's training framing)."""
    crops = np.zeros((1, 256, 256, 4), np.uint8)
    crops[..., 3] = 255
    marks = np.round(CROP_TEMPLATE * 256)
    for x, y in marks.astype(int):
        cv2.circle(crops[0], (x, y), 3, (255, 255, 255, 255), -1)
    net = _Recorder(512)
    out = blend_enhanced(net, crops, 1.0, torch.device("cpu"))
    seen = net.seen[0][0, 0].numpy() + 1  # 0 (black) ... 2 (white)
    assert np.abs(np.c_[CROP_TEMPLATE * 512, np.ones(3)] @ crop_to_ffhq(512)[:2].T - FFHQ_TEMPLATE_512).max() < 3
    expected = np.c_[2 * marks + 0.5, np.ones(3)] @ crop_to_ffhq(512)[:2].T  # 256 -> 512 px, then to FFHQ
    for x, y in expected:
        top, left = round(y) - 15, round(x) - 15
        patch = seen[top : top + 31, left : left + 31]
        ys, xs = np.mgrid[top : top + 31, left : left + 31]
        assert patch.max() > 1.9
        assert abs((ys * patch).sum() / patch.sum() - y) < 0.5 and abs((xs * patch).sum() / patch.sum() - x) < 0.5
    # the restoration (flat grey here) comes back onto the crop, except where the FFHQ frame ends
    assert np.abs(out[0, 100:200, 20:-20, :3].astype(int) - 128).max() <= 1
    assert np.array_equal(out[0, -5:, :, :3], crops[0, -5:, :, :3])


def test_blend_resizes_crops_of_another_size_to_the_network():
    torch.manual_seed(6)
    net = GFPGANv1Clean(out_size=64, narrow=0.25).eval()  # a small network of the same family
    crops = np.random.default_rng(6).integers(0, 256, (3, 96, 96, 4), dtype=np.uint8)
    crops[..., 3] = 0
    crops[:, 50:90, 20:80, 3] = 255
    recorder = _Recorder(64)
    blend_enhanced(recorder, crops, 1.0, torch.device("cpu"))
    assert recorder.seen[0].shape == (3, 3, 64, 64)
    out = blend_enhanced(net, crops, 1.0, torch.device("cpu"))
    inside = crops[..., 3] > 0
    assert out.shape == crops.shape and np.array_equal(out[~inside], crops[~inside])
    assert np.abs(out[inside][:, :3].astype(int) - crops[inside][:, :3]).mean() > 5


def test_stage_without_weights_is_skipped_and_says_so(tmp_path):
    row, _ = _rendered(tmp_path)
    stage = EnhanceStage()
    stage.setup()
    stats = run_job(stage, StageJob(EnhanceStage, {}, str(tmp_path / "out.parquet"), "t", rows=(row,)))
    assert stats.dropped == {SKIPPED_NO_WEIGHTS: 1}
    assert read_rows(str(tmp_path / "out.parquet"), RENDERED_TRACKS) == read_rows(row["render_url"], RENDERED_TRACKS)
    assert not (tmp_path / "enhanced").exists()


@pytest.mark.timeout(180)
def test_stage_enhances_only_inside_the_alpha(random_weights, tmp_path):
    """Slow: one forward of a batch of 2 crops on CPU."""
    row, crops = _rendered(tmp_path)
    stage = EnhanceStage(weights=random_weights[0], strength=0.7, batch_size=4)
    stage.setup()
    stats = run_job(stage, StageJob(EnhanceStage, {}, str(tmp_path / "out.parquet"), "t", rows=(row,)))
    assert stats.dropped == {}
    assert stats.metrics["crops_enhanced"] == stats.metrics["faces_rendered"] == 2 and stats.metrics["crops_without_alpha"] == 1
    assert stats.metrics["crops_with_source_face"] == 2
    (track,) = read_rows(str(tmp_path / "out.parquet"), RENDERED_TRACKS)
    (source,) = read_rows(row["render_url"], RENDERED_TRACKS)
    assert {k: v for k, v in track.items() if k != "chunk_urls"} == {k: v for k, v in source.items() if k != "chunk_urls"}
    assert track["chunk_urls"] != source["chunk_urls"] and all(Path(u).exists() for u in track["chunk_urls"])

    out = read_rows(track["chunk_urls"][0], FRAME_CHUNK)
    assert [r["frame_index"] for r in out] == [10, 11, 12]
    for before, after_row in zip(crops, out):
        after = decode_rgba(after_row["image"])
        if not before[..., 3].any():
            continue  # nothing to enhance: passed through
        # Output is cut to the alpha's box; the affine (identity + (5, 7) here) moved to match.
        x0, y0 = round(after_row["affine"][2] - 5), round(after_row["affine"][5] - 7)
        region = before[y0 : y0 + after.shape[0], x0 : x0 + after.shape[1]]
        assert np.array_equal(after[..., 3], region[..., 3])  # alpha kept
        inside = region[..., 3] == 255
        assert np.abs(after[inside, :3].astype(int) - region[inside, :3]).mean() > 5  # inside: changed


def test_parameters_are_checked():
    with pytest.raises(ValueError, match="strength"):
        EnhanceStage(strength=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        EnhanceStage(batch_size=0)
    with pytest.raises(ValueError, match="precision"):
        EnhanceStage(precision="fp8")
    assert set(PRECISIONS) == {"auto", *DTYPES}  # every precision the stage accepts names a dtype
    with pytest.raises(TypeError, match="unknown parameters"):
        EnhanceStage(enhancer="gfpgan")
