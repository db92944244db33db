"""The training run: optimizer, schedule, checkpoints, resume, logging and validation.

A run lives in a folder: ``config.json`` (everything that defines the run), ``checkpoint/`` (model,
optimizers, step, RNG states, in parts under 16 MB, see ``checkpoint.py``; written every
``checkpoint_minutes``, at the end, and on SIGINT/SIGTERM),
``log.jsonl`` (one JSON object per logged step and per validation). ``--resume`` reloads the checkpoint and
continues exactly where it stopped: same step, optimizer moments, learning rate and random streams.

With ``average_steps`` the run also keeps an exponential moving average of the trained weights over about
that many steps (Polyak averaging). A run at a constant learning rate jitters around the minimum it
tracks; the average sits nearer its centre, and ``vaecodec export --average`` exports it, where a run
would otherwise need a copy trained on at a decayed learning rate.
"""

import json
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import UsageError
from ..model import HyperpriorVAE, ModelConfig, rate_distortion_loss
from . import checkpoint
from .data import IMAGE_SUFFIXES, CropPool, list_images, split_validation, validation_crops


@dataclass
class RunConfig:
    data: list
    steps: int = 100_000
    patch: int = 128
    batch: int = 8
    learning_rate: float = 2e-4
    decay_at: float = 0.85  # fraction of the steps after which the learning rate drops 10x
    decay_steps: int | None = None  # when set, the last this many steps run at the lower rate (not decay_at)
    quantile_learning_rate: float = 1e-3
    clip_norm: float = 1.0  # the main loss's gradient norm is clipped to this
    adam_epsilon: float = 1e-8  # Adam's ε, in units of the clipped gradient
    gray_fraction: float = 0.0  # share of training crops turned grayscale (see data.py)
    level_weighting: float = 0.5  # per-level loss weight (lambda_mid / lambda) ** this, see rate_distortion_loss
    average_steps: int = 0  # keep a moving average of the weights over about this many steps (0: none)
    seed: int = 0
    validation_images: int = 16
    validate_every: int = 1000
    log_every: int = 50
    checkpoint_minutes: float = 5.0
    pool_crop: int = 256
    crops_per_image: int = 4
    pool_steps: int = 4000
    threads: int = 2
    precision: str = "auto"  # "bf16" autocasts g_a and g_s; "fp32"; "auto" is bf16 where the hardware has it
    compile: bool = False  # run the training forward pass through torch.compile
    model: dict = field(default_factory=lambda: ModelConfig().to_dict())
    init: str = ""  # shipped weights this run started from, if any
    hardware: str = ""  # where it trained, for the model card
    notes: str = ""  # free text for the model card (changes made while the run went on)


    def learning_rate_at(self, step: int) -> float:
        decay_start = self.steps - self.decay_steps if self.decay_steps is not None else self.decay_at * self.steps
        return self.learning_rate * (0.1 if step >= decay_start else 1.0)


def describe_hardware(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, mixed precision"
    return f"{os.cpu_count()}-core CPU, {threads} threads"


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" or cpu_has_bf16() else "fp32"
    return precision


class WeightAverage:
    """An exponential moving average of some of a model's parameters, saved with the run's checkpoint as a
    dict of the parameters' state-dict names (the other entries of an averaged state come from the model)."""

    def __init__(self, model: torch.nn.Module, parameters: list):
        chosen = {id(p) for p in parameters}
        self.parameters = {name: p for name, p in model.named_parameters() if id(p) in chosen}
        self.average = {name: p.detach().clone() for name, p in self.parameters.items()}

    @torch.no_grad()
    def update(self, weight: float):
        for name, parameter in self.parameters.items():
            self.average[name].lerp_(parameter, weight)

    def state_dict(self) -> dict:
        return dict(self.average)

    def load_state_dict(self, state: dict):
        if state.keys() != self.average.keys():
            raise UsageError("the checkpoint's weight average does not match the run's model")
        for name, value in state.items():
            self.average[name].copy_(value)


class Trainer:
    def __init__(self, run_dir, config: RunConfig, device="cpu", resume=False, init_state=None, files=None):
        files = list_images(config.data) if files is None else files
        if not files:  # also what a folder of symbolic links to folders gives: the search does not follow them
            raise UsageError(f"no training images ({' '.join(sorted(IMAGE_SUFFIXES))}) in "
                             f"{', '.join(map(str, config.data))} or the folders under them")
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.device = torch.device(device)
        torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        self.model = HyperpriorVAE(ModelConfig(**config.model)).to(self.device)
        if init_state is not None:
            self.model.load_state_dict(init_state)
        self.model = self.model.to(memory_format=torch.channels_last)
        # compiling the forward function (not the module) keeps the state_dict's names, so checkpoints and
        # exports are the same with and without it
        self.forward = torch.compile(self.model) if config.compile else self.model
        # the latent codec's auxiliary parameters (the z prior's tail quantiles) train on their own loss alone
        auxiliary = self.model.latent_codec.auxiliary_parameters()
        # what the main loss trains, and the only gradients its clipping sees
        self.main_parameters = [p for p in self.model.parameters() if not any(p is a for a in auxiliary)]
        # a latent codec may ask for a larger learning rate for parameters it adds to a trained model (the
        # context networks of the channel-conditional codec, which start from zero)
        factors = getattr(self.model.latent_codec, "learning_rate_factors", dict)()
        groups = {}
        for parameter in self.main_parameters:
            groups.setdefault(factors.get(parameter, 1.0), []).append(parameter)
        self.optimizer = torch.optim.Adam([{"params": params, "lr_factor": factor} for factor, params in
                                           groups.items()], lr=config.learning_rate, eps=config.adam_epsilon)
        self.quantile_optimizer = torch.optim.Adam(auxiliary, lr=config.quantile_learning_rate)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.use_amp = resolve_precision(config.precision, self.device) == "bf16"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.device.type == "cuda")
        train_files, held_out = split_validation(files, config.validation_images)
        self.pool = CropPool(train_files, config.pool_crop, config.crops_per_image, config.pool_steps, config.seed,
                             device=self.device)
        self.validation = validation_crops(held_out) if held_out else None
        if not config.hardware:
            config.hardware = describe_hardware(self.device, config.threads)
        if resume:
            saved = self._load_checkpoint()
        else:
            saved = {}
            (self.run_dir / "config.json").write_text(json.dumps(asdict(config), indent=2))
        # the average starts from the weights the run starts or resumes with, unless the checkpoint kept one
        self.averaged = WeightAverage(self.model, self.main_parameters) if config.average_steps else None
        if self.averaged and "average" in saved:
            self.averaged.load_state_dict(saved["average"])
        self._stop_requested = False

    # -- checkpoints ---------------------------------------------------------------------------------
    def save_checkpoint(self):
        checkpoint.save({
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "quantile_optimizer": self.quantile_optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            **({"average": self.averaged.state_dict()} if self.averaged else {}),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }, self.run_dir)

    def _load_checkpoint(self) -> dict:
        state = checkpoint.load(self.run_dir, map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # the run's config, not the checkpoint, sets ε
            group["eps"] = self.config.adam_epsilon
        self.quantile_optimizer.load_state_dict(state["quantile_optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step = state["step"]
        return state

    # -- one optimizer step ------------------------------------------------------------------------------
    def train_step(self) -> dict:
        config = self.config
        x = self.pool.batch(self.step, config.batch, config.patch, self.generator, config.gray_fraction)
        levels = torch.randint(self.model.config.levels, (config.batch,), generator=self.generator).float()
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        levels = levels.to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = config.learning_rate_at(self.step) * group.get("lr_factor", 1.0)
        self.model.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
            output = self.forward(x, levels)
        losses = rate_distortion_loss(x, output, levels, self.model.config.lambdas, config.level_weighting)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        self.scaler.unscale_(self.optimizer)
        # Only the main parameters: the auxiliary step below leaves its gradient on the prior's tails, which
        # would otherwise enter this norm, and differ between a run that went on and one resumed in a new process.
        torch.nn.utils.clip_grad_norm_(self.main_parameters, config.clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.averaged:
            self.averaged.update(1 / config.average_steps)
        quantile_loss = self.model.latent_codec.auxiliary_loss()
        self.quantile_optimizer.zero_grad(set_to_none=True)
        quantile_loss.backward()
        self.quantile_optimizer.step()
        self.step += 1
        mse = losses["mse"].item()
        return {"step": self.step, "loss": losses["loss"].item(), "bpp": losses["bpp"].item(),
                "psnr": 10 * math.log10(1 / max(mse, 1e-10)), "quantile_loss": quantile_loss.item()}

    @torch.no_grad()
    def validate(self) -> dict:
        """bpp (model estimate) and PSNR of rounded latents on the held-out crops, per quality level."""
        self.model.eval()
        x = self.validation.to(self.device).contiguous(memory_format=torch.channels_last)
        result = {"step": self.step, "validation": {}}
        for level in range(self.model.config.levels):
            levels = torch.full((len(x),), float(level), device=self.device)
            output = self.model(x, levels)
            output["x_hat"] = output["x_hat"].clamp(0, 1)
            losses = rate_distortion_loss(x, output, levels, self.model.config.lambdas)
            result["validation"][level + 1] = {
                "bpp": round(losses["bpp"].item(), 4),
                "psnr": round(10 * math.log10(1 / losses["mse"].item()), 3)}
        return result

    def _log(self, record: dict):
        with open(self.run_dir / "log.jsonl", "a") as log:
            log.write(json.dumps(record) + "\n")

    def request_stop(self, *_):
        self._stop_requested = True

    def run(self, progress=None):
        """Train until config.steps; checkpoint periodically and on SIGINT/SIGTERM. Returns the last stats."""
        previous = {s: signal.signal(s, self.request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        last_checkpoint = time.monotonic()
        started, start_step = time.monotonic(), self.step
        stats = {}
        try:
            while self.step < self.config.steps and not self._stop_requested:
                stats = self.train_step()
                if self.step % self.config.log_every == 0:
                    elapsed = time.monotonic() - started
                    stats["steps_per_second"] = round((self.step - start_step) / max(elapsed, 1e-9), 3)
                    stats["time"] = round(time.time(), 1)
                    self._log(stats)
                if progress is not None:
                    progress(stats)
                if self.validation is not None and self.step % self.config.validate_every == 0:
                    self._log(self.validate())
                if time.monotonic() - last_checkpoint > 60 * self.config.checkpoint_minutes:
                    self.save_checkpoint()
                    last_checkpoint = time.monotonic()
            self.save_checkpoint()
        finally:
            self.pool.close()
            for s, handler in previous.items():
                signal.signal(s, handler)
        return stats
