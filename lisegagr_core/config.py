"""Every setting of the LiSegAgr method in one validated object.

Defaults are the paper's (see ``docs/ALGORITHM.md`` in the shared docs). A run records the
settings it used (``EngineConfig.model_dump()``), and the tile hash of later stages is derived
from their canonical JSON, so a changed threshold invalidates exactly the results it affects.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lisegagr_core.errors import InputError

SettingsT = TypeVar("SettingsT", bound=BaseModel)

# Bump when a change to the engine changes its output for the same settings.
ALGORITHM_VERSION = "3"


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


#: Precision of a model part: auto is bf16 on CUDA and fp32 elsewhere.
Precision = Literal["auto", "fp32", "bf16", "fp16"]


class AmgSettings(_Settings):
    """Segment Anything's automatic mask generator (AMG) settings, as in `segment_anything`."""

    points_per_side: int = Field(32, ge=1)
    """Point prompts per side of the grid."""
    points_per_batch: int | None = Field(None, ge=1)
    """Point prompts decoded per batch; None: as many as the device holds (the fast
    generator, up to the whole grid) or 64 (segment_anything's generator)."""
    pred_iou_thresh: float = Field(0.88, ge=0.0, le=1.0)
    """Keep masks whose predicted IoU is above this."""
    stability_score_thresh: float = Field(0.95, ge=0.0, le=1.0)
    """Keep masks whose stability score is above this."""
    stability_score_offset: float = Field(1.0, gt=0.0)
    """Logit offset for the stability score."""
    box_nms_thresh: float = Field(0.7, ge=0.0, le=1.0)
    """Box IoU above which AMG drops duplicates."""
    crop_n_layers: int = Field(0, ge=0)
    """AMG's own multi-crop layers (0: whole image only)."""
    min_mask_region_area: int = Field(0, ge=0)
    """AMG's hole/island clean-up area (0: off)."""
    generator: Literal["fast", "segment-anything", "field-head"] = "fast"
    """`fast`: the same masks, filtered on low-resolution logits before upsampling and kept
    on the device (`lisegagr_core.fast_amg`); `segment-anything`: its own generator;
    `field-head`: not SAM's decoder but the instances of the model's dense field head (seeds
    grown to the head's boundaries, `lisegagr_core.field_maps`); the model needs a head."""
    prompts: Literal["grid", "field-head"] = "grid"
    """Where the fast generator prompts SAM: `grid`, the paper's `points_per_side` ×
    `points_per_side` lattice; `field-head`, one point at the deepest pixel of each field the
    model's field head sees (learned prompts; not on whitened pixels in later rounds)."""
    head_clip: bool = False
    """Fast generator: cut every SAM mask to the field head's extent (its edges are at full
    resolution, the decoder's at a quarter of the model's input); the model needs a head."""
    head_extent_thresh: float = Field(0.5, gt=0.0, lt=1.0)
    """Field head: a pixel is field where its extent probability exceeds this."""
    head_boundary_thresh: float = Field(0.4, gt=0.0, le=1.0)
    """Field head: a field's seed excludes pixels whose boundary probability reaches this."""
    head_opening_px: int = Field(1, ge=0)
    """Field head: binary opening (iterations of a cross) that cuts thin bridges between
    seeds."""
    head_min_seed_area: int = Field(100, ge=1)
    """Field head: seeds smaller than this (image pixels) are dropped."""
    head_mirror: bool = False
    """Field head: average its maps over the image and its left-right mirror (test-time
    augmentation; one more encoder pass per image)."""
    encoder_precision: Precision = "auto"
    """Image encoder precision of the fast generator; auto: bf16 on CUDA, fp32 elsewhere."""
    decoder_precision: Literal["fp32", "bf16"] = "fp32"
    """Fast generator: the mask decoder's precision. bf16 (CUDA) halves the decoder's time,
    which dominates a pass on a GPU, at the cost of masks that may differ at their edges."""
    compile_encoder: bool = False
    """Wrap the image encoder in torch.compile (pays off on CUDA over many tiles)."""
    prefilter_margin: float = Field(0.05, ge=0.0, le=1.0)
    """Fast generator: candidates whose low-resolution stability is within this of the
    threshold are upsampled and checked at full resolution; the rest are dropped."""
    skip_white_prompts: bool = False
    """Fast generator: do not decode grid points that fall on pure white pixels (255, 255,
    255), the areas whitening painted over in rounds 2–4. Their masks are mostly white and
    dropped by the white filters anyway; skipping them saves decoder time (see docs/speed.md
    for the measured change in results). Off: every grid point is decoded, as the paper."""

    def segment_anything_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `SamAutomaticMaskGenerator` these settings stand for."""
        ours = {
            "generator",
            "prompts",
            "head_clip",
            "head_extent_thresh",
            "head_boundary_thresh",
            "head_opening_px",
            "head_min_seed_area",
            "head_mirror",
            "encoder_precision",
            "decoder_precision",
            "compile_encoder",
            "prefilter_margin",
            "skip_white_prompts",
        }
        kwargs = self.model_dump(exclude=ours)
        if kwargs["points_per_batch"] is None:
            kwargs["points_per_batch"] = 64
        return kwargs


class WhiteningSettings(_Settings):
    """How a tile is whitened between rounds to show only what is still unsegmented."""

    mask_dilation_px: int = Field(3, ge=0)
    """Kept masks are dilated this far (city-block radius: a diamond, as three binary
    dilations with a cross) before they are painted white. Reference-frame pixels."""
    residue_max_area: float = Field(200.0, ge=0)
    """Dark specks (external contours of the Otsu-inverted grey image) under this area go.
    Reference-frame pixels."""
    dark_region_min_area: int = Field(1000, ge=0)
    """Dark regions (scikit-image grey below Otsu, 4-connected) under this area are painted
    white. Reference-frame pixels."""
    bright_threshold: int = Field(200, ge=0, le=255)
    """Pixels whose three channels are all above this are painted white."""
    edge_erase_from_round: int = Field(4, ge=2)
    """From the whitening that prepares this round on, strong edges are erased first (the
    reference erases them only in the image fed to round 4, its last)."""
    edge_canny_low: int = Field(100, ge=0)
    edge_canny_high: int = Field(200, ge=0)
    edge_dilate_kernel: int = Field(5, ge=1)
    """Side of the square kernel that dilates the Canny edges."""
    edge_dilate_iterations: int = Field(3, ge=0)
    edge_blur_kernel: int = Field(21, ge=1)
    """Gaussian kernel (odd) over the dilated edges; where it saturates, pixels are erased."""

    @model_validator(mode="after")
    def _odd_blur(self) -> WhiteningSettings:
        if self.edge_blur_kernel % 2 == 0:
            raise ValueError("edge_blur_kernel must be odd")
        return self


class RoundSettings(_Settings):
    """Iterative segmentation: up to `max_rounds` AMG passes over ever whiter tiles."""

    max_rounds: int = Field(4, ge=1, le=16)
    min_unsegmented_fraction: float = Field(0.05, ge=0.0, le=1.0)
    """Another round runs while at least this share of the whitened tile is not white."""
    round2_white_drop: float = Field(0.5, gt=0.0, le=1.0)
    """Round 2 drops a mask when this share of its pixels or more is white."""
    later_white_drop: float = Field(0.9, gt=0.0, le=1.0)
    """Rounds 3 and later drop a mask when this share of its pixels or more is white."""
    merge_iou: float = Field(0.8, ge=0.0, le=1.0)
    """Pooled masks overlapping above this IoU: the smaller is dropped."""
    whitening: WhiteningSettings = WhiteningSettings()


class RefineSettings(_Settings):
    """Refined segmentation: under-segmented large masks are cut again."""

    enabled: bool = True
    min_area: int = Field(10_000, ge=0)
    """Only masks larger than this are candidates. Reference-frame pixels."""
    edge_ratio_thresh: float = Field(0.4, ge=0.0, le=1.0)
    """Share of edge pixels off the mask's outline above which a mask is suspect."""
    entropy_thresh: float = Field(6.0, ge=0.0, le=8.0)
    """Mean RGB histogram entropy (bits) above which a mask is suspect."""
    canny_low: int = Field(100, ge=0)
    canny_high: int = Field(100, ge=0)
    blur_kernel: int = Field(5, ge=1)
    """Gaussian blur (odd) before Canny."""
    outline_thickness: int = Field(3, ge=1)
    """Width of the mask's own outline, whose edges do not count."""
    crop_white_drop: float = Field(0.9, gt=0.0, le=1.0)
    """Masks of a refinement crop this white or more are dropped."""
    refined_dedup_iou: float = Field(0.9, ge=0.0, le=1.0)
    """Refined masks overlapping above this IoU: the smaller is dropped."""
    final_dedup_iou: float = Field(0.6, ge=0.0, le=1.0)
    """Step-1 and refined masks overlapping above this IoU: the smaller is dropped."""

    @model_validator(mode="after")
    def _odd_blur(self) -> RefineSettings:
        if self.blur_kernel % 2 == 0:
            raise ValueError("blur_kernel must be odd")
        return self


class EmptyGroundSettings(_Settings):
    """Areas without texture (water, shadow, zero-filled margins) are never segmented
    (`lisegagr_core.empty_ground`)."""

    enabled: bool = True
    max_std: float = Field(0.3, ge=0.0)
    """A pixel is empty when every channel's standard deviation over its window is below
    this (8-bit levels)."""
    window_px: int = Field(9, ge=3)
    """Side of the square window (px, made odd)."""
    min_area: int = Field(2500, ge=1)
    """Connected empty areas smaller than this are ignored. Reference-frame pixels."""


class ReferenceFrame(_Settings):
    """The frame the method's pixel thresholds are stated in, and its scale to working pixels.

    The reference scripts resize every image to `side_px` × `side_px` (aspect ignored), made
    from 4× super-resolved imagery, and state every area and length in pixels of that frame.
    Here those thresholds keep their paper values, in frame pixels, and each image or tile
    converts them to its own pixels with `scale` (`EngineConfig.in_working_pixels`).
    """

    side_px: int = Field(1000, ge=1)
    """Side of the reference frame (px)."""
    scale: float | None = Field(None, gt=0.0)
    """Frame pixels per working pixel (linear; areas scale by its square). None: the image is
    the whole frame, as in the reference: sqrt(side² / (H·W)), 1 for a 1000×1000 image.
    Tiled runs record `side_px / tile side`: each tile is one of the paper's images (chosen by
    measurement, docs/method.md)."""

    def area_scale_for(self, shape: tuple[int, int]) -> float:
        """Frame pixels per working pixel, squared (the scale of areas), for an (H, W) image."""
        if self.scale is not None:
            return self.scale * self.scale
        height, width = shape
        return self.side_px * self.side_px / (height * width)


class EngineConfig(_Settings):
    """The whole method: AMG, rounds with whitening, refinement and the final partition."""

    amg: AmgSettings = AmgSettings()
    rounds: RoundSettings = RoundSettings()
    refine: RefineSettings = RefineSettings()
    min_component_area: int = Field(50, ge=1)
    """Connected components under this area are dropped. Reference-frame pixels."""
    empty_ground: EmptyGroundSettings = EmptyGroundSettings()
    """Textureless areas (water, shadow, zero-filled margins) are never part of a field."""
    working_size: int | None = Field(1000, ge=64)
    """Longer side (px) images are resized to, as the paper does; None keeps their size."""
    frame: ReferenceFrame = ReferenceFrame()
    """The frame of the pixel thresholds and its scale to the working resolution."""

    def in_working_pixels(self, shape: tuple[int, int]) -> EngineConfig:
        """These settings with every area and length threshold in pixels of an (H, W) image.

        With s frame pixels per working pixel, an area threshold A becomes A / s² and a length
        L becomes L / s; integer thresholds are rounded so that the comparison on integer
        areas is the exact one (≥ A/s² ⇔ ≥ ceil, > A/s² ⇔ > floor). The result's scale is 1.
        """
        area = self.frame.area_scale_for(shape)
        if area == 1.0:
            return self
        s = math.sqrt(area)
        whitening = self.rounds.whitening
        return self.model_copy(
            update={
                "rounds": self.rounds.model_copy(
                    update={
                        "whitening": whitening.model_copy(
                            update={
                                "mask_dilation_px": math.floor(
                                    whitening.mask_dilation_px / s + 0.5
                                ),
                                "residue_max_area": whitening.residue_max_area / area,
                                "dark_region_min_area": math.ceil(
                                    whitening.dark_region_min_area / area
                                ),
                            }
                        )
                    }
                ),
                "refine": self.refine.model_copy(
                    update={"min_area": math.floor(self.refine.min_area / area)}
                ),
                "min_component_area": max(1, math.ceil(self.min_component_area / area)),
                "empty_ground": self.empty_ground.model_copy(
                    update={"min_area": max(1, math.ceil(self.empty_ground.min_area / area))}
                ),
                "frame": self.frame.model_copy(update={"scale": 1.0}),
            }
        )


class RegionConfig(_Settings):
    """A run over rasters of any size: ingestion, the tile grid, the engine, the merge."""

    engine: EngineConfig = EngineConfig(working_size=None)
    """The method per tile. Tiles are already SAM-sized: `working_size` must stay None."""
    bands: tuple[int, ...] | None = None
    """1-based bands read as RGB (one band is read as grey); None: bands 1–3."""
    bbox: tuple[float, float, float, float] | None = None
    """Map only this box of the sources: minx, miny, maxx, maxy in their CRS (None: all)."""
    upscale: int = Field(1, ge=1, le=16)
    """Super-resolution factor at ingestion (the output grid's pixels are this much smaller)."""
    upscale_model: str | None = None
    """A super-resolution weights file (spandrel: e.g. Real-ESRGAN x4plus); None: Lanczos."""
    core: int = Field(896, ge=64)
    """Tile core side (px): cores tile the raster without overlap; Zarr chunks equal it."""
    halo: int = Field(64, ge=0)
    """Pixels each tile also reads on every side, so fields at a border are seen whole."""
    tiles_per_task: int = Field(1, ge=1, le=64)
    """Tiles one segmentation task takes: they go through SAM together, several per encoder
    call. 1 on CPUs (nothing to gain); 4–8 on GPU workers. Results do not depend on it."""
    classifier: str | None = None
    """Field / non-field classifier file (`lisegagr classifier train`); None: unclassified."""
    merge_min_iou: float = Field(0.5, gt=0.0, le=1.0)
    """Instances of two tiles whose IoU inside the shared strip reaches this are one field."""
    merge_min_share: float = Field(0.8, gt=0.0, le=1.0)
    """... or whose shared pixels cover this share of the smaller of the two, in the strip."""

    @field_validator("bbox")
    @classmethod
    def _box_has_an_area(
        cls, value: tuple[float, float, float, float] | None
    ) -> tuple[float, float, float, float] | None:
        if value is not None and not (value[0] < value[2] and value[1] < value[3]):
            raise ValueError("bbox is minx, miny, maxx, maxy with minx < maxx and miny < maxy")
        return value

    @field_validator("engine", mode="before")
    @classmethod
    def _tiles_are_not_resized(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {"working_size": None, **value}
        return value

    @model_validator(mode="before")
    @classmethod
    def _tile_scale(cls, data: Any) -> Any:
        """Record the scale of the thresholds at the tiles' resolution, unless one is given.

        A tile (`core` + 2 × `halo` px a side, SAM's input) is one image of the paper, whose
        scripts state thresholds in pixels of a `side_px` frame every image is resized to.
        """
        if not isinstance(data, dict):
            return data
        core, halo = data.get("core", 896), data.get("halo", 64)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (core, halo)):
            return data  # field validation reports it
        tile = core + 2 * halo
        if tile <= 0:
            return data
        engine = data.get("engine", EngineConfig(working_size=None))
        if isinstance(engine, EngineConfig):
            if engine.frame.scale is not None:
                return data
            frame = engine.frame
            scaled = frame.model_copy(update={"scale": frame.side_px / tile})
            return {**data, "engine": engine.model_copy(update={"frame": scaled})}
        if isinstance(engine, dict):
            frame_values = engine.get("frame", {})
            if not isinstance(frame_values, dict) or frame_values.get("scale") is not None:
                return data
            side = frame_values.get("side_px", ReferenceFrame().side_px)
            if not isinstance(side, int | float):
                return data
            frame_values = {**frame_values, "scale": side / tile}
            return {**data, "engine": {**engine, "frame": frame_values}}
        return data

    @model_validator(mode="after")
    def _tile_sized(self) -> RegionConfig:
        if self.engine.working_size is not None:
            raise ValueError(
                "engine.working_size must be null for tiled runs (tiles are SAM-sized)"
            )
        if self.bands is not None and len(self.bands) not in (1, 3):
            raise ValueError("bands must name one or three bands")
        return self

    def segmentation_settings(self, model_id: str) -> dict[str, object]:
        """What changes a tile's segmentation: the input of its cache key besides pixels."""
        return {"model": model_id, "engine": self.engine.model_dump(mode="json")}


def _read_settings_file(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such configuration file.") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML or JSON ({exc.__class__.__name__}).") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise InputError(f"{path}: a configuration must be a mapping of settings.")
    return loaded or {}


def _load(
    cls: type[SettingsT],
    path: str | Path | None,
    overrides: dict[str, Any] | None,
    model_settings: dict[str, Any] | None,
    engine_key: tuple[str, ...],
) -> SettingsT:
    data = _read_settings_file(Path(path)) if path is not None else {}
    engine = data
    for key in engine_key:
        engine = engine.setdefault(key, {})
    for section, values in (model_settings or {}).items():
        if isinstance(values, dict):
            engine[section] = {**values, **engine.get(section, {})}
        else:
            engine.setdefault(section, values)
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        where = str(path) if path is not None else "the command line"
        problems = [
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()[:3]
        ]
        raise InputError(f"{where}: invalid settings ({'; '.join(problems)}).") from None


def load_config(
    path: str | Path | None,
    overrides: dict[str, Any] | None = None,
    *,
    model_settings: dict[str, Any] | None = None,
) -> EngineConfig:
    """Engine settings from, in rising precedence: the paper's defaults, the settings recorded
    with the model (e.g. AMG thresholds tuned for it), a YAML/JSON file, and dotted overrides
    such as ``{"amg.points_per_side": 16}`` from the command line.
    """
    return _load(EngineConfig, path, overrides, model_settings, ())


def load_region_config(
    path: str | Path | None,
    overrides: dict[str, Any] | None = None,
    *,
    model_settings: dict[str, Any] | None = None,
) -> RegionConfig:
    """`RegionConfig` by the same precedence; the model's settings go under ``engine``."""
    return _load(RegionConfig, path, overrides, model_settings, ("engine",))
