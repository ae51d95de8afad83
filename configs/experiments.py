"""The experiments of the reproduction, as data: which runs make each of the paper's tables, the
schedule study's models, where the recipe search starts and what it tries, and the paper's own
ImageNet figures that the reports set beside ours.

Kept here, beside the configs that train each run, so that changing an experiment is an edit of
data, not of the tools that run it (tools.sweep, tools.tune, tools.report, tools.export).
"""

# The paper's 224 px, scaled to what a 2-core CPU can afford: 224/192/160/128 become
# 128/112/96/80.
BASE_RESOLUTION = 128

# The rows of the paper's Tables 4-7 on Imagenette, in the order they train: each a
# configs/<variant>.py run at `alpha`, `resolution` (default BASE_RESOLUTION) and `seed`
# (default 0).
TABLES = {
    # Table 4: standard against depthwise-separable convolutions, two seeds each.
    "table4": ({"variant": "conv"}, {"variant": "conv", "seed": 1},
               {"variant": "dws"}, {"variant": "dws", "seed": 1}),
    # Table 5: narrower against shallower, at about the same cost, two seeds each.
    "table5": ({"variant": "dws", "alpha": 0.75}, {"variant": "shallow"},
               {"variant": "dws", "alpha": 0.75, "seed": 1}, {"variant": "shallow", "seed": 1}),
    # Table 6: the width multiplier, two seeds each.
    "table6": tuple({"variant": "dws", "alpha": alpha, "seed": seed}
                    for seed in (0, 1) for alpha in (1.0, 0.75, 0.5, 0.25)),
    # Table 7: the resolution multiplier (224/192/160/128 px scaled to 128/112/96/80), two seeds.
    "table7": tuple({"variant": "dws", "alpha": 1.0, "resolution": resolution, "seed": seed}
                    for seed in (0, 1) for resolution in (128, 112, 96, 80)),
}

# The schedule study's models at BASE_RESOLUTION, by the names `sweep schedule --variants` takes:
# MobileNet-1.0, Shallow MobileNet and Conv MobileNet (the default three), and 0.75 MobileNet,
# the other side of Table 5: {name: (variant, alpha)}, the models whose Table 4 and 5
# comparisons may turn with the length of training.
STUDY_MODELS = {"dws": ("dws", 1.0), "shallow": ("shallow", 1.0), "conv": ("conv", 1.0),
                "dws_a0.75": ("dws", 0.75)}
STUDY_DEFAULT = ("dws", "shallow", "conv")

# The recipe search (tools.tune): MobileNet-1.0 trained on 90% of each training class and
# scored on the other tenth; the validation split is never read.
SEARCH_CONFIG_FILE = "configs/dws.py"
HELD_OUT = {"data.train_split": "train[:90%]", "data.eval_split": "train[90%:]"}
# Where the search starts: the recipe before tuning, pinned here so that a later change of
# configs/base.py (the winner, say) does not change what these runs mean.
SEARCH_START = {
    "optimizer.name": "sgd", "optimizer.learning_rate": 0.4, "optimizer.schedule": "warmup_cosine",
    "optimizer.weight_decay": 5e-5, "optimizer.label_smoothing": 0.1, "model.dropout_rate": 0.2,
    "data.min_area": 0.25, "train.global_batch_size": 64, "optimizer.ema_decay": 0.0,
}
SEARCH_LEARNING_RATES = (0.2, 0.4, 0.8, 1.6)  # peak, per 256 images (scaled linearly with batch)
# Stage 2: each factor's changes, tried one at a time from stage 1's best.
SEARCH_FACTORS = {
    "schedule": ({"optimizer.schedule": "flat_cosine"},),
    # TensorFlow's RMSprop as the paper trained; AdamW at its usual rate and decoupled decay.
    "optimizer": ({"optimizer.name": "rmsprop"},
                  {"optimizer.name": "adamw", "optimizer.learning_rate": 0.004,
                   "optimizer.weight_decay": 0.05}),
    "weight decay": ({"optimizer.weight_decay": 1e-5}, {"optimizer.weight_decay": 2e-4}),
    "label smoothing": ({"optimizer.label_smoothing": 0.0},),
    "dropout": ({"model.dropout_rate": 0.0},),
    "crop area": ({"data.min_area": 0.08}, {"data.min_area": 0.5}),
    "batch size": ({"train.global_batch_size": 32}, {"train.global_batch_size": 128}),
    "EMA": ({"optimizer.ema_decay": 0.995},),
}

# ImageNet rows of Howard et al. (2017), keyed by (variant, alpha, resolution).
PAPER_IMAGENET = {
    ("dws", 1.0, 224): {"name": "1.0 MobileNet-224", "top1_percent": 70.6,
                        "million_mult_adds": 569, "million_params": 4.2,
                        "tables": "Tables 4, 6, 7"},
    ("conv", 1.0, 224): {"name": "Conv MobileNet", "top1_percent": 71.7,
                         "million_mult_adds": 4866, "million_params": 29.3, "tables": "Table 4"},
    ("dws", 0.75, 224): {"name": "0.75 MobileNet-224", "top1_percent": 68.4,
                         "million_mult_adds": 325, "million_params": 2.6, "tables": "Tables 5, 6"},
    ("shallow", 1.0, 224): {"name": "Shallow MobileNet", "top1_percent": 65.3,
                            "million_mult_adds": 307, "million_params": 2.9, "tables": "Table 5"},
    ("dws", 0.5, 224): {"name": "0.5 MobileNet-224", "top1_percent": 63.7,
                        "million_mult_adds": 149, "million_params": 1.3, "tables": "Table 6"},
    ("dws", 0.25, 224): {"name": "0.25 MobileNet-224", "top1_percent": 50.6,
                         "million_mult_adds": 41, "million_params": 0.5, "tables": "Table 6"},
    ("dws", 1.0, 192): {"name": "1.0 MobileNet-192", "top1_percent": 69.1,
                        "million_mult_adds": 418, "million_params": 4.2, "tables": "Table 7"},
    ("dws", 1.0, 160): {"name": "1.0 MobileNet-160", "top1_percent": 67.2,
                        "million_mult_adds": 290, "million_params": 4.2, "tables": "Table 7"},
    ("dws", 1.0, 128): {"name": "1.0 MobileNet-128", "top1_percent": 64.4,
                        "million_mult_adds": 186, "million_params": 4.2, "tables": "Table 7"},
}

# The untrained models of the latency table (tools.export --latency-table), as
# (paper table, variant, alpha): every model of Tables 4 to 6, each at every --resolutions.
LATENCY_TABLE_MODELS = (
    ("4", "conv", 1.0), ("4, 6, 7", "dws", 1.0), ("5, 6", "dws", 0.75), ("5", "shallow", 1.0),
    ("6", "dws", 0.5), ("6", "dws", 0.25),
)
# Table 7 is 1.0 MobileNet across resolutions: the paper's 192 and 160 px and this project's
# training ladder 112/96/80 px (which stands for 192/160/128), beside --resolutions.
LATENCY_TABLE7_RESOLUTIONS = (192, 160, 112, 96, 80)
