"""Nucleus size: what a model was trained on, what an image holds, and the scale between them;
and the per-image checks that say when a result is not to be trusted."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

# An image whose typical diameter is within these factors of the training size is segmented as
# it is: the training crops were zoomed at least this much, so the model has seen such nuclei.
# Nuclei larger than the training size by more than SCALE_TOLERANCE are shrunk, smaller ones
# enlarged beyond UPSCALE_TOLERANCE (a wider upscale band, tried to save second passes, lost
# on shrunken images: docs/robustness.md). Once resized, a pass is redone while it is more
# than SCALE_TOLERANCE off.
SCALE_TOLERANCE = 1.25
UPSCALE_TOLERANCE = 1.25
SCALE_LIMITS = (0.25, 4.0)  # the most an image is resized either way
# Nuclei the model sees within this factor of the training size are within what it was trained
# on (the DSB training images' own per-image median diameters span 0.55x to 2.4x the median);
# beyond, even after resizing, a warning says so.
HANDLED_FACTOR = 2.5
MIN_NUCLEI_FOR_ESTIMATE = 3
# Calibrated on the bundled model (docs/robustness.md): held-out DSB images stay above 0.85 and
# below 0.35; MoNuSeg H&E tiles and dim, noisy images fall outside.
LOW_CONFIDENCE = 0.8  # mean P(nucleus) over the pixels called nucleus (P > 0.5)
HIGH_UNCERTAINTY = 0.5  # share of the likely-nucleus pixels (P >= 0.25) below P 0.75
# When the first pass is unsure of what it found (often fragments of nuclei it does not know,
# e.g. pale H&E), its diameter estimate is weak evidence: upscaling is limited to this, and
# the diameter is taken area-weighted, so that many small fragments do not outvote the rest.
UNSURE_UPSCALE_LIMIT = 2 ** 0.5


def equivalent_diameters(labels: np.ndarray) -> np.ndarray:
    """Diameter of the circle of the same area, per nucleus (labels 1..N), in pixels."""
    areas = np.bincount(np.asarray(labels).ravel())[1:]
    return np.sqrt(4 * areas[areas > 0] / np.pi)


def training_nucleus_size(label_images) -> dict:
    """The nucleus size a model is trained on, for its record: the median equivalent diameter
    over all training nuclei, and the 10th / 90th percentiles of the per-image medians (how
    much the training images vary)."""
    per_image, every = [], []
    for labels in label_images:
        diameters = equivalent_diameters(labels)
        if diameters.size:
            per_image.append(float(np.median(diameters)))
            every.append(diameters)
    if not every:
        raise ValueError("no nuclei in the training labels")
    p10, p90 = np.percentile(per_image, (10, 90))
    return {"median_diameter": round(float(np.median(np.concatenate(every))), 2),
            "image_median_p10": round(float(p10), 2), "image_median_p90": round(float(p90), 2),
            "images": len(per_image)}


def typical_diameter(labels: np.ndarray, weighting: str = "count") -> tuple[float | None, int]:
    """(typical equivalent diameter of the nuclei in `labels`, how many there are); None when
    there are too few to say. `weighting` "count": the median over nuclei; "area": the
    diameter of the nucleus the median nucleus pixel lies in, so that many small fragments
    (noise, debris) do not outvote the nuclei around them. On 60 training images and shifted
    copies the two were within 0.02 AP@0.5 of each other, count ahead on native and 0.5x
    images, area on 3x and noisy ones (scripts/tune_scale_tolerance.py, docs/robustness.md):
    "count" is the default."""
    diameters = equivalent_diameters(labels)
    if diameters.size < MIN_NUCLEI_FOR_ESTIMATE:
        return None, int(diameters.size)
    if weighting == "count":
        return float(np.median(diameters)), int(diameters.size)
    order = np.sort(diameters)
    cumulative = np.cumsum(order**2)  # area goes with the diameter squared
    return float(order[np.searchsorted(cumulative, cumulative[-1] / 2)]), int(diameters.size)


SCALE_STEPS_PER_OCTAVE = 8  # scales are powers of 2^(1/8): about 9% apart


def within_tolerance(factor: float) -> bool:
    """Whether resizing by `factor` is too small a change to be worth a second pass."""
    return 1 / SCALE_TOLERANCE <= factor <= UPSCALE_TOLERANCE


def scale_for(diameter: float | None, training_diameter: float) -> float:
    """Resize factor that brings nuclei of `diameter` to the training size: 1 within the
    tolerances (or when nothing is known), else training / diameter rounded to a power
    of 2^(1/8) and kept inside SCALE_LIMITS. The rounding makes the result stable: engines or
    thread counts whose probabilities differ in the last digits estimate diameters that differ
    a little, and would otherwise resize the image by a slightly different factor."""
    if diameter is None or diameter <= 0:
        return 1.0
    factor = training_diameter / diameter
    if within_tolerance(factor):
        return 1.0
    steps = round(math.log2(factor) * SCALE_STEPS_PER_OCTAVE)
    return float(np.clip(2.0 ** (steps / SCALE_STEPS_PER_OCTAVE), *SCALE_LIMITS))


def is_unsure(confidence: float | None, uncertain: float | None) -> bool:
    """Whether a pass's own probabilities say it is unsure of what it calls nucleus."""
    return ((confidence is not None and confidence < LOW_CONFIDENCE)
            or (uncertain is not None and uncertain > HIGH_UNCERTAINTY))


def guarded_scale(labels: np.ndarray, training_diameter: float, unsure: bool,
                  upscale_limit: float = SCALE_LIMITS[1]) -> tuple[float, float | None, str]:
    """(scale, diameter it rests on, note) from a first pass's labels. A sure pass: the
    count-median diameter, any scale within SCALE_LIMITS. An unsure one: the area-weighted
    diameter, and never more than UNSURE_UPSCALE_LIMIT up; the note says so when that
    limit or `upscale_limit` bites, else it is ''."""
    diameter, _ = typical_diameter(labels, "area" if unsure else "count")
    suggested = scale_for(diameter, training_diameter)
    wanted = min(suggested, upscale_limit)
    if unsure and wanted > UNSURE_UPSCALE_LIMIT:
        return (UNSURE_UPSCALE_LIMIT, diameter,
                f"first pass unsure: upscaling limited to {UNSURE_UPSCALE_LIMIT:.2f}x (it "
                f"suggested {wanted:.2f}x from nuclei of about {diameter:.0f} px; pass "
                "--diameter if you know their size)")
    if suggested > wanted:
        return (wanted, diameter, f"upscaling limited to {wanted:.2f}x (it suggested "
                f"{suggested:.2f}x from nuclei of about {diameter:.0f} px; pass --diameter if "
                "you know their size)")
    return wanted, diameter, ""


def scaled_sizes(sizes: dict, scale: float) -> dict:
    """Pixel-count thresholds tuned at the training size, for an image resized by `scale`
    whose result is measured at its own size (areas go with 1 / scale²)."""
    return {key: max(1, round(value / scale**2)) for key, value in sizes.items()}


@dataclasses.dataclass(frozen=True)
class ImageCheck:
    """What prediction learned about one image, for summary.csv and the warnings."""

    diameter: float | None = None  # typical nucleus diameter in the image's own pixels
    scale: float = 1.0  # the factor the image was resized by for the model
    confidence: float | None = None  # mean P(nucleus) over the pixels called nucleus
    uncertain: float | None = None  # share of likely-nucleus pixels with P between 0.25, 0.75
    warning: str = ""
    unsure: bool = False  # --diameter auto's first pass was unsure: its size was weak evidence

    def row(self) -> dict:
        def rounded(value, digits):
            return "" if value is None else round(value, digits)

        return {"diameter": rounded(self.diameter, 1), "scale": round(self.scale, 4),
                "confidence": rounded(self.confidence, 3),
                "uncertain": rounded(self.uncertain, 3), "warning": self.warning}


CHECK_COLUMNS = ("diameter", "scale", "confidence", "uncertain", "warning")


def confidence_figures(probabilities: np.ndarray):
    """(mean P(nucleus) over the pixels with P(nucleus) > 0.5, share of the pixels with
    P(nucleus) ≥ 0.25 that lie below 0.75) from uint8 class probabilities (channel 0:
    background), by one histogram; None where no pixel qualifies."""
    counts = np.bincount((255 - probabilities[..., 0]).ravel(), minlength=256)
    called = counts[128:].sum()
    confidence = float(counts[128:] @ np.arange(128, 256) / called / 255) if called else None
    likely = counts[64:].sum()  # P >= 0.25
    uncertain = float(counts[64:192].sum() / likely) if likely else None
    return confidence, uncertain


def warning_for(check: ImageCheck, training_diameter: float | None, nuclei: int) -> str:
    """One line for an image whose result is not to be trusted, else ''."""
    problems = []
    if check.diameter is not None and training_diameter:
        # the size the model saw them at, after resizing, against the sizes it was trained on
        factor = check.diameter * check.scale / training_diameter
        if not 1 / HANDLED_FACTOR <= factor <= HANDLED_FACTOR:
            size = "large" if factor > 1 else "small"
            low, high = training_diameter / SCALE_LIMITS[1], training_diameter / SCALE_LIMITS[0]
            problems.append(f"nuclei too {size} for the model (about {check.diameter:.0f} px "
                            f"across; it handles about {low / HANDLED_FACTOR:.0f}-"
                            f"{high * HANDLED_FACTOR:.0f} px)")
    if nuclei == 0:
        problems.append("no nuclei found")
    else:
        if check.confidence is not None and check.confidence < LOW_CONFIDENCE:
            problems.append(f"the model is unsure of what it calls nucleus (mean probability "
                            f"{check.confidence:.2f})")
        elif check.uncertain is not None and check.uncertain > HIGH_UNCERTAINTY:
            problems.append(f"{check.uncertain:.0%} of the likely nucleus area is at the edge "
                            "of the decision")
    return "; ".join(problems)


def combine_checks(checks) -> dict:
    """One summary row for the planes of a stack (each checked on its own): median diameter,
    scale and confidence figures; each distinct warning once, with how many planes had it."""
    checks = list(checks)
    if len(checks) == 1:
        return checks[0].row()

    def median(values):
        values = [v for v in values if v is not None]
        return float(np.median(values)) if values else None

    warnings: dict[str, int] = {}
    for check in checks:
        if check.warning:
            warnings[check.warning] = warnings.get(check.warning, 0) + 1
    warning = "; ".join(f"{text} ({n} of {len(checks)} planes)" for text, n in warnings.items())
    return ImageCheck(median(c.diameter for c in checks), median(c.scale for c in checks),
                      median(c.confidence for c in checks), median(c.uncertain for c in checks),
                      warning).row()
