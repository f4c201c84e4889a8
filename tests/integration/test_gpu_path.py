"""The CUDA path (marked ``gpu``; skipped without a CUDA device): augmentations on the GPU draw the same
parameters as on the CPU, a seeded bf16 run repeats exactly on one machine, and ONNX Runtime's CUDA
provider through I/O binding scores like the CPU provider. Run on a GPU machine with
``pytest -m gpu tests/integration/test_gpu_path.py`` (``benchmarks/gpu_check.sh`` runs it too)."""

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _images(n=24, size=32):
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_augmentations_on_the_gpu_match_the_cpu():
    from training.augment import AugmentConfig, strong_augment, weak_augment

    x = torch.from_numpy(_images()).permute(0, 3, 1, 2).contiguous()
    weak_cpu = weak_augment(x, torch.Generator().manual_seed(1))
    weak_gpu = weak_augment(x.cuda(), torch.Generator().manual_seed(1))
    assert torch.equal(weak_gpu.cpu(), weak_cpu)  # index gathers: exact
    geometric = AugmentConfig(policy=(("rotate", (-30.0, 30.0)), ("shear_x", (-0.3, 0.3)), ("posterize", (4, 8))))
    strong_cpu = strong_augment(x, torch.Generator().manual_seed(2), geometric)
    strong_gpu = strong_augment(x.cuda(), torch.Generator().manual_seed(2), geometric)
    # the same parameters: nearest-neighbour sources can differ only where a coordinate rounds at .5
    assert (strong_gpu.cpu() != strong_cpu).float().mean() < 0.01
    full_cpu = strong_augment(x, torch.Generator().manual_seed(4))
    full_gpu = strong_augment(x.cuda(), torch.Generator().manual_seed(4))
    assert (full_gpu.cpu().int() - full_cpu.int()).abs().float().mean() < 2.0


def test_seeded_bf16_training_repeats_on_the_gpu():
    from anomalymatch.config import FixMatchConfig
    from anomalymatch.preprocessing import PreprocessSpec
    from training.model import create_model
    from training.trainer import FixMatchTrainer

    images = _images(40)
    labelled, y, pool = images[:8], np.array([1, 1, 0, 0, 0, 0, 0, 0]), images[8:]
    cfg = dataclasses.replace(FixMatchConfig(batch_size=8, uratio=2, threshold=0.5), precision="bf16")
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        trainer = FixMatchTrainer(create_model(PreprocessSpec(size=32), pretrained=False), cfg, seed=3, device="cuda")
        stats = trainer.train(labelled, y, pool, iterations=4)
        assert np.isfinite([s.loss for s in stats]).all()
        runs.append([v.detach().cpu() for v in trainer.model.state_dict().values()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_cuda_provider_with_io_binding_scores_like_the_cpu(tmp_path):
    import onnxruntime as ort

    from anomalymatch.scoring import OnnxScorer
    from tests.helpers.serving import export_tiny_model

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"this onnxruntime has no CUDA provider ({ort.get_available_providers()}): install onnxruntime-gpu")
    path = export_tiny_model(tmp_path / "m.onnx", seed=1)
    images = _images(300)
    cpu = OnnxScorer(path, providers=["CPUExecutionProvider"]).score(images)
    cuda = OnnxScorer(path, providers=["CUDAExecutionProvider"])
    assert cuda.providers[0] == "CUDAExecutionProvider" and cuda.io_binding
    scores = cuda.score(images, batch_size=128)
    assert cuda.input_memory.startswith("pinned"), cuda.input_memory
    assert np.abs(scores - cpu).max() < 1e-4
