"""FixMatch training loop: one trainer object carries the model, its EMA, the optimiser and the
random state across active-learning cycles, and checkpoints all of it to safetensors.

On a GPU a step moves each uint8 batch (labelled, unlabelled) to the device once, from pinned memory,
augments it there, runs the forward passes under bf16 autocast when ``fixmatch.precision`` is "bf16"
(the loss in float32), and never waits for the device: the random parameters come from the CPU
generator and the step's statistics stay on the device until read (``StepStats``). With
``fixmatch.deterministic`` (default) cuDNN and PyTorch pick deterministic kernels, so one machine
repeats a seeded run exactly (PyTorch warns about any op without a deterministic kernel)."""

from __future__ import annotations

import contextlib
import copy
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from anomalymatch.config import FixMatchConfig
from training.augment import AugmentConfig, strong_augment, weak_augment
from training.ema import ModelEMA
from training.losses import fixmatch_loss
from training.model import AnomalyNet
from training.sampler import UnlabelledStream, labelled_batch

CHECKPOINT_FORMAT = "anomalymatch-checkpoint-1"  # optimiser momentum keyed by parameter name


class StepStats:
    """One step's statistics. The loss terms are one small tensor on the training device until a field is
    first read (which waits for that step to finish), so steps nobody reads never synchronise."""

    __slots__ = ("iteration", "lr", "_values", "_host")
    FIELDS = ("loss", "supervised", "unsupervised", "mask_rate", "pseudo_anomaly_rate")

    def __init__(self, iteration: int, values: torch.Tensor, lr: float) -> None:
        self.iteration, self.lr, self._values = iteration, lr, values
        self._host: list[float] | None = None

    def _get(self, k: int) -> float:
        if self._host is None:
            self._host = [float(v) for v in self._values.tolist()]
            self._values = None
        return self._host[k]

    loss = property(lambda self: self._get(0))
    supervised = property(lambda self: self._get(1))
    unsupervised = property(lambda self: self._get(2))
    mask_rate = property(lambda self: self._get(3))
    pseudo_anomaly_rate = property(lambda self: self._get(4))

    def to_dict(self) -> dict[str, float]:
        return {"iteration": self.iteration, **{f: self._get(k) for k, f in enumerate(self.FIELDS)}, "lr": self.lr}

    def __repr__(self) -> str:
        return f"StepStats({self.to_dict()})"


def augment_config(cfg: FixMatchConfig) -> AugmentConfig:
    return AugmentConfig(hflip=cfg.hflip, vflip=cfg.vflip, translate=cfg.translate, n_ops=cfg.n_ops, cutout=cfg.cutout)


def to_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC numpy -> uint8 NCHW tensor view (channels_last strides, no copy)."""
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images of shape (N, H, W, 3), got {images.dtype} {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)


def _index_keys(model: nn.Module) -> list[str]:
    """For each parameter (in ``named_parameters`` order), the key an older checkpoint stored its momentum
    under: its position among the weights with decay, then the biases and norms without."""
    named = list(model.named_parameters())
    no_decay = [p.ndim <= 1 or n.endswith(".bias") for n, p in named]
    order = [i for i, nd in enumerate(no_decay) if not nd] + [i for i, nd in enumerate(no_decay) if nd]
    keys = [""] * len(named)
    for position, i in enumerate(order):
        keys[i] = f"optim.{position}.momentum_buffer"
    return keys


def frozen_modules(model: nn.Module, freeze_blocks: int) -> list[nn.Module]:
    """The stem and the first ``freeze_blocks`` blocks of an EfficientNet backbone (none for 0)."""
    if not freeze_blocks:
        return []
    backbone = getattr(model, "backbone", None)
    if backbone is None or not hasattr(backbone, "blocks"):
        raise ValueError("fixmatch.freeze_blocks needs an EfficientNet backbone (stem + blocks)")
    return [backbone.conv_stem, backbone.bn1, *list(backbone.blocks)[:freeze_blocks]]


def parameter_groups(model: nn.Module, cfg: FixMatchConfig) -> list[dict]:
    """SGD groups: no weight decay on biases and norm parameters; the head at ``lr``, the backbone at
    ``lr * backbone_lr_scale`` (each group's ``base_lr``, scaled by the schedule)."""
    head_ids = set()
    get_classifier = getattr(getattr(model, "backbone", None), "get_classifier", None)
    if get_classifier is not None:
        head_ids = {id(p) for p in get_classifier().parameters()}
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        groups.setdefault((id(p) in head_ids, p.ndim <= 1 or name.endswith(".bias")), []).append(p)
    out = []
    for (is_head, no_decay), params in sorted(groups.items()):
        lr = cfg.lr if is_head else cfg.lr * cfg.backbone_lr_scale
        decay = 0.0 if no_decay or (cfg.pretrained_pull and not is_head) else cfg.weight_decay
        out.append(
            {"params": params, "weight_decay": decay, "lr": lr, "base_lr": lr, "pull": not is_head and not no_decay}
        )
    return out


def make_deterministic(device: torch.device) -> None:
    """Deterministic kernels on CUDA (cuDNN without autotuning, cuBLAS with a fixed workspace); process-wide
    by PyTorch's design. Ops without a deterministic kernel warn instead of failing."""
    if device.type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


def select_device(device: str | None = None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class FixMatchTrainer:
    """Trains ``model`` with FixMatch. ``seed`` fixes every random choice (batches and augmentations)."""

    def __init__(
        self, model: nn.Module, cfg: FixMatchConfig, seed: int = 0, device: str | None = None, fresh_head: bool = True
    ) -> None:
        self.cfg = cfg
        self.device = select_device(device)
        if cfg.deterministic:
            make_deterministic(self.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.fresh_head = fresh_head  # False when the model comes trained (a retrain from the champion)
        self.frozen = frozen_modules(self.model, cfg.freeze_blocks)
        for module in self.frozen:
            module.requires_grad_(False)
        self.ema = ModelEMA(self.model, cfg.ema_decay, cfg.ema_warmup)
        frozen_ids = {id(m) for m in self.frozen}
        self.ema.exact = {  # the frozen modules' weights and statistics: the EMA holds them unchanged
            f"{name}.{key}" if name else key
            for name, module in self.model.named_modules()
            if id(module) in frozen_ids
            for key in module.state_dict()
        }
        self.optimizer = torch.optim.SGD(
            parameter_groups(self.model, cfg), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov
        )
        # L2-SP: the backbone's decayed weights are pulled toward where they started (the pretrained ones)
        self.anchor = (
            [(p, p.detach().clone()) for g in self.optimizer.param_groups if g["pull"] for p in g["params"]]
            if cfg.pretrained_pull
            else []
        )
        self.generator = torch.Generator().manual_seed(seed)
        self.augment = augment_config(cfg)
        self.cache = None
        if cfg.cached_views:
            from training.trunk_cache import TrunkCache

            self.cache = TrunkCache(
                self.model, cfg.freeze_blocks, cfg.cached_views, seed, self.augment, self.device, self.memory_format
            )
        self.iteration = 0
        self.stream: UnlabelledStream | None = None
        self._onnx_cache: tuple | None = None  # ((iteration, use_ema), OnnxScorer)

    # -- training -------------------------------------------------------------------------------
    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)

    def _upload(self, images: np.ndarray) -> torch.Tensor:
        """A uint8 NHWC batch as uint8 NCHW on the training device: one copy, from pinned memory on CUDA."""
        x = to_nchw(images)
        if self.device.type == "cpu":
            return x
        return x.pin_memory().to(self.device, non_blocking=True)

    def _autocast(self):  # type: ignore[no-untyped-def]
        """bf16 autocast for the forward passes when ``fixmatch.precision`` is "bf16" (a no-op for "fp32")."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16")

    def step(self, labelled: np.ndarray, y: np.ndarray, unlabelled: np.ndarray) -> StepStats:
        """One FixMatch iteration. ``labelled``/``unlabelled`` are uint8 NHWC arrays (the whole sets;
        batches are drawn here), ``y`` holds 1 for anomaly, 0 for nominal."""
        cfg = self.cfg
        if self.stream is None or self.stream.n != len(unlabelled):
            self.stream = UnlabelledStream(len(unlabelled), self.generator)
        lb_idx = labelled_batch(y, cfg.batch_size, self.generator, cfg.oversample)
        x_lb = self._labelled_view(labelled[lb_idx])
        y_lb = torch.as_tensor(np.asarray(y)[lb_idx], dtype=torch.int64).to(self.device, non_blocking=True)
        n_u = cfg.batch_size * cfg.uratio if cfg.lambda_u > 0 else 0
        u_idx = self.stream.next(n_u)
        self._train_mode()
        logits_uw = None
        if len(u_idx):
            x_uw, x_us = self._unlabelled_views(unlabelled[u_idx])
            # The weak view only yields (detached) pseudo-labels, so it needs no backward pass: a
            # separate no-grad forward (BatchNorm still in training mode) saves about a third of a step.
            with torch.no_grad(), self._autocast(), self._weak_bn() as teacher:
                logits_uw = self._forward(x_uw, teacher).float()
            x = torch.cat([x_lb, x_us])
        else:
            x = x_lb
        with self._autocast():
            logits = self._forward(x)
        logits = logits.float()  # the loss in float32 whatever the forward's precision
        n_lb = len(lb_idx)
        logits_lb, logits_us = logits[:n_lb], logits[n_lb:]
        if logits_uw is None:
            logits_uw = logits_us
        parts = fixmatch_loss(logits_lb, y_lb, logits_uw, logits_us, cfg.threshold, cfg.lambda_u)
        self.optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        if self.anchor:
            with torch.no_grad():
                for p, start in self.anchor:
                    if p.grad is not None:
                        p.grad.add_(p - start, alpha=cfg.pretrained_pull)
        self.optimizer.step()
        self.ema.update(self.model, self.iteration)
        self.iteration += 1
        values = torch.stack(
            [parts.total.detach(), parts.supervised, parts.unsupervised, parts.mask_rate, parts.pseudo_anomaly_rate]
        ).float()
        return StepStats(self.iteration, values, self.optimizer.param_groups[-1]["lr"])  # lr: the head's

    # A step's inputs: augmented pixels, or with the trunk cache the frozen trunk's outputs for cached views
    # (pseudo-labels from the plain view), which ``_forward`` then runs through the rest of the network.
    def _labelled_view(self, images: np.ndarray) -> torch.Tensor:
        if self.cache is not None:
            return self.cache.features(images, "weak", self.generator)
        return weak_augment(self._upload(images), self.generator, self.augment)

    def _unlabelled_views(self, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(weak, strong) views of a batch of unlabelled images."""
        if self.cache is not None:
            from training.trunk_cache import image_keys

            keys = image_keys(images)
            clean = self.cache.features(images, "clean", keys=keys)
            return clean, self.cache.features(images, "strong", self.generator, keys=keys)
        x_u = self._upload(images)
        return weak_augment(x_u, self.generator, self.augment), strong_augment(x_u, self.generator, self.augment)

    def _forward(self, x: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        model = self.model if model is None else model
        if self.cache is not None:
            from training.trunk_cache import tail_forward

            return tail_forward(model, x, self.cfg.freeze_blocks)
        return model(self._to_device(x))

    def train(
        self,
        labelled: np.ndarray,
        y: np.ndarray,
        unlabelled: np.ndarray,
        iterations: int,
        on_step: Callable[[StepStats], None] | None = None,
        checkpoint_path: str | os.PathLike | None = None,
        checkpoint_every: int = 0,
        progress: bool = False,
    ) -> list[StepStats]:
        """Run ``iterations`` steps; checkpoint every ``checkpoint_every`` steps and at the end."""
        y = np.asarray(y)
        if len(np.unique(y)) < 2:
            raise ValueError("FixMatch needs labelled examples of both classes (anomaly and nominal)")
        if self.cfg.head_init == "linprobe" and self.fresh_head and self.iteration == 0:
            self.init_head_from_probe(labelled, y)
        history: list[StepStats] = []
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=iterations, desc="train", unit="it", leave=False)
        for i in range(iterations):
            self._set_lr(i, iterations)
            stats = self.step(labelled, y, unlabelled)
            history.append(stats)
            if on_step:
                on_step(stats)
            if bar is not None:
                bar.update(1)
                if i % 10 == 9 or i == iterations - 1:  # reading the stats waits for the device
                    bar.set_postfix(loss=f"{stats.loss:.3f}", mask=f"{stats.mask_rate:.2f}")
            if checkpoint_path and checkpoint_every and (i + 1) % checkpoint_every == 0:
                self.save_checkpoint(checkpoint_path)
        if bar is not None:
            bar.close()
        if self.cfg.head_refit == "blend" and iterations:
            self.blend_probe_head(labelled, y)
        self.stream = None  # the cycle is complete: the next one draws from its own (changed) pool
        if checkpoint_path:
            self.save_checkpoint(checkpoint_path)
        return history

    def _train_mode(self, model: nn.Module | None = None) -> None:
        """Training mode for ``model`` (default: the one being trained), its frozen blocks in eval mode."""
        model = self.model if model is None else model
        model.train()
        for module in frozen_modules(model, self.cfg.freeze_blocks) if model is not self.model else self.frozen:
            module.eval()
        if self.cfg.bn == "frozen":
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    @contextlib.contextmanager
    def _weak_bn(self):  # type: ignore[no-untyped-def]
        """Yield the network that runs the weak view (``fixmatch.teacher``: the live one or its EMA), in the
        mode ``fixmatch.weak_bn`` asks for: BatchNorm on the batch's statistics (training mode) or on its
        running ones (eval mode, as when scoring; dropout off). The EMA teacher's running statistics stay
        its averages either way; each network's own mode is restored after."""
        teacher = self.ema.module if self.cfg.teacher == "ema" else self.model
        norms: list[nn.Module] = []
        if self.cfg.weak_bn == "running":
            teacher.eval()
        elif teacher is not self.model:
            self._train_mode(teacher)
            norms = [m for m in teacher.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.momentum = 0.0  # batch statistics for the forward, running ones left as they are
        try:
            yield teacher
        finally:
            for m, momentum in zip(norms, momenta, strict=True):
                m.momentum = momentum
            if teacher is self.model:
                self._train_mode()
            else:
                teacher.eval()

    def _set_lr(self, i: int, iterations: int) -> None:
        factor = math.cos(7 * math.pi * i / (16 * iterations)) if self.cfg.lr_schedule == "cosine" else 1.0
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor

    @torch.no_grad()
    def init_head_from_probe(self, labelled: np.ndarray, y: np.ndarray) -> None:
        """Set the classifier head to a class-balanced logistic regression on the labelled images'
        pooled embeddings (LP-FT: fine-tuning then starts from what the pretrained features already
        separate, instead of a random head), and restart the EMA from these weights."""
        from anomalymatch.embedding_scores import fit_linear_probe

        model = self.model
        model.eval()
        feats = map_batches(model.embed, labelled, 256, self.device, self.memory_format)
        scale = float(np.linalg.norm(feats, axis=1).mean()) or 1.0
        coef, intercept = fit_linear_probe(feats / scale, y, normalise=False, seed=0)
        if self.cfg.probe_margin > 0:  # temper the head: a saturated one leaves no supervised gradient
            temper = self.cfg.probe_margin / max(float(np.abs(feats / scale @ coef + intercept).mean()), 1e-6)
            coef, intercept = coef * temper, intercept * temper
        head = model.backbone.get_classifier()
        if not isinstance(head, nn.Linear) or head.out_features != 2:
            raise ValueError("head_init 'linprobe' needs a 2-class linear head")
        w = torch.as_tensor(coef / scale, dtype=head.weight.dtype, device=head.weight.device)
        head.weight.copy_(torch.stack([-w / 2, w / 2]))
        head.bias.copy_(torch.tensor([-intercept / 2, intercept / 2], dtype=head.bias.dtype))
        self.ema.module.load_state_dict(model.state_dict())
        self._onnx_cache = None

    @torch.no_grad()
    def blend_probe_head(self, labelled: np.ndarray, y: np.ndarray) -> None:
        """The EMA model's head := its own logit + a class-balanced logistic regression on its features of
        the labelled images, each divided by its mean |logit| on them (``fixmatch.head_refit`` "blend")."""
        from anomalymatch.embedding_scores import fit_linear_probe

        ema = self.ema.module
        ema.eval()
        feats = map_batches(ema.embed, labelled, 256, self.device, self.memory_format)
        head = ema.backbone.get_classifier()
        w_fm = (head.weight[1] - head.weight[0]).float().cpu().numpy()
        b_fm = float(head.bias[1] - head.bias[0])
        scale = float(np.linalg.norm(feats, axis=1).mean()) or 1.0
        coef, intercept = fit_linear_probe(feats / scale, y, normalise=False, seed=0)
        w_lr, b_lr = coef / scale, intercept
        m_fm = max(float(np.abs(feats @ w_fm + b_fm).mean()), 1e-6)
        m_lr = max(float(np.abs(feats @ w_lr + b_lr).mean()), 1e-6)
        w = torch.as_tensor(w_fm / m_fm + w_lr / m_lr, dtype=head.weight.dtype, device=head.weight.device)
        b = b_fm / m_fm + b_lr / m_lr
        head.weight.copy_(torch.stack([-w / 2, w / 2]))
        head.bias.copy_(torch.tensor([-b / 2, b / 2], dtype=head.bias.dtype))
        self._onnx_cache = None

    # -- scoring --------------------------------------------------------------------------------
    def score(
        self,
        images: np.ndarray,
        batch_size: int = 0,
        use_ema: bool = True,
        progress: bool = False,
        backend: str = "auto",
    ) -> np.ndarray:
        """Anomaly probability for each uint8 NHWC image, from the EMA model by default.

        ``backend`` "onnx" exports the model and scores in ONNX Runtime (about 4x faster than eager
        torch on a CPU; the export is cached until the next training step), "torch" scores eagerly,
        "auto" picks ONNX on a CPU and torch on a GPU."""
        if backend not in ("auto", "onnx", "torch"):
            raise ValueError(f"unknown scoring backend {backend!r}; choose auto, onnx or torch")
        if self.cache is not None and backend == "auto" and self.model.spec.views == "plain":  # one cached view
            return self.cache.score(self.ema.module if use_ema else self.model, images, batch_size or 256)
        if backend == "onnx" or (backend == "auto" and self.device.type == "cpu"):
            return self.onnx_scorer(use_ema).score(images, batch_size)
        model = self.ema.module if use_ema else self.model
        return score_images(model, images, batch_size or 256, self.device, self.memory_format, progress)

    def embed(self, images: np.ndarray, batch_size: int = 0, use_ema: bool = True) -> np.ndarray:
        """Pooled features (N, D) of uint8 NHWC images: the ``embedding`` output of the exported model (ONNX
        Runtime on a CPU, eager torch on a GPU)."""
        if self.device.type == "cpu":
            return self.onnx_scorer(use_ema).embed(images, batch_size)
        from registry.parity import embed_torch

        return embed_torch(self.ema.module if use_ema else self.model, images, batch_size or 256)

    def onnx_scorer(self, use_ema: bool = True):
        """The model exported to ONNX and loaded in ONNX Runtime (CPU), as a registration would export it;
        cached until the next training step."""
        import tempfile

        from anomalymatch.scoring import OnnxScorer
        from registry.onnx_export import export_onnx

        key = (self.iteration, use_ema)
        if self._onnx_cache is not None and self._onnx_cache[0] == key:
            return self._onnx_cache[1]
        model = self.ema.module if use_ema else self.model
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(
                copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format), Path(tmp) / "model.onnx"
            )
            scorer = OnnxScorer(path, providers=["CPUExecutionProvider"])
        self._onnx_cache = (key, scorer)
        return scorer

    # -- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
        """Everything needed to continue exactly: weights, EMA, optimiser momentum, RNG, stream."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        for k, v in self.model.state_dict().items():
            tensors[f"model.{k}"] = v.detach().cpu().contiguous()
        for k, v in self.ema.state_dict().items():
            tensors[f"ema.{k}"] = v.detach().cpu().contiguous()
        for name, p in self.model.named_parameters():
            buf = self.optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tensors[f"optim.{name}.momentum_buffer"] = buf.detach().cpu().contiguous()
        tensors["rng.generator"] = self.generator.get_state()
        if self.stream is not None:
            for k, v in self.stream.state().items():
                tensors[f"stream.{k}"] = v
        meta = {"iteration": str(self.iteration), "format": CHECKPOINT_FORMAT}
        if self.cache is not None:  # the cached views are drawn from it: a resume must draw the same ones
            meta["view_seed"] = str(self.cache.seed)
        spec = getattr(self.model, "spec", None)
        if spec is not None:
            meta["preprocess"] = spec.to_json()
        meta.update(metadata or {})
        tmp = path.with_suffix(path.suffix + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)  # atomic: a crash mid-write leaves the previous checkpoint intact
        return path

    def load_checkpoint(self, path: str | os.PathLike) -> dict[str, str]:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not an AnomalyMatch checkpoint (metadata format={meta.get('format')!r})")
        tensors = load_file(str(path))
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        self.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        for (name, p), old_key in zip(self.model.named_parameters(), _index_keys(self.model)):
            key = f"optim.{name}.momentum_buffer"
            key = key if key in tensors else old_key  # checkpoints from before names: by position
            if key in tensors:
                self.optimizer.state[p]["momentum_buffer"] = tensors[key].to(p.device)
        self.stream = None
        if "stream.permutation" in tensors:
            self.stream = UnlabelledStream(len(tensors["stream.permutation"]), self.generator)
            self.stream.load_state({"permutation": tensors["stream.permutation"], "cursor": tensors["stream.cursor"]})
        self.generator.set_state(tensors["rng.generator"])  # last: building the stream above draws from it
        self.iteration = int(meta["iteration"])
        self._onnx_cache = None
        if self.cache is not None:  # outputs of the weights before the load are stale
            self.cache.reset(int(meta.get("view_seed", self.cache.seed)))
        return meta


@torch.inference_mode()
def map_batches(
    fn: Callable[[torch.Tensor], torch.Tensor],
    images: np.ndarray,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    memory_format: torch.memory_format = torch.channels_last,
    progress: bool = False,
) -> np.ndarray:
    """``fn`` applied to uint8 NHWC ``images`` in batches (as NCHW tensors on ``device``), concatenated."""
    starts = range(0, len(images), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="score", unit="batch", leave=False)
    out = []
    for start in starts:
        x = to_nchw(images[start : start + batch_size]).to(device).contiguous(memory_format=memory_format)
        out.append(fn(x).float().cpu().numpy())
    return np.concatenate(out) if out else np.empty(0, dtype=np.float32)


def score_images(
    model: AnomalyNet,
    images: np.ndarray,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    memory_format: torch.memory_format = torch.channels_last,
    progress: bool = False,
) -> np.ndarray:
    """Softmax anomaly probability (class 1) for uint8 NHWC images, in batches, eval mode, over the model's
    test-time views (``AnomalyNet.anomaly_probability``)."""
    was_training = model.training
    model.eval()
    try:
        return map_batches(model.anomaly_probability, images, batch_size, device, memory_format, progress)
    finally:
        model.train(was_training)
