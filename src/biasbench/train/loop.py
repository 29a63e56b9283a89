"""The method-agnostic training loop: resident data, seeded shuffles, evaluation, records, exact resume.

A run lives in ``RUNS/<run_id>/`` where ``run_id`` is a stable hash of the configuration (without the
dataset path) and the dataset's recipe hash. Files (each written atomically):

- ``config.json``: the configuration, the dataset identity, the method description, parameter count;
- ``checkpoint.pt``: after every epoch: method state (model(s), optimizer(s), method state), epoch,
  metrics history, torch RNG states. Sample order needs no saved state: epoch ``e`` shuffles with a
  generator seeded by ``(seed, e)``;
- ``metrics.json``: the history: per epoch the training loss, at evaluation epochs every split's
  metrics (see :func:`biasbench.eval.metrics.evaluate_split`); rewritten whole from the checkpointed
  history, so a resumed run never duplicates records;
- ``predictions/epochNNN_SPLIT.npz``: per-sample predicted class and logits (float16) at evaluation epochs;
- ``weights/epochNNN.pt``: the main model's weights at evaluation epochs as evaluated
  (``Method.evaluated_model_state``; ``{"epoch", "run_id", "model"}``),
  kept because ``checkpoint.pt`` moves on and a selection rule (``report --select alpha=A``) may choose an
  earlier evaluated epoch: ``biasbench audit --epoch N`` audits that model. Written before the epoch's
  checkpoint, so a run killed in between writes them again when it resumes;
- ``status.json`` (``running``/``finished``), ``summary.json`` at the end, ``tracker.json`` (tracker run id).

Re-running a finished configuration is skipped; an interrupted one (even by SIGKILL) resumes from the
last completed epoch and, on the CPU, ends with exactly the metrics of an uninterrupted run.
"""
from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import __version__
from ..config import COMPILE_MODES, TrainConfig
from ..data.biased_mnist import BiasedMNIST
from ..data.factors import majority_mask
from ..data.recipe import SPLITS, dataset_identity, read_manifest
from ..errors import BiasbenchError
from ..eval.metrics import GAP_METRICS, evaluate_split, pattern_distribution
from ..methods import Batch, TrainInfo, get_method_class
from ..models import check_model, count_parameters, create_model
from ..track import Tracker, flatten, make_tracker
from ..utils import atomic_write, atomic_write_json, read_json_record, stable_hash
from . import graphs
from .optim import optimizer_factory
from .runlock import hold_run

RUN_FORMAT = "1"
GLOBAL_RNG_LOCK = threading.RLock()
"""Held while a run seeds and draws from torch's process-wide generators (model initialisation) or restores
them from a checkpoint, so that runs trained in threads (``biasbench sweep --streams``) initialise exactly
as they would alone. Nothing else in a run draws from them: shuffles, samplers and augmentation have their
own generators."""
TUNING = "tuning"
"""Pseudo-split for the alpha-weighted accuracies: val and balanced_val together."""


def run_identity(cfg: TrainConfig, manifest: dict) -> str:
    d = cfg.to_dict()
    d.pop("data")
    return stable_hash({"run_format": RUN_FORMAT, "config": d, "dataset": dataset_identity(manifest)}, 12)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise BiasbenchError(f"unknown device {device!r}; expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BiasbenchError("device cuda requested but no CUDA GPU is available")
    return dev


COMPILE_RECOMPILE_LIMIT = 64


def resolve_numerics(precision: str, channels_last: str, device: torch.device) -> tuple[bool, bool]:
    """(bf16 autocast, channels-last) for a run's ``precision`` and ``channels_last`` settings on ``device``:
    ``auto`` is bf16 and channels-last on CUDA, fp32 and the default layout elsewhere."""
    cuda = device.type == "cuda"
    return (precision == "bf16" or (precision == "auto" and cuda),
            channels_last == "on" or (channels_last == "auto" and cuda))


def prep_images(x_uint8: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A (B, C, H, W) uint8 batch as float (raw 0-255 values: the models normalise), channels-last if asked.
    The layout changes while the batch is uint8 (a quarter of the bytes) and the conversion keeps it: one
    float tensor written, not two."""
    if channels_last:
        x_uint8 = x_uint8.contiguous(memory_format=torch.channels_last)
    return x_uint8.float()


def compile_options(compile_model: bool | str) -> dict:
    """``torch.compile`` keyword arguments for a ``compile_model`` value: True or ``"default"`` (static shapes,
    the default mode) or one of :data:`COMPILE_MODES`."""
    if compile_model is True or compile_model == "default":
        return {"dynamic": False}
    if compile_model not in COMPILE_MODES:
        raise BiasbenchError(f"unknown compile mode {compile_model!r}; expected one of: {', '.join(COMPILE_MODES)}")
    return {"dynamic": False, "mode": compile_model}


def compile_modules(method, compile_model: bool | str = True) -> None:
    """Compile each of a built method's modules in place (after the method built them: LfF copies the model);
    state_dict keys are unchanged, and there is one recompile per progressive stage size."""
    options = compile_options(compile_model)
    reset_compiler()
    for module in method.modules().values():
        module.compile(**options)


def reset_compiler() -> None:
    """Before compiling a new run (or fused group): drop the compiled code of earlier ones (a sweep process
    trains many in turn, and dynamo keeps up to ``recompile_limit`` variants per code object, shared by all
    instances: by default 8, after which it silently runs eager) and allow enough variants for one run's
    shapes and modes (training batch, last batch, evaluation; LNL's two phases)."""
    import torch._dynamo

    torch._dynamo.reset()
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"  # older torch
    setattr(cfg, name, max(getattr(cfg, name), COMPILE_RECOMPILE_LIMIT))


CUDA_GRAPHS_CHOICES = ("auto", "on", "off")
CUDA_GRAPHS_AUTO = True
"""``--cuda-graphs auto``: on for CUDA devices (unless the compile mode makes its own graphs), off elsewhere."""
CUDAGRAPH_COMPILE_MODES = ("reduce-overhead", "max-autotune")
"""torch.compile modes that capture CUDA graphs themselves (they do not nest inside ours)."""


def check_cuda_graphs(cuda_graphs: bool | str, device: torch.device, compile_model: bool | str = False) -> bool:
    """Whether steps are captured as CUDA graphs (:mod:`biasbench.train.graphs`). ``cuda_graphs``: a bool or
    one of :data:`CUDA_GRAPHS_CHOICES`; ``on`` for another device than CUDA, or with a compile mode that makes
    its own graphs, is an error."""
    if cuda_graphs in (False, None, "off"):
        return False
    if cuda_graphs == "auto":
        return CUDA_GRAPHS_AUTO and device.type == "cuda" and compile_model not in CUDAGRAPH_COMPILE_MODES
    if cuda_graphs not in (True, "on"):
        raise BiasbenchError(f"unknown --cuda-graphs value {cuda_graphs!r}; expected one of: "
                             f"{', '.join(CUDA_GRAPHS_CHOICES)}")
    if device.type != "cuda":
        raise BiasbenchError(f"CUDA graphs need a CUDA device, not {device}; use --cuda-graphs off")
    if compile_model in CUDAGRAPH_COMPILE_MODES:
        raise BiasbenchError(f"compile mode {compile_model} makes its own CUDA graphs: use --cuda-graphs off with "
                             f"it, or compile with default or max-autotune-no-cudagraphs")
    return True


def eval_batches(images: torch.Tensor, batch: int):
    """Yield ``(chunk, n)``: ``images`` in chunks of exactly ``batch`` (the last zero-padded, static shapes
    for compiled code and cuDNN's algorithm cache), of which the first ``n`` are real. Evaluation runs in
    eval mode, where no sample affects another's output."""
    for i in range(0, len(images), batch):
        chunk = images[i:i + batch]
        n = len(chunk)
        if n < batch:
            chunk = torch.cat([chunk, chunk.new_zeros((batch - n, *chunk.shape[1:]))])
        yield chunk, n


@dataclass
class SplitData:
    images: torch.Tensor  # uint8 (N, 3, H, W) on the device
    labels: torch.Tensor  # int64 (N,)
    factors: torch.Tensor  # int64 (N, 7)
    labels_np: np.ndarray
    factors_np: np.ndarray


_SPLITS_CACHE: dict[tuple, dict[str, SplitData]] = {}
_SPLITS_LOCK = threading.Lock()


def _dataset_key(data: str, device: torch.device) -> tuple:
    """What identifies a dataset's rendered splits: its folder, its files' sizes and modification times (a
    dataset made again, or a changed file, is another key), and the device."""
    root = Path(data).resolve()
    stats = []
    for f in sorted(root.iterdir()) if root.is_dir() else []:
        if f.is_file():
            st = f.stat()
            stats.append((f.name, st.st_size, st.st_mtime_ns))
    return str(root), tuple(stats), str(torch.device(device))


def load_splits(data: str, device: torch.device) -> dict[str, SplitData]:
    """Every split of the dataset in ``data`` rendered on ``device``. Rendered once per process: the latest
    dataset loaded on each device is kept, so the trials of a sweep (threads of ``--streams`` included) share
    one read-only copy instead of rendering the 80,000 images of a full-size dataset each (about 0.5 s per
    trial on an H100, 3 s on a 2-core CPU); loading another dataset on that device drops it first. Callers must
    not modify the tensors."""
    key = _dataset_key(data, device)
    # the gate first: the lock's holder is then already inside a shared section and never waits on a capture
    # while others wait on it; one thread renders, the others wait for its result rather than render it again
    with graphs.CAPTURE_GATE.shared(), _SPLITS_LOCK:
        hit = _SPLITS_CACHE.get(key)
        if hit is None:
            for k in [k for k in _SPLITS_CACHE if k[-1] == key[-1]]:
                del _SPLITS_CACHE[k]  # one dataset per device: free the last one before rendering the next
            hit = _SPLITS_CACHE[key] = _render_splits(data, device)
        return hit


def _render_splits(data: str, device: torch.device) -> dict[str, SplitData]:
    out = {}
    for split in SPLITS:
        ds = BiasedMNIST(data, split=split, download=False)
        t = ds.tensors(device)  # inside load_splits's shared section of the capture gate
        out[split] = SplitData(t["images"], t["labels"], t["factors"], ds.labels.astype(np.int64),
                               ds.factors.astype(np.int64))
    return out


class Trainer:
    """Train one configuration into ``out/<run_id>``. ``tracker``: a tracker name or instance."""

    def __init__(self, cfg: TrainConfig, out: str | os.PathLike, tracker: str | Tracker = "mlflow",
                 device: str = "auto", progress: bool | None = None, log: Callable[[str], None] | None = None,
                 compile_model: bool | str = False, cuda_graphs: bool | str = False):
        self.cfg = cfg
        if compile_model:
            compile_options(compile_model)  # an unknown mode fails before anything is written
        self.compile_model = compile_model
        self.manifest = read_manifest(cfg.data)
        self.settings = self.manifest["settings"]
        missing = [f for f in cfg.explicit if f not in self.manifest.get("factors", [])]
        if missing:
            raise BiasbenchError(f"dataset {cfg.data} has no factor(s) {', '.join(missing)} for --explicit; "
                                 f"it has: {', '.join(self.manifest.get('factors', []))}")
        self.run_id = run_identity(cfg, self.manifest)
        self.schedule = None
        if cfg.progressive:
            from .progressive import ProgressiveSchedule

            self.schedule = ProgressiveSchedule(cfg.progressive, cfg.epochs, 3 * self.settings["cell_size"])
        self.out = Path(out)
        self.run_dir = self.out / self.run_id
        self.device = resolve_device(device)
        self.cuda_graphs = check_cuda_graphs(cuda_graphs, self.device, compile_model)
        check_model(cfg.model, **cfg.model_kwargs)  # a bad model option fails before the tracker writes anything
        self.progress = progress
        self.log = log or (lambda s: None)
        self.tracker = make_tracker(tracker, str(self.out)) if isinstance(tracker, str) else tracker
        cuda = self.device.type == "cuda"
        if cuda:  # shapes are fixed per run: let cuDNN time its algorithms once (grouped convolutions gain most)
            torch.backends.cudnn.benchmark = True
        self.amp, self.channels_last = resolve_numerics(cfg.precision, cfg.channels_last, self.device)
        self._runner = None  # (method, images, GraphedStep) of the current run

    # -- records -----------------------------------------------------------------------------
    def _config_record(self, n_params: int, method_desc: dict) -> dict:
        return {
            "run_id": self.run_id,
            "run_format": RUN_FORMAT,
            "config": self.cfg.to_dict(),
            "dataset": {"path": str(self.cfg.data), "recipe_sha256": self.manifest["recipe_sha256"],
                        "settings": self.settings},
            "method": method_desc,
            "model_parameters": n_params,
            "biasbench_version": __version__,
            "torch_threads": torch.get_num_threads(),  # CPU float sums (and so the logits' last bits) depend on it
        }

    def _check_existing(self) -> str:
        """'new', 'finished' or 'resume'; a folder with another config is an error."""
        cfg_path = self.run_dir / "config.json"
        if not cfg_path.exists():
            return "new"
        rec = read_json_record(cfg_path)
        mine = {k: v for k, v in self.cfg.to_dict().items() if k != "data"}
        theirs = {k: v for k, v in rec.get("config", {}).items() if k != "data"}
        theirs_data = rec.get("dataset", {})
        if mine != theirs or "recipe_sha256" not in theirs_data or \
                dataset_identity(theirs_data) != dataset_identity(self.manifest):
            raise BiasbenchError(f"run folder {self.run_dir} holds a different configuration; "
                                 f"move it away or use another --out")
        status = read_json_record(self.run_dir / "status.json", {"state": "running"})
        return "finished" if status.get("state") == "finished" else "resume"

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> dict:
        """Train (or resume, or skip when finished) holding the run folder's lock (:mod:`.runlock`): a second
        trainer of the same run, in any process, waits and then finds it finished."""
        with hold_run(self.run_dir):  # says on standard error when it waits
            state = self._check_existing()
            if state == "finished":
                return self.skipped()
            data = load_splits(self.cfg.data, self.device)
            method, history, start_epoch = self.prepare(data, state)
            return self.train_from(data, method, history, start_epoch)

    def train_from(self, data: dict[str, SplitData], method, history: list[dict], start_epoch: int) -> dict:
        """The epochs after ``start_epoch`` for a method from :meth:`prepare`, then the summary."""
        model = method.model
        train = data["train"]
        p_train = self.train_patterns(data)
        stage_size = None
        train_images = train.images
        try:
            for epoch in range(start_epoch + 1, self.cfg.epochs + 1):
                stage = self.schedule.stage_of_epoch(epoch) if self.schedule else None
                if stage is not None and stage.size != stage_size:
                    train_images = self._stage_images(stage, train)
                    stage_size = stage.size
                    if hasattr(model, "set_dropout"):
                        model.set_dropout(stage.dropout)
                    self.tracker.log_metrics({"progressive/size": stage.size, "progressive/dropout": stage.dropout,
                                              "progressive/randaug": stage.randaug, "progressive/mixup": stage.mixup,
                                              "progressive/stage": stage.index}, step=epoch)
                    self.log(f"progressive stage {stage.index + 1}/{self.schedule.stages} from epoch {epoch}: "
                             f"{stage.size} px, dropout {stage.dropout:.3f}, RandAugment {stage.randaug:.1f}, "
                             f"mixup {stage.mixup:.2f}")
                history.append(self._train_epoch(method, train, epoch, train_images, stage))
                if epoch in self.cfg.eval_epochs:
                    history.extend(self._evaluate(method, data, epoch, p_train))
                self.end_epoch(method, epoch, history)
        except BaseException:
            self.tracker.finish("KILLED")
            raise
        finally:
            self._runner = None  # a captured graph holds its memory pool until dropped (a sweep trains many runs)
        return self.finish(history)

    def skipped(self) -> dict:
        self.log(f"run {self.run_id} already finished: skipped")
        summary = read_json_record(self.run_dir / "summary.json", {})
        return {**summary, "status": "skipped", "run_dir": str(self.run_dir)}

    def build_method(self, train: SplitData):
        """The model and method exactly as this run builds them (seeded by the run's seed)."""
        cfg, dev = self.cfg, self.device
        info = TrainInfo(num_train=len(train.labels), num_classes=10, labels=train.labels, factors=train.factors,
                         mode=self.settings["mode"], explicit=cfg.explicit, grouping=cfg.grouping,
                         batch_size=cfg.batch_size, epochs=cfg.epochs, seed=cfg.seed)
        with GLOBAL_RNG_LOCK, graphs.CAPTURE_GATE.shared():  # initialisations draw from the seeded generator
            torch.manual_seed(cfg.seed)
            model = create_model(cfg.model, num_classes=10, **cfg.model_kwargs).to(dev)
            if self.channels_last:
                model = model.to(memory_format=torch.channels_last)
            return get_method_class(cfg.method)(model, optimizer_factory(cfg, dev), info, cfg.method_hparams)

    def prepare(self, data: dict[str, SplitData], state: str):
        """Build the method, write ``config.json``, resume from the checkpoint when there is one and start the
        tracker run: (method, history so far, last completed epoch)."""
        cfg, dev = self.cfg, self.device
        method = self.build_method(data["train"])
        if self.compile_model:
            compile_modules(method, self.compile_model)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.run_dir / "config.json",
                          self._config_record(count_parameters(method.model), method.describe()))

        history: list[dict] = []
        start_epoch = 0
        ckpt_path = self.run_dir / "checkpoint.pt"
        if state == "resume" and ckpt_path.exists():
            ckpt = _load_checkpoint(ckpt_path)
            method.load_state_dict(ckpt["method"])
            history = ckpt["history"]
            start_epoch = int(ckpt["epoch"])
            with GLOBAL_RNG_LOCK:
                torch.set_rng_state(ckpt["torch_rng"])
                if dev.type == "cuda" and ckpt.get("cuda_rng") is not None:
                    torch.cuda.set_rng_state(ckpt["cuda_rng"], dev)
            self.log(f"resuming run {self.run_id} after epoch {start_epoch}")
        atomic_write_json(self.run_dir / "status.json", {"state": "running", "epoch": start_epoch})

        tracker_rec = read_json_record(self.run_dir / "tracker.json", {})
        ids = self.tracker.start(f"{cfg.method}-{cfg.model}-s{cfg.seed}-{self.run_id}", resume_ids=tracker_rec)
        if ids:
            atomic_write_json(self.run_dir / "tracker.json", {**tracker_rec, **ids})
        if start_epoch == 0:
            self.tracker.log_params(flatten({"config": {k: v for k, v in cfg.to_dict().items()},
                                             "method": method.describe(), "dataset": self.settings}))
            self.tracker.set_tags({"biasbench.version": __version__, "device": str(dev), "run_id": self.run_id,
                                   "git_commit": _git_commit(), "torch": torch.__version__})
            if self.tracker.name != "none":  # the dataset's sample grid, for the tracker's UI
                from ..data.export import sample_grid, save_png

                grid = self.run_dir / "samples.png"
                save_png(sample_grid(BiasedMNIST(cfg.data, split="train", download=False), per_side=3), grid)
                self.tracker.log_artifact(str(grid))
        return method, history, start_epoch

    def train_patterns(self, data: dict[str, SplitData]) -> np.ndarray:
        """p_train: the training split's distribution of majority/minority patterns (for tuning/alpha)."""
        train = data["train"]
        return pattern_distribution(majority_mask(train.labels_np, train.factors_np, self.settings["mode"]))

    def end_epoch(self, method, epoch: int, history: list[dict]) -> None:
        """Checkpoint, rewrite ``metrics.json`` and log the epoch to the tracker."""
        self._checkpoint(method, epoch, history)
        atomic_write_json(self.run_dir / "metrics.json", {"run_id": self.run_id, "history": history})
        self.tracker.log_metrics(_tracker_metrics(history, epoch), step=epoch)
        self.tracker.flush()

    def finish(self, history: list[dict]) -> dict:
        summary = self._summary(history)
        atomic_write_json(self.run_dir / "summary.json", summary)
        atomic_write_json(self.run_dir / "status.json", {"state": "finished", "epoch": self.cfg.epochs})
        for name in ("config.json", "metrics.json", "summary.json"):
            self.tracker.log_artifact(str(self.run_dir / name))
        self.tracker.finish("FINISHED")
        return {**summary, "status": "finished", "run_dir": str(self.run_dir)}

    def epoch_order(self, method, epoch: int) -> torch.Tensor:
        """The epoch's sample order on the device: the method's sampler, else a shuffle seeded by (seed, epoch)."""
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        order = method.epoch_indices(epoch, gen)
        if order is None:
            order = torch.randperm(len(method.info.labels), generator=gen)
        return order.to(self.device)

    def _prep(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return prep_images(x_uint8, self.channels_last)

    def _autocast(self):
        # captured steps cast the weights inside the graph: no cast cache kept across the capture's boundary
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp,
                              cache_enabled=not self.cuda_graphs)

    def step_runner(self, method, train: SplitData, images: torch.Tensor):
        """The un-augmented training step ``idx -> stats`` of ``method`` on ``images``: a :class:`GraphedStep`,
        captured as a CUDA graph when this trainer uses them and the method's optimizers allow it (kept for
        the run: the graph lives as long as the method and images it was captured with)."""
        if self._runner is not None and self._runner[0] is method and self._runner[1] is images:
            return self._runner[2]
        from .graphs import step_runner

        def update(idx: torch.Tensor) -> dict:
            return method.update(Batch(self._prep(images[idx]), train.labels[idx], train.factors[idx], idx))

        # progressive stages change sizes and dropout: their steps stay eager
        runner = step_runner(update, method, method.tensor_names, method.optimizers(),
                             lambda: (method.modules(), method.optimizers(), method.tensors()), self.cuda_graphs,
                             self.log, blocked="progressive learning" if self.cfg.progressive else None)
        self._runner = (method, images, runner)
        return runner

    def _stage_images(self, stage, train: SplitData) -> torch.Tensor:
        """Training images at the stage's size, rendered from the recipe (not resized)."""
        if stage.size == 3 * self.settings["cell_size"]:
            return train.images
        ds = BiasedMNIST(self.cfg.data, split="train", download=False)
        return ds.render(device=self.device, cell_size=stage.size // 3)

    def _train_epoch(self, method, train: SplitData, epoch: int, images: torch.Tensor | None = None,
                     stage=None) -> dict:
        cfg, dev = self.cfg, self.device
        images = train.images if images is None else images
        aug_gen = aug_rng = None
        if stage is not None and (stage.randaug > 0 or stage.mixup > 0):
            from .augment import mixup, rand_augment

            aug_gen = torch.Generator(device=dev).manual_seed(cfg.seed * 7_919 + epoch)
            aug_rng = np.random.default_rng([cfg.seed, epoch])
        changed = method.begin_epoch(epoch, lambda name: self._predict(method, train.images,
                                                                       net=method.modules()[name]))
        if changed:
            self._runner = None  # built again below: a captured step holds the optimizers it was captured with
            self.log(changed)
        order = self.epoch_order(method, epoch)
        bs = cfg.batch_size
        steps = (len(order) + bs - 1) // bs
        runner = self.step_runner(method, train, images) if aug_gen is None else None
        method.train(True)
        loss_sum = torch.zeros((), device=dev)
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=f"epoch {epoch}/{cfg.epochs}", unit="step", leave=False,
                   disable={True: False, False: True, None: None}[self.progress])  # None: only on a TTY
        t0 = time.perf_counter()
        for step in range(steps):
            idx = order[step * bs:(step + 1) * bs]
            if runner is not None:
                with self._autocast():
                    stats = runner(idx)
            else:
                x, y, y_soft = rand_augment(self._prep(images[idx]), stage.randaug, aug_gen), train.labels[idx], None
                if stage.mixup > 0:
                    x, y_soft = mixup(x, y, stage.mixup, aug_rng, aug_gen)
                with self._autocast():
                    stats = method.update(Batch(x, y, train.factors[idx], idx, y_soft))
            loss_sum += stats["loss"] * len(idx)
            bar.update(1)
            if step % 50 == 49 and not bar.disable:
                el = time.perf_counter() - t0
                bar.set_postfix(loss=f"{loss_sum.item() / ((step + 1) * bs):.3f}",
                                img_s=f"{(step + 1) * bs / el:,.0f}")
        bar.close()
        loss = float(loss_sum.item()) / len(order)
        seconds = time.perf_counter() - t0
        self.log(f"epoch {epoch}/{cfg.epochs}: loss {loss:.4f}, {len(order) / seconds:,.0f} images/s")
        return {"epoch": epoch, "split": "train_loss", "loss": loss, "seconds": seconds,
                "images_per_s": len(order) / seconds}

    @torch.no_grad()
    def _predict(self, method, images: torch.Tensor, batch: int = 1024, net=None) -> torch.Tensor:
        """Logits of ``method.predict`` (or of ``net``) over ``images``, the method's modules in evaluation mode."""
        method.train(False)
        net = method.predict if net is None else net
        outs = []
        with graphs.CAPTURE_GATE.shared():
            for chunk, n in eval_batches(images, batch):
                with self._autocast():
                    outs.append(net(self._prep(chunk))[:n].float())
        method.train(True)
        return torch.cat(outs) if outs else torch.zeros((0, 10))

    def _evaluate(self, method, data: dict[str, SplitData], epoch: int, p_train: np.ndarray) -> list[dict]:
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch + 500_000)  # not an epoch order's
        changed = method.before_evaluation(epoch, lambda split: self._held_out(method, data[split]), gen)
        if changed:
            self.log(changed)
        logits = {split: self._predict(method, data[split].images) for split in SPLITS}
        return self.evaluation_records(logits, data, epoch, p_train)

    def _held_out(self, method, split: SplitData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the main model's ``before_logits`` features (N, D) float32, labels, factors) over ``split``, in
        evaluation mode (:meth:`Method.before_evaluation`)."""
        model = method.model
        feats = self._predict(method, split.images, net=lambda x: model.forward_features(x, ("before_logits",))[1]
                              ["before_logits"])
        return feats, split.labels, split.factors

    def evaluation_records(self, logits_by_split: dict[str, torch.Tensor], data: dict[str, SplitData], epoch: int,
                           p_train: np.ndarray) -> list[dict]:
        """Write the predictions of every split and return the epoch's metric records."""
        mode = self.settings["mode"]
        recs = []
        pred_dir = self.run_dir / "predictions"
        pred_dir.mkdir(exist_ok=True)
        preds = {}
        for split in SPLITS:
            d = data[split]
            logits = logits_by_split[split].float().cpu()
            pred = logits.argmax(1).numpy()
            preds[split] = pred
            atomic_write(pred_dir / f"epoch{epoch:03d}_{split}.npz",
                         lambda tmp, p=pred, lg=logits: _save_npz(tmp, pred=p.astype(np.uint8),
                                                                  logits=lg.numpy().astype(np.float16)))
            m = evaluate_split(pred, d.labels_np, d.factors_np, mode, p_train, logits=logits.numpy())
            recs.append({"epoch": epoch, "split": split, "metrics": m})
        # the tuning distribution: val and balanced_val together (held-out, biased and unbiased draws)
        tun_pred = np.concatenate([preds["val"], preds["balanced_val"]])
        tun_y = np.concatenate([data["val"].labels_np, data["balanced_val"].labels_np])
        tun_f = np.concatenate([data["val"].factors_np, data["balanced_val"].factors_np])
        tm = evaluate_split(tun_pred, tun_y, tun_f, mode, p_train)
        recs.append({"epoch": epoch, "split": TUNING, "metrics": {"alpha": tm["alpha"], "n": tm["n"]}})
        test = recs[SPLITS.index("test")]["metrics"]
        self.log(f"epoch {epoch}: test accuracy {test['accuracy']:.2f}, worst group {test['worst_group']:.2f}")
        return recs

    def _checkpoint(self, method, epoch: int, history: list[dict]) -> None:
        method_state = method.state_dict()
        if any(h.get("epoch") == epoch and "metrics" in h for h in history):
            weights = {"epoch": epoch, "run_id": self.run_id, "model": method.evaluated_model_state()}
            (self.run_dir / "weights").mkdir(exist_ok=True)
            atomic_write(self.run_dir / "weights" / f"epoch{epoch:03d}.pt", lambda tmp: torch.save(weights, tmp))
        state = {
            "epoch": epoch,
            "run_id": self.run_id,
            "method": method_state,
            "history": history,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }
        atomic_write(self.run_dir / "checkpoint.pt", lambda tmp: torch.save(state, tmp))
        atomic_write_json(self.run_dir / "status.json", {"state": "running", "epoch": epoch})

    def _summary(self, history: list[dict]) -> dict:
        last = max(e["epoch"] for e in history if "metrics" in e)
        final = {e["split"]: e["metrics"] for e in history if e.get("epoch") == last and "metrics" in e}
        train_losses = [e for e in history if e["split"] == "train_loss"]
        return {"run_id": self.run_id, "epoch": last, "final": final,
                "train_loss": train_losses[-1]["loss"] if train_losses else None,
                "config": self.cfg.to_dict()}


def _tracker_metrics(history: list[dict], epoch: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for rec in history:
        if rec.get("epoch") != epoch:
            continue
        if rec["split"] == "train_loss":
            out["train/loss"] = rec["loss"]
            out["train/images_per_s"] = rec["images_per_s"]
            continue
        m = rec["metrics"]
        s = rec["split"]
        if s == TUNING:
            for a, v in m["alpha"].items():
                out[f"{s}/alpha_{a}"] = v
            continue
        for k in ("accuracy", "mpa", "worst_class", "cell_mean", "worst_group", "ece"):
            if k in m:  # (ece, worst_class: not in the records of runs made before they were added)
                out[f"{s}/{k}"] = m[k]
        if s == "test":  # the paper's headline number, under its own name
            out["test/unbiased_accuracy"] = m["accuracy"]
        for f, fm in m["factors"].items():
            for k in ("majority", "minority", "mmd") + GAP_METRICS:
                if k in fm:  # (the gaps: not in the records of runs made before they were added)
                    out[f"{s}/{f}/{k}"] = fm[k]
    return out


def _save_npz(path: str, **arrays) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BiasbenchError(f"corrupt checkpoint {path} ({exc}); delete the run folder to start over") from None


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except Exception:
        return "unknown"
