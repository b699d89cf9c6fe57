"""Run configuration: a frozen dataclass that round-trips through JSON."""

from __future__ import annotations

import dataclasses

from nucleiseg.errors import UsageError

ENCODER_WEIGHTS = ("imagenet", "none")
MONITORS = ("val_loss", "val_foreground_iou", "val_accuracy")
TARGETS = {"binary": 2, "boundary": 3}  # target -> number of classes
SAMPLINGS = ("resize", "crops")
LR_SCHEDULES = ("constant", "cosine")
SIZE_MULTIPLE = 32  # the U-Net halves its input five times
# A fine-tune's learning rate when none is given: 5e-5 gained more on new images and forgot less
# than 1e-4 in the fine-tune benchmark (docs/training.md).
FINE_TUNE_LEARNING_RATE = 5e-5


def check_choice(name: str, value, choices) -> None:
    """Raise a UsageError listing the valid choices (MONAI's look_up_option, in small)."""
    if value not in choices:
        raise UsageError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


def check_image_size(size: int) -> None:
    """The encoder halves the size five times: it must be a positive multiple of 32."""
    if size < SIZE_MULTIPLE or size % SIZE_MULTIPLE:
        below = max(SIZE_MULTIPLE, size // SIZE_MULTIPLE * SIZE_MULTIPLE)
        above = below + SIZE_MULTIPLE if below <= size else below
        choices = sorted({below, above})
        raise UsageError(
            f"image size {size} is not a multiple of {SIZE_MULTIPLE}; nearest sizes that work: "
            + " or ".join(map(str, choices))
        )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a training run does; saved as the run's config.json."""

    image_size: int = 128  # network input in training: the resize size, or the crop size
    sampling: str = "resize"  # whole images resized to image_size, or random native crops
    target: str = "binary"  # background/nucleus, or background/interior/boundary
    boundary_weight: float = 1.0  # loss weight of the boundary class
    contact_weight: float = 1.0  # extra loss weight where two nuclei touch (crops only)
    encoder_weights: str = "none"
    freeze_encoder: bool = False
    # BatchNorm layers keep their statistics and scales (a fine-tune on a few images of a new
    # stain would otherwise move them away from everything else the model knew)
    freeze_batchnorm: bool = False
    encoder_alpha: float = 1.0
    decoder_filters: tuple[int, ...] = (512, 256, 128, 64)
    dropout: float = 0.0
    bn_momentum: float = 0.9
    epochs: int = 15
    steps_per_epoch: int | None = None  # None: one pass over the training images
    batch_size: int = 16  # images per training step, split evenly among the devices
    devices: int = 1  # replicas that train together: GPUs, or logical CPU devices without GPUs
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"
    val_fraction: float = 0.3
    seed: int = 123
    deterministic: bool = False  # deterministic TensorFlow ops: same seed, same weights (CPU)
    augment: bool = True
    zoom_augment: float = 1.0  # crops zoomed by a random factor in [1/zoom, zoom] (1: off)
    intensity_augment: bool = False  # random gain, contrast, brightness, gamma, inversion
    stain_augment: bool = False  # random haematoxylin/eosin amounts (colour crops)
    blur_noise_augment: bool = False  # random Gaussian blur and noise
    he_render_augment: bool = False  # a share of grey crops drawn as H&E-stained tissue
    pale_weight: float = 1.0  # loss weight of the paler half of a colour crop's nuclei
    data_shares: tuple[float, ...] | None = None  # share of the crops per --data folder
    early_stopping_monitor: str = "val_loss"
    early_stopping_patience: int = 5
    early_stopping_warmup_steps: int = 200  # no early stop before this many training steps
    minutes: float | None = None  # time budget: no epoch starts that would end past it

    def __post_init__(self):
        check_choice("encoder_weights", self.encoder_weights, ENCODER_WEIGHTS)
        check_choice("early_stopping_monitor", self.early_stopping_monitor, MONITORS)
        check_choice("target", self.target, tuple(TARGETS))
        check_choice("sampling", self.sampling, SAMPLINGS)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if self.freeze_encoder and self.encoder_weights == "none":
            raise UsageError(
                "--freeze-encoder needs pretrained encoder weights (--encoder-weights imagenet): "
                "a frozen, randomly initialised encoder cannot learn"
            )
        if not 0.0 < self.val_fraction < 1.0:
            raise UsageError(f"val_fraction must be between 0 and 1; got {self.val_fraction}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise UsageError(f"steps_per_epoch must be at least 1; got {self.steps_per_epoch}")
        if self.zoom_augment < 1.0:
            raise UsageError(f"zoom_augment must be at least 1 (1: off); got {self.zoom_augment}")
        for name in ("contact_weight", "pale_weight"):
            if getattr(self, name) <= 0:
                raise UsageError(f"{name} must be positive; got {getattr(self, name)}")
        if self.sampling != "crops" and (self.zoom_augment != 1.0 or self.intensity_augment
                                         or self.stain_augment or self.blur_noise_augment
                                         or self.he_render_augment
                                         or self.contact_weight != 1.0
                                         or self.pale_weight != 1.0):
            raise UsageError("zoom, intensity, stain, H&E, blur and noise augmentation and contact "
                             "and pale weights work on random crops: add --sampling crops")
        if self.minutes is not None and not self.minutes > 0:
            raise UsageError(f"minutes must be positive; got {self.minutes}")
        for name in ("epochs", "batch_size", "devices", "early_stopping_patience"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1; got {getattr(self, name)}")
        if self.batch_size % self.devices:
            raise UsageError(
                f"batch_size {self.batch_size} cannot be split evenly among {self.devices} "
                f"devices: use a multiple of {self.devices} (the batch size is the global "
                "batch, split among the devices)")
        object.__setattr__(self, "decoder_filters", tuple(int(f) for f in self.decoder_filters))
        if self.data_shares is not None:
            shares = tuple(float(f) for f in self.data_shares)
            if self.sampling != "crops" or not shares or min(shares) <= 0:
                raise UsageError("data_shares are positive numbers, one per --data folder, and "
                                 f"work on random crops (--sampling crops); got {shares}")
            object.__setattr__(self, "data_shares", shares)

    @property
    def num_classes(self) -> int:
        return TARGETS[self.target]

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["decoder_filters"] = list(self.decoder_filters)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k != "num_classes"}  # derived from target
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown configuration keys: {', '.join(unknown)}")
        return cls(**data)


# What a fine-tune takes from the model it starts from, unless its own command line says
# otherwise: the architecture (else the weights do not fit) and how its inputs were made.
RECIPE_FIELDS = ("image_size", "sampling", "target", "boundary_weight", "contact_weight",
                 "encoder_alpha", "decoder_filters", "dropout", "bn_momentum", "augment",
                 "zoom_augment", "intensity_augment", "stain_augment", "blur_noise_augment",
                 "pale_weight")


def option_name(field: str) -> str:
    """The train command's option for a TrainConfig field."""
    return "--no-augment" if field == "augment" else "--" + field.replace("_", "-")


def recipe_fields(recorded: dict, given: set[str]) -> dict:
    """The RECIPE_FIELDS of a starting model's recorded configuration, except those whose
    option is in `given` (the options the user wrote)."""
    return {field: recorded[field] for field in RECIPE_FIELDS
            if field in recorded and option_name(field) not in given}


def inherit_recipe(config: TrainConfig, recorded: dict, given: set[str]) -> TrainConfig:
    """`config` with the recipe of a starting model's recorded configuration (recipe_fields)."""
    return dataclasses.replace(config, **recipe_fields(recorded, given))

