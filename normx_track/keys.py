"""Every metric name the tracker writes, in one place. Plain Python (no torch): the
analysis tools and the W&B layout import it to read records without loading a model.

Keys are flat and slash-separated (DESIGN.md "The durable record"); ``PREFIX`` is the
input embedding's, ``OUTPUT_PREFIX`` an untied output head's."""
from __future__ import annotations

PREFIX, OUTPUT_PREFIX = "normx/", "normx/output/"
CORRELATION_STATS = ("spearman", "pearson", "partial_spearman")


def correlation_key(stat: str, signal: str, prefix: str = PREFIX) -> str:
    """e.g. normx/partial_spearman/information_gain"""
    return f"{prefix}{stat}/{signal}"


def n_types_key(signal: str, prefix: str = PREFIX) -> str:
    return f"{prefix}n_types/{signal}"


def auroc_key(prefix: str = PREFIX) -> str:
    return f"{prefix}auroc/function_word"


# How many types (count >= min_count) the function-word labels put in each class:
# label "function", "content" or "unlabelled" (word pieces, placeholders, names, ...).
FUNCTION_WORD_N = "normx/function_word/n_{label}"


def norm_key(stat: str, prefix: str = PREFIX) -> str:
    """e.g. normx/norm/mean, normx/norm/n_nonfinite, normx/norm/bucket_00/mean"""
    return f"{prefix}norm/{stat}"


# Losses beside each row: the last value at or before the row's step, and that step.
TRAIN_LOSS, VAL_LOSS = "train/loss", "val/loss"
LOSS_KEYS = (TRAIN_LOSS, VAL_LOSS)


def loss_step_key(loss_key: str) -> str:
    """e.g. train/loss_step: the step the row's train/loss was measured at."""
    return f"{loss_key}_step"


# Evidence alignment and minimal pairs (normx_track.probes.evidence).
EVIDENCE_AP = "normx/evidence_ap/{method}"
EVIDENCE_DP = "normx/evidence_dp/{method}"
EVIDENCE_AP_BY_LAYER = "normx/evidence_ap_by_layer/{method}/layer_{layer:02d}"
EVIDENCE_DP_BY_LAYER = "normx/evidence_dp_by_layer/{method}/layer_{layer:02d}"
EVIDENCE_N_PAIRS = "normx/evidence_n_pairs"
EVIDENCE_N_PAIRS_CONTRASTIVE = "normx/evidence_n_pairs_contrastive"
EVIDENCE_N_CUE_AT_PREDICTION = "normx/evidence_n_cue_at_prediction"
EVIDENCE_N_CUE_TRUNCATED = "normx/evidence_n_cue_truncated"  # cues all cut with a long prefix
PAIR_ACCURACY = "normx/pair_accuracy"
PAIR_ACCURACY_BY_UID = "normx/pair_accuracy_by_uid/{uid}"
PAIR_N_PAIRS = "normx/pair_n_pairs"
PAIR_N_SHARED_FIRST_TOKEN = "normx/pair_n_shared_first_token"
BLIMP_ACCURACY = "normx/blimp_accuracy"
BLIMP_ACCURACY_BY_UID = "normx/blimp_accuracy_by_uid/{uid}"
BLIMP_N_PAIRS = "normx/blimp_n_pairs"
PAIR_N_TOO_LONG = "normx/pair_n_too_long"  # skipped: the words alone exceed the context
BLIMP_N_TOO_LONG = "normx/blimp_n_too_long"  # skipped: a sentence exceeds the context
# How the probe text tokenises (normx_track.probes.files): whether a leading space was
# put before it, pieces per prefix word, the share of cue words in two or more pieces.
PROBE_LEADING_SPACE = "normx/probe/leading_space"
PROBE_MEAN_PIECES_PER_WORD = "normx/probe/mean_pieces_per_word"
PROBE_CUE_SPLIT_SHARE = "normx/probe/cue_split_share"
# Masked LMs (normx_track.probes.masked_evidence): pairs with a several-token good or bad
# word (accuracy only), and the authors' mask accuracy for single-token pairs.
EVIDENCE_N_MULTITOKEN_TARGET = "normx/evidence_n_multitoken_target"
MASK_ACCURACY = "normx/mask_accuracy"
MASK_N_PAIRS = "normx/mask_n_pairs"
# The attribution methods every probe ranks (evidence and faithfulness alike).
METHODS = ("normxlogit", "logat", "norm", "random")
CONTRASTIVE_METHODS = ("normxlogit_contrastive", "logat_contrastive", "random_contrastive")
# The context-mixing methods the evidence probes rank layer by layer when asked
# (tracker.layerwise_methods; normx_track.attribution.mixing.METHODS, the same names): their
# keys are the by-layer ones above, layer_01 .. layer_L (the matrix after layer l), and
# normx/evidence_ap/<method>, .../evidence_dp/<method> for the last layer.
CONTEXT_MIXING_METHODS = ("attention", "rollout", "value_zeroing", "alti", "globenc")

# Faithfulness (normx_track.probes.faithfulness).
COMPREHENSIVENESS = "normx/comprehensiveness/{method}"
SUFFICIENCY = "normx/sufficiency/{method}"
LOO_SPEARMAN = "normx/loo_spearman/{method}"
FAITHFULNESS_N_EXAMPLES = "normx/faithfulness_n_examples"
FAITHFULNESS_MEAN_P_FULL = "normx/faithfulness_mean_p_full"
IG_COMPLETENESS_ERROR = "normx/ig_completeness_error"
ATTRIBUTION_METHODS = METHODS  # the same tuple: its old name
FAITHFULNESS_METHODS = (*METHODS, "loo")
CAPTUM_METHODS = ("saliency", "input_x_gradient", "integrated_gradients")

# Replay of a checkpoint suite (analysis.replay): the earliest other step whose input or
# output embedding is byte for byte this step's (null when none), and the bytes read from
# the checkpoint's weight files against their size (norms only reads the embeddings).
REPLAY_SAME_EMBEDDINGS = "normx/replay/same_embeddings_as_step"
REPLAY_BYTES_READ = "normx/replay/bytes_read"
REPLAY_FILE_BYTES = "normx/replay/file_bytes"
# meta.json of a replay: each step's embedding fingerprints, and the groups of equal ones
REPLAY_FINGERPRINTS = "embedding_fingerprints"
REPLAY_SAME_GROUPS = "same_embeddings"

# The Lightning callback's entry in a checkpoint's "callbacks" (its class name; older
# checkpoints wrote "NormTracker{...settings...}").
TRACKER_STATE_KEY = "NormTracker"
