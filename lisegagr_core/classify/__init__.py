"""The field / non-field classifier of the method (step 3): model, crops, data, training.

    classifier, header = load_classifier("weights/fields.pt", device="cuda")
    field_scores = classify_instances(tile_rgb, tile_labels, classifier)  # {id: P(field)}

`docs/classifier.md` gives the commands that build a crop dataset, train and evaluate.
"""

from lisegagr_core.classify.crops import (
    classify_instances,
    instance_boxes,
    instance_crops,
    normalise_crops,
    square_crops,
    square_windows,
)
from lisegagr_core.classify.dataset import (
    CombinedNegatives,
    CropDatasetReport,
    EngineNegatives,
    LabelledImage,
    NegativeSource,
    SuperpixelNegatives,
    build_crop_dataset,
    find_labelled_images,
    split_by_image,
)
from lisegagr_core.classify.model import (
    CLASS_NAMES,
    FIELD_INDEX,
    ClassifierConfig,
    FieldClassifier,
    build_classifier,
    colour_richness,
    load_classifier,
    rgb_to_hue,
    save_classifier,
)
from lisegagr_core.classify.train import (
    CropFolder,
    EpochMetrics,
    TrainingReport,
    binary_metrics,
    evaluate_classifier,
    train_classifier,
)

__all__ = [
    "CLASS_NAMES",
    "FIELD_INDEX",
    "ClassifierConfig",
    "CombinedNegatives",
    "CropDatasetReport",
    "CropFolder",
    "EngineNegatives",
    "EpochMetrics",
    "FieldClassifier",
    "LabelledImage",
    "NegativeSource",
    "SuperpixelNegatives",
    "TrainingReport",
    "binary_metrics",
    "build_classifier",
    "build_crop_dataset",
    "classify_instances",
    "colour_richness",
    "evaluate_classifier",
    "find_labelled_images",
    "instance_boxes",
    "instance_crops",
    "load_classifier",
    "normalise_crops",
    "rgb_to_hue",
    "save_classifier",
    "split_by_image",
    "square_crops",
    "square_windows",
    "train_classifier",
]
