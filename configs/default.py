"""Defaults shared by every config. Variants import this and override what they change.

Run: python launch.py --config=configs/folder.py --workdir=runs/x --config.data.path=PATH
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "folder"  # "folder" | "consep" | "demo"
    c.data.path = ""  # folder root ("folder"); manual_dir ("consep", default ../shared/data/consep)
    c.data.data_dir = ""  # where TFDS datasets are built; "" = $SEGAN_JAX_DATA_DIR or ~/.cache
    c.data.crop_size = 256
    c.data.ignore_index = 255

    c.augment = ml_collections.ConfigDict()
    c.augment.flips = True
    c.augment.rot90 = True
    c.augment.brightness = 0.1  # additive, in units of the image's full scale
    c.augment.contrast = 0.1  # multiplicative, about the mean of the crop's labelled pixels
    c.augment.saturation = 0.1  # RGB only
    c.augment.hue = 0.0  # RGB only: chroma rotation of at most this fraction of a turn
    # RGB only: H&E stain jitter (Tellez et al. 2018), HED a*s+b with a in 1 +- hed, b in +-hed;
    # 0.02-0.05 for H&E slides. At 0 (hue too) the augmentation draws what it drew before.
    c.augment.hed = 0.0

    c.model = ml_collections.ConfigDict()
    c.model.depth = 50  # ResNet-18/34/50/101 backbone
    c.model.width = 64  # base width of the backbone (64 is the standard ResNet)
    c.model.output_stride = 16  # 16 or 8
    c.model.aspp_features = 256
    c.model.dropout_rate = 0.1
    # ASPP taps that read only padding on the training crops (rate >= crop / output_stride)
    # never train; True drops them on every input (whole images too), False keeps them there
    # with their initial weights, as torchvision does. Judged from data.crop_size: fine-tuning
    # (model.init_checkpoint) on smaller crops than the source run's also drops taps that the
    # source run trained. May change between runs in one workdir (evaluation only).
    c.model.drop_untrained_taps = True
    # Convolution taps that read zero padding: "skip" those that read only padding (e.g. the
    # off-centre taps of ASPP rate 36 at output stride 8 on 256 crops; about 10 % fewer FLOPs
    # for ResNet-50 OS8), "regions" also splits atrous convolutions whose taps read padding in
    # at least a quarter of their products (rates 12 and 24 there; on 128 crops also the
    # backbone's rate-4 convolutions) into regions that skip it, "keep" runs every
    # tap (torchvision's arithmetic). The same function up to float rounding; may change
    # between runs in one workdir.
    c.model.padding_taps = "skip"
    # How atrous convolutions run: "space_to_batch" (ordinary convolutions over the map's
    # rate x rate phases, where that adds at most 1/8 more pixels: the backbone's rates 2 and 4
    # on 256 crops, not the ASPP's; the others dilated) or "dilated" (lax's dilated
    # convolutions). The same function up to float rounding; on an H100 the ResNet-50 OS8 bf16
    # step is 14 % faster with "space_to_batch" (README, 2026-11-27). May change between runs in
    # one workdir.
    c.model.atrous = "space_to_batch"
    # BatchNorm's backward: "flax" (autodiff of flax's nn.BatchNorm: five reductions over the
    # activations) or "fused" (models.BatchNorm: the same variables and forward, a hand-written
    # backward with two). The same function up to float rounding; on an H100 "fused" was not
    # measurably faster (README, 2026-11-27). May change between runs in one workdir.
    c.model.batch_norm = "flax"
    c.model.dtype = "float32"  # compute dtype: "float32" | "bfloat16" (parameters stay float32)
    c.model.init_checkpoint = ""  # local orbax checkpoint to start the segmentor from

    c.loss = ml_collections.ConfigDict()
    c.loss.class_weights = "none"  # "none" | "inverse_frequency" | "median_frequency"
    c.loss.lambda_ce = 1.0
    c.loss.lambda_mae = 0.1  # weight of the critic's multi-scale L1 loss (used when critic.num > 0)

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"  # "adamw" | "adam" | "sgd"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "cosine"  # "constant" | "cosine" | "poly"
    c.optimizer.warmup_steps = 200
    c.optimizer.weight_decay = 1e-4
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.momentum = 0.9  # sgd only

    c.critic = ml_collections.ConfigDict()
    c.critic.num = 0  # 0: no critic; 1: one critic for all classes; K or -1: one per class
    c.critic.features = (64, 128, 256, 512, 512, 512)  # SegAN's six 4x4 stride-2 blocks
    c.critic.layer_weighting = "mean"  # "mean" (paper eq. 2) | "segan" (original SegAN code)
    c.critic.constraint = "clip"  # "clip" (weight clipping, SegAN) | "gradient_penalty" | "none"
    c.critic.clip_value = 0.05
    c.critic.gp_weight = 10.0  # with "gradient_penalty" (WGAN-GP's weight)
    c.critic.steps_per_update = 1  # critic updates per segmentor update
    c.critic.learning_rate = 2e-4  # SegAN: Adam, lr 2e-4, beta1 0.5
    c.critic.b1 = 0.5
    c.critic.b2 = 0.999
    c.critic.schedule = "constant"

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 25_000  # the paper's iteration count
    c.train.batch_size = 16  # global batch, split evenly over all devices
    c.train.log_every = 50  # progress line and metrics.jsonl every N steps (host sync only here)
    c.train.eval_every = 1000  # evaluate on eval.split every N steps (and at the end)
    c.train.checkpoint_every = 1000  # must be a multiple of log_every
    c.train.keep = 3  # last checkpoints kept (plus the best one)

    c.eval = ml_collections.ConfigDict()
    c.eval.split = ""  # "" = "val" when the dataset has one, else "test" (saved resolved)
    # what --mode=evaluate and --mode=predict use: "latest" (checkpoints/), "best" (best/,
    # the best foreground F1 on eval.split; without a val split that choice has seen test),
    # or a step still kept in checkpoints/ (train.keep of them), e.g. "1000"
    c.eval.checkpoint = "latest"
    # --mode=evaluate on this labelled folder (images/, masks/, optional classes.json: another
    # cohort's tiles) instead of eval.split; records eval/cohort-<folder>_<step>.json
    c.eval.cohort = ""
    # Images larger than this (pixels, a multiple of the output stride; 0: none) are evaluated
    # and predicted in overlapping windows of this size, for a bounded device memory; each
    # window's prediction is kept tile_margin pixels or more inside it (segan_jax/tiles.py).
    c.eval.tile_size = 0
    c.eval.tile_margin = 64
    # Test-time augmentation: "none", or the class probabilities averaged over the image's
    # "flips" (4 views: flipped left-right, upside down, both) or "d4" (8: also quarter turns),
    # each view's mapped back; 4 or 8 times the network's work wherever eval.* applies
    # (training's evaluations too).
    c.eval.tta = "none"

    c.predict = ml_collections.ConfigDict()
    c.predict.input = ""  # an image or slide file, or a folder of them
    c.predict.output = ""  # folder for one label PNG per input image (a label TIFF per slide)
    c.predict.overwrite = False  # never replace existing predictions unless asked
    # or leave the inputs whose predictions all exist alone (a stopped run's, say: each file
    # appears under its name only when complete) and predict the rest
    c.predict.skip_existing = False
    # also <stem>.geojson: each predicted region of a foreground class as a polygon annotation,
    # to correct in QuPath (File > Import objects) instead of drawing from scratch
    c.predict.geojson = False
    # also <stem>.xml, the same regions as Aperio ImageScope annotations (one layer per class;
    # writes the GeoJSON too, which the XML of a slide is made from)
    c.predict.imagescope = False
    # regions whose polygon area (pixels of the level predicted; a lone pixel's is 0.5, a 3x3
    # square's 8.5; an image read in f x f blocks is traced in its own pixels against this
    # times f x f, so about the same) is under this are left out of the GeoJSON (specks; 0:
    # every region)
    c.predict.min_region_area = 0.0
    # Slides: .svs, .ndpi, pyramidal TIFFs and TIFFs of more pixels than this (2**26:
    # 8192x8192) are read
    # region by region, predicted in eval.tile_size windows (1024 when 0) at pyramid level
    # slide_level (0: full resolution; pick the one of the training tiles' magnification), and
    # written as tiled label TIFFs (segan_jax/slides.py); slide_level -1: each slide's level
    # closest to microns_per_pixel (its file must say its pixel size).
    c.predict.slide_pixels = 2**26
    c.predict.slide_level = 0
    # The training images' pixel width in micrometres (slide_tiles prints its slides'; 0: not
    # known): a slide whose level's pixels are over 10 % wider or narrower, as its file says
    # (Aperio MPP, OME-XML, TIFF resolution), gets a note naming the level closest to it;
    # images (not slides) too, from their TIFF tags or PNG/JPEG print resolution. Over 10 µm
    # is refused (no scan's: nanometres, say).
    c.predict.microns_per_pixel = 0.0
    # With slide_level -1: also consider each level read in 2x2 to 8x8 blocks (each block's
    # mean one pixel), e.g. a 40x scan read as 20x where the slide has no 20x level; images
    # whose pixels are 2 to 8 times finer are read in blocks too (label maps at their size).
    c.predict.resample = False
    return c
