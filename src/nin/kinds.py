"""The lists of kinds a setting takes (schedules, flips, test-time views, ...): at the bottom of the package,
so that the data and evaluation layers check a value against its list without importing the config."""
from __future__ import annotations

SCHEDULES = ("cosine", "linear", "step", "constant")
FLIPS = ("auto", "yes", "no", "alternate")
TTA_MODES = ("flip", "shift", "flip-shift")  # test-time views (nin eval --tta; nin.evaluate.tta_logits)
AMPS = ("auto", "bf16", "off")
ON_NAN = ("stop", "rollback")
PREPROCESS_KINDS = ("standardize", "gcn_zca", "lcn")  # nin.data.preprocess builds them (its KINDS)
EVAL_SPLITS = ("test", "val")
