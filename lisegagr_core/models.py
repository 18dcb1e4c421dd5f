"""Segment Anything models: building one of an architecture, and loading checkpoints onto a device.

    loaded = load_sam("vit_b")              # a manifest name, verified against its sha256
    loaded = load_sam("weights/my_sam.pth")  # any SAM state dict; architecture inferred
    loaded = load_sam("tiny")               # seeded random weights, fast on a CPU, for tests

A model is built once per process and checkpoint and device, then reused. The architectures
are in `lisegagr_core.architectures`, the choice of device in `lisegagr_core.devices`, the
manifest and the checkpoint files in `lisegagr_core.weights`.
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Any, Literal

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from lisegagr_core.architectures import (
    ARCHITECTURES,
    TINY,
    TINY_MODEL_NAME,
    SamArchitecture,
    architecture_name,
)
from lisegagr_core.devices import resolve_device
from lisegagr_core.field_head import attach_field_head
from lisegagr_core.weights import (
    DEFAULT_MANIFEST_PATH,
    DEFAULT_WEIGHTS_DIR,
    CheckpointSpec,
    Manifest,
    WeightsError,
    choose_model,
    display_path,
    engine_settings,
    sha256_file,
    verify_checkpoint,
)

log = logging.getLogger(__name__)

# Where a loaded model's weights came from: seeded random (tiny), Meta's SAM release, a
# project-trained manifest entry, or a state dict file the manifest does not know.
ModelOrigin = Literal["random", "meta", "project", "file"]

_META_HOST = "dl.fbaipublicfiles.com"
_CHECKPOINT_SUFFIXES = (".pth", ".pt")
# SAM's pixel normalisation (ImageNet statistics in 0..255), as segment_anything builds it.
_PIXEL_MEAN = (123.675, 116.28, 103.53)
_PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class LoadedSam:
    """A SAM on its device, in eval mode, with where its weights came from.

    `settings` are AMG settings recorded with the model (empty for Meta's); treat them as
    read-only, the object is shared by every caller in the process.
    """

    name: str
    model: Sam = field(repr=False)
    device: torch.device
    checkpoint_sha256: str
    architecture: SamArchitecture
    settings: dict[str, Any]
    origin: ModelOrigin
    input_gsd_m: float | None = None
    """Metres of ground per input pixel the model was trained at (the manifest's), if known."""

    @property
    def engine_settings(self) -> dict[str, Any]:
        """The recorded settings as engine sections, for `config.load_config(model_settings=)`."""
        return engine_settings(self.settings)


def build_sam(arch: SamArchitecture) -> Sam:
    """A freshly initialised SAM of `arch`, as ``segment_anything.build_sam._build_sam`` does."""
    grid = arch.image_embedding_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=arch.encoder_depth,
            embed_dim=arch.encoder_embed_dim,
            img_size=arch.image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=arch.encoder_num_heads,
            patch_size=arch.vit_patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=arch.encoder_global_attn_indexes,
            window_size=arch.window_size,
            out_chans=arch.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(arch.image_size, arch.image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=arch.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=arch.decoder_depth,
                embedding_dim=arch.prompt_embed_dim,
                mlp_dim=arch.decoder_mlp_dim,
                num_heads=arch.decoder_num_heads,
            ),
            transformer_dim=arch.prompt_embed_dim,
            iou_head_depth=arch.iou_head_depth,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
        pixel_mean=list(_PIXEL_MEAN),
        pixel_std=list(_PIXEL_STD),
    )
    if arch.field_head_width:
        attach_field_head(sam, arch.field_head_width, arch.prompt_embed_dim)
    sam.eval()
    return sam


def build_tiny_sam(seed: int = 0) -> Sam:
    """A TINY SAM with weights drawn from `seed`: the same weights on every call.

    The weights are untrained, so masks are arbitrary; only their plumbing is real. Three
    changes to SAM's default initialisation make them usable in tests: the positional
    embeddings, which SAM zero-initialises, are drawn (normal, std 0.02); the decoder's
    attention weights are drawn wider (std 1.5 / sqrt(fan-in)) so that the prompt point
    moves the masks; and each transposed-convolution kernel of the mask upscaler is made
    flat over its 2x2 footprint, so masks are blobs rather than checkerboard speckle (which
    also keeps AMG's run-length bookkeeping cheap). The global random state is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = build_sam(TINY)
        with torch.no_grad():
            for name, parameter in sam.named_parameters():
                if name.endswith(("pos_embed", "rel_pos_h", "rel_pos_w")):
                    torch.nn.init.normal_(parameter, std=0.02)
            for parameter in sam.mask_decoder.transformer.parameters():
                if parameter.dim() == 2:
                    torch.nn.init.normal_(parameter, std=1.5 / parameter.shape[1] ** 0.5)
            for layer in sam.mask_decoder.output_upscaling:
                if isinstance(layer, torch.nn.ConvTranspose2d):
                    kernel = layer.weight
                    kernel.copy_(kernel.mean(dim=(2, 3), keepdim=True).expand_as(kernel))
    return sam


_CACHE: dict[tuple[str, str], LoadedSam] = {}
_CACHE_LOCK = threading.Lock()


def clear_model_cache() -> None:
    """Forget every loaded model (for tests, or to free GPU memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def load_sam(
    model: str,
    *,
    weights_dir: Path = DEFAULT_WEIGHTS_DIR,
    manifest: Manifest | None = None,
    device: str | torch.device | None = None,
) -> LoadedSam:
    """Load a SAM by name or path, once per process and device.

    `model` is ``tiny``, a manifest name (``vit_b``, ``vit_l``, ``vit_h``, a project-trained
    model), or the path of a ``.pth``/``.pt`` SAM state dict whose architecture is inferred
    from its shapes. Manifest checkpoints are looked up in `weights_dir` and verified against
    their sha256 first; a path whose sha256 is in the manifest takes that entry's name and
    settings. `manifest` defaults to the one in `weights_dir` (else the project's). Problems
    with a checkpoint raise WeightsError; a bad device raises InputError.
    """
    target = resolve_device(device)
    if model == TINY_MODEL_NAME:
        return _cached(f"{TINY_MODEL_NAME}-seed-0", target, lambda: _load_tiny(target))
    if not _looks_like_path(model):
        manifest = manifest or _manifest_for(weights_dir) or Manifest.load(DEFAULT_MANIFEST_PATH)
        if model in manifest.entries:
            spec = manifest.entries[model]
            return _cached(spec.sha256, target, lambda: _load_entry(spec, weights_dir, target))
        if not Path(model).is_file():
            choices = ", ".join([TINY_MODEL_NAME, *manifest.entries])
            raise WeightsError(
                f"{model!r} is neither a model name ({choices}) nor a checkpoint file"
            )
    return _load_path(Path(model), manifest or _manifest_for(weights_dir), target)


def load_chosen_sam(
    requested: str | None,
    weights_dir: Path = DEFAULT_WEIGHTS_DIR,
    device: str | torch.device | None = None,
) -> LoadedSam:
    """The SAM a command or a flow uses: the one `requested` (a name or a path), else the
    default (`weights.choose_model`), loaded and checked (`load_sam`)."""
    manifest = Manifest.load(weights_dir / "manifest.json")
    name = choose_model(requested, weights_dir, manifest)
    return load_sam(name, weights_dir=weights_dir, manifest=manifest, device=device)


def _manifest_for(weights_dir: Path) -> Manifest | None:
    """The manifest of `weights_dir`, else the project's, else None when neither exists."""
    for path in (weights_dir / "manifest.json", DEFAULT_MANIFEST_PATH):
        if path.is_file():
            return Manifest.load(path)
    return None


def model_description(loaded: LoadedSam) -> str:
    """One line saying what model this is, for logs and run records."""
    sha = f"sha256 {loaded.checkpoint_sha256[:8]}…"
    if loaded.origin == "random":
        return f"{loaded.name} (random weights, for tests; not a trained model)"
    if loaded.origin == "meta":
        return f"{loaded.name} (Meta SAM, {sha})"
    family = architecture_name(loaded.architecture)
    if loaded.origin == "project":
        return f"{loaded.name} (project-trained {family}, {sha})"
    return f"{loaded.name} ({family} state dict from a file, {sha})"


def infer_architecture(state: Mapping[str, torch.Tensor], path: Path) -> SamArchitecture:
    """The preset architecture a SAM state dict was saved from, told by its image encoder.

    The patch embedding's width and patch size, the number of encoder blocks and the
    positional-embedding grid must match a preset; otherwise WeightsError names `path`.
    """
    shown = display_path(path)
    patch_embed = state.get("image_encoder.patch_embed.proj.weight")
    if patch_embed is None or patch_embed.dim() != 4:
        raise WeightsError(
            f"{shown} is not a SAM state dict: it has no image_encoder.patch_embed.proj.weight"
        )
    width, patch = patch_embed.shape[0], patch_embed.shape[-1]
    depth = len({key.split(".")[2] for key in state if key.startswith("image_encoder.blocks.")})
    pos_embed = state.get("image_encoder.pos_embed")
    grid = pos_embed.shape[1] if pos_embed is not None and pos_embed.dim() == 4 else None
    for arch in ARCHITECTURES.values():
        if (
            arch.encoder_embed_dim == width
            and arch.encoder_depth == depth
            and arch.vit_patch_size == patch
            and grid in (None, arch.image_embedding_size)
        ):
            return arch
    raise WeightsError(
        f"{shown} holds a SAM image encoder {width} wide with {depth} blocks, which matches "
        f"none of {', '.join(ARCHITECTURES)}; give it an 'architecture' in weights/manifest.json"
    )


def _looks_like_path(model: str) -> bool:
    return model.endswith(_CHECKPOINT_SUFFIXES) or "/" in model or "\\" in model


def _cached(key: str, device: torch.device, load: Callable[[], LoadedSam]) -> LoadedSam:
    """The cached model for (`key`, `device`), loading it on a miss."""
    with _CACHE_LOCK:
        loaded = _CACHE.get((key, str(device)))
        if loaded is None:
            loaded = load()
            _CACHE[(key, str(device))] = loaded
    return loaded


def _load_tiny(device: torch.device) -> LoadedSam:
    sam = build_tiny_sam(seed=0).to(device).eval()
    log.info("built the tiny SAM (random weights, for tests) on %s", device)
    return LoadedSam(
        name=TINY_MODEL_NAME,
        model=sam,
        device=device,
        checkpoint_sha256=f"{TINY_MODEL_NAME}-seed-0",
        architecture=TINY,
        settings={},
        origin="random",
    )


def _load_entry(spec: CheckpointSpec, weights_dir: Path, device: torch.device) -> LoadedSam:
    path = weights_dir / spec.filename
    verify_checkpoint(spec, path)
    return _load_verified(path, spec.sha256, spec, device)


def _load_path(path: Path, manifest: Manifest | None, device: torch.device) -> LoadedSam:
    if not path.is_file():
        raise WeightsError(f"{display_path(path)} does not exist; pass a SAM .pth/.pt state dict")
    sha256 = sha256_file(path)
    spec = manifest.find_by_sha256(sha256) if manifest is not None else None
    return _cached(sha256, device, lambda: _load_verified(path, sha256, spec, device))


def _load_verified(
    path: Path, sha256: str, spec: CheckpointSpec | None, device: torch.device
) -> LoadedSam:
    """Build the model for the checkpoint at `path` (already hashed to `sha256`)."""
    started = time.perf_counter()
    state = _read_state_dict(path)
    if spec is None:
        arch = infer_architecture(state, path)
    elif spec.architecture is not None:
        arch = spec.architecture
    else:
        arch = ARCHITECTURES[spec.arch]
    sam = _sam_from_state_dict(arch, state, path).to(device).eval()
    origin: ModelOrigin = "file"
    if spec is not None:
        hostname = urllib.parse.urlsplit(spec.url).hostname if spec.url else None
        origin = "meta" if hostname == _META_HOST else "project"
    loaded = LoadedSam(
        name=spec.name if spec is not None else path.name,
        model=sam,
        device=device,
        checkpoint_sha256=sha256,
        architecture=arch,
        settings=dict(spec.settings) if spec is not None else {},
        origin=origin,
        input_gsd_m=spec.input_gsd_m if spec is not None else None,
    )
    seconds = time.perf_counter() - started
    log.info("loaded %s on %s in %.1f s", model_description(loaded), device, seconds)
    return loaded


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors saved at `path`, on the CPU, floating point upcast to float32."""
    shown = display_path(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):  # not a pickle at all: text, an image, ...
            raise WeightsError(
                f"{shown} is not a PyTorch checkpoint (torch.load cannot read it)"
            ) from err
        raise WeightsError(
            f"{shown} holds objects other than plain tensors, which lisegagr does not unpickle; "
            "save the model's state_dict() with torch.save"
        ) from err
    except Exception as err:  # torch.load raises many types for truncated or foreign files
        first_line = next(iter(str(err).splitlines()), "")[:120]
        detail = f"{type(err).__name__}: {first_line}" if first_line else type(err).__name__
        raise WeightsError(
            f"{shown} is not a readable PyTorch checkpoint (truncated or corrupt; {detail})"
        ) from err
    if not isinstance(raw, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items()
    ):
        raise WeightsError(f"{shown} does not hold a state dict of named tensors")
    return {
        key: tensor.float() if tensor.is_floating_point() else tensor for key, tensor in raw.items()
    }


def _sam_from_state_dict(arch: SamArchitecture, state: dict[str, torch.Tensor], path: Path) -> Sam:
    """A SAM of `arch` holding `state`, which must fit it key for key and shape for shape."""
    with torch.device("meta"):
        sam = build_sam(arch)
    expected = {key: tensor.shape for key, tensor in sam.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshapen = sorted(k for k in set(expected) & set(state) if state[k].shape != expected[k])
    if missing or unexpected or misshapen:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if misshapen:
            key = misshapen[0]
            problems.append(
                f"{len(misshapen)} wrong shapes (e.g. {key} is {list(state[key].shape)}, "
                f"not {list(expected[key])})"
            )
        raise WeightsError(
            f"{display_path(path)} does not fit the {architecture_name(arch)} architecture: "
            + ", ".join(problems)
        )
    sam.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in chain(sam.parameters(), sam.buffers())):
        raise RuntimeError(f"SAM built from {path} kept tensors on the meta device")
    return sam
