"""Checks of the backbone's input dictionary, shared by every task."""

BACKBONE_INPUT_NAMES = (
    "token_ids",
    "segment_ids",
    "text_mask",
    "region_features",
    "region_locations",
    "region_mask",
)


def _static_shape(value):
    shape = getattr(value, "shape", None)
    if shape is None:
        return None
    try:
        return tuple(None if d is None else int(d) for d in shape)
    except TypeError:
        return None


def check_backbone_inputs(inputs, image_feature_dim, owner="InterBERTBackbone"):
    """Raise a `ValueError` naming the input when `inputs` cannot be used.

    Checks the keys, ranks, and the static sizes that must agree: text length
    across the three text inputs, region count across the three region
    inputs, batch size across all six, the feature width against the config
    and the location width (5). Unknown (symbolic `None`) sizes are skipped.
    """
    if not isinstance(inputs, dict):
        raise ValueError(
            f"{owner} expects a dict with keys {list(BACKBONE_INPUT_NAMES)}; "
            f"received {type(inputs).__name__}."
        )
    missing = [k for k in BACKBONE_INPUT_NAMES if k not in inputs]
    extra = sorted(k for k in inputs if k not in BACKBONE_INPUT_NAMES)
    if missing or extra:
        raise ValueError(
            f"{owner} inputs: expected exactly the keys "
            f"{list(BACKBONE_INPUT_NAMES)}; missing {missing}, unexpected "
            f"{extra} (received keys {sorted(inputs)})."
        )
    shapes = {k: _static_shape(inputs[k]) for k in BACKBONE_INPUT_NAMES}
    ranks = {
        "token_ids": 2, "segment_ids": 2, "text_mask": 2,
        "region_features": 3, "region_locations": 3, "region_mask": 2,
    }
    for name, rank in ranks.items():
        shape = shapes[name]
        if shape is not None and len(shape) != rank:
            raise ValueError(
                f"{owner} input '{name}': expected rank {rank}, received "
                f"shape {shape}."
            )

    def agree(names, axis, what):
        seen = {}
        for n in names:
            shape = shapes[n]
            if shape is not None and shape[axis] is not None:
                seen[n] = shape[axis]
        if len(set(seen.values())) > 1:
            first = names[0]
            detail = ", ".join(f"'{n}' has {v}" for n, v in seen.items())
            raise ValueError(
                f"{owner} inputs disagree on the {what}: {detail}; every one "
                f"must have the {what} of '{first}'."
            )

    agree(list(BACKBONE_INPUT_NAMES), 0, "batch size")
    agree(["token_ids", "segment_ids", "text_mask"], 1, "text length")
    agree(["region_features", "region_locations", "region_mask"], 1,
          "region count")
    feat = shapes["region_features"]
    if feat is not None and feat[-1] is not None and feat[-1] != image_feature_dim:
        raise ValueError(
            f"{owner} input 'region_features': expected feature width "
            f"{image_feature_dim} (the model's `image_feature_dim`), received "
            f"shape {feat}."
        )
    loc = shapes["region_locations"]
    if loc is not None and loc[-1] is not None and loc[-1] != 5:
        raise ValueError(
            f"{owner} input 'region_locations': expected 5 values per region "
            f"[x1/W, y1/H, x2/W, y2/H, area], received shape {loc}."
        )
