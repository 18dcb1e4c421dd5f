"""Training, registering and evaluating the project's own small Segment Anything model.

    dataset = load_training_set(Path("../shared/data/agoro-naip"), 512, val_fraction=0.2, seed=0)
    result = train_sam(dataset, Path("weights/NAME.pt"), TrainConfig(), checkpoint_dir=...)
    register_model(Path("weights/manifest.json"), result.model_path, result.architecture)
    evaluation = evaluate_model(load_sam("NAME"), load_scenes(data, result.validation_names))

The recipe is ``MODEL_TRAINING.md`` of the shared docs; ``docs/model_training.md`` gives the
commands and their wall times.
"""

from lisegagr_core.training.card import model_card, write_model_card
from lisegagr_core.training.data import (
    AnnotatedScene,
    AnnotatedSource,
    TrainingImage,
    TrainingSet,
    find_annotated_images,
    load_scenes,
    load_training_set,
    read_scene,
    split_by_image,
    to_training_image,
)
from lisegagr_core.training.evaluation import (
    PIPELINES,
    EvaluationGrid,
    ModelEvaluation,
    PipelineScores,
    SettingsResult,
    evaluate_model,
    write_evaluation,
)
from lisegagr_core.training.registry import register_classifier, register_model
from lisegagr_core.training.results import (
    TrainingHistory,
    TrainingResult,
    card_path_of,
    save_fp16_state_dict,
    summary_path_of,
)
from lisegagr_core.training.settings import (
    FIELDS_256_CPU,
    FIELDS_512,
    TRAINING_ARCHITECTURES,
    AugmentSettings,
    TrainConfig,
    load_train_config,
)
from lisegagr_core.training.step import stack_training_images, train_step, validate
from lisegagr_core.training.trainer import initial_model, train_sam
from lisegagr_core.training.warm_start import warm_start, with_source_architecture

__all__ = [
    "FIELDS_256_CPU",
    "FIELDS_512",
    "PIPELINES",
    "TRAINING_ARCHITECTURES",
    "AnnotatedScene",
    "AnnotatedSource",
    "AugmentSettings",
    "EvaluationGrid",
    "ModelEvaluation",
    "PipelineScores",
    "SettingsResult",
    "TrainConfig",
    "TrainingHistory",
    "TrainingImage",
    "TrainingResult",
    "TrainingSet",
    "card_path_of",
    "evaluate_model",
    "find_annotated_images",
    "initial_model",
    "load_scenes",
    "load_train_config",
    "load_training_set",
    "model_card",
    "read_scene",
    "register_classifier",
    "register_model",
    "save_fp16_state_dict",
    "split_by_image",
    "stack_training_images",
    "summary_path_of",
    "to_training_image",
    "train_sam",
    "train_step",
    "validate",
    "warm_start",
    "with_source_architecture",
    "write_evaluation",
    "write_model_card",
]
