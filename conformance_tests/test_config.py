"""ViTConfig validation, JSON round trip, presets."""
import json

import pytest

from shared.config import ViTConfig
from shared.errors import ConfigError
from shared.presets import ALIASES, PRESETS, get_preset
from shared.weights import parameter_count


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_json_round_trip(name):
    cfg = PRESETS[name]
    again = ViTConfig.from_json(cfg.to_json())
    assert again == cfg
    assert again.to_json() == cfg.to_json()
    assert json.loads(cfg.to_json())["image_size"] == list(cfg.image_size)


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_aliases_resolve(alias):
    assert get_preset(alias) is PRESETS[ALIASES[alias]]


@pytest.mark.parametrize("name,params", [
    # timm.create_model(name, num_classes=1000) parameter counts, checked once by hand
    ("vit_tiny_patch16_224", 5_717_416), ("vit_small_patch16_224", 22_050_664),
    ("vit_base_patch16_224", 86_567_656), ("vit_base_patch32_224", 88_224_232),
    ("vit_large_patch16_224", 304_326_632), ("vit_huge_patch14_224", 632_045_800),
])
def test_standard_parameter_counts(name, params):
    assert parameter_count(get_preset(name)) == params


def test_seed_presets_pin_their_numerics():
    t2t = get_preset("seed_t2t_walkthrough")
    assert (t2t.in_chans, t2t.image_size, t2t.patch_size, t2t.num_tokens) == (1, (60, 100), 20, 16)
    assert (t2t.embed_dim, t2t.num_heads, t2t.mlp_dim, t2t.qkv_bias, t2t.attn_value_skip) == (768, 4, 1152, False, True)
    assert (t2t.class_token, t2t.pos_embed, t2t.final_norm, t2t.num_classes) == ("zeros", "sincos1d", True, 1)
    classic = get_preset("seed_classic_torch")
    assert (classic.layer_norm_eps, classic.representation_size, classic.final_norm) == (1e-5, 768, False)
    keras = get_preset("seed_keras")
    assert (keras.layer_norm_eps, keras.gelu, keras.table_grid, keras.resize_kernel, keras.output_softmax) == \
        (1e-6, "tanh", (14, 14), "bicubic", True)
    at384 = keras.with_image_size(384)
    assert at384.grid == (24, 24) and at384.table_grid == (14, 14)


@pytest.mark.parametrize("changes,message", [
    (dict(image_size=(225, 224)), "not divisible by patch_size"),
    (dict(embed_dim=100, num_heads=12), "not divisible by num_heads"),
    (dict(gelu="relu"), "gelu must be one of"),
    (dict(class_token="none"), "pool='token' needs a class token"),
    (dict(final_norm=True, fc_norm=True), "exclusive"),
    (dict(attn_dim=96), "needs attn_value_skip"),
    (dict(layer_norm_eps=0.0), "layer_norm_eps"),
    (dict(pos_embed="sincos1d", pos_grid=(7, 7)), "pos_grid only applies"),
    (dict(output_softmax=True, num_classes=0), "needs a classifier"),
    (dict(dropout=1.0), "dropout"),
    (dict(swiglu=True, class_token="none", pool="map"), "pool='map' with a SwiGLU MLP"),
    (dict(pool="token_mean", class_token="none"), "pool='token_mean' needs a class token"),
    (dict(pool="token_mean", final_norm=False, fc_norm=True), "pool='token_mean' with fc_norm"),
])
def test_invalid_configs_are_refused_clearly(changes, message):
    with pytest.raises(ConfigError, match=message):
        get_preset("B/16").replace(**changes)


def test_from_json_rejects_unknown_fields_and_garbage():
    d = get_preset("tiny").to_dict() | {"layer_scale": 1e-5}
    with pytest.raises(ConfigError, match="unknown config fields .*layer_scale"):
        ViTConfig.from_dict(d)
    with pytest.raises(ConfigError, match="not valid JSON"):
        ViTConfig.from_json("{nope")


def test_non_square_and_any_channels():
    cfg = ViTConfig(image_size=(60, 100), in_chans=5, patch_size=20, embed_dim=64, depth=1, num_heads=4, mlp_dim=96)
    assert cfg.grid == (3, 5) and cfg.num_tokens == 16
    assert cfg.with_image_size((40, 60)).table_grid == (3, 5)
    assert cfg.with_image_size((60, 100)).pos_grid is None


@pytest.mark.parametrize("field,value,expected", [
    ("layer_norm_eps", "1e-6", "a finite float"), ("layer_norm_eps", None, "a finite float"),
    ("layer_norm_eps", float("inf"), "a finite float"), ("layer_norm_eps", float("nan"), "a finite float"),
    ("layer_norm_eps", -1e-6, "a finite float"), ("num_classes", "10", "an int"), ("dropout", "0.1", "a float"),
    ("dropout", 1.5, "a float"), ("final_norm", "false", "a bool"), ("final_norm", 0, "a bool"),
    ("qk_scale", float("inf"), "null or a finite float"), ("num_heads", 0, "an int"), ("depth", True, "an int"),
    ("depth", 12.0, "an int"), ("depth", 10**9, "an int in \\[1, 1024\\]"), ("embed_dim", 10**6, "an int"),
    ("image_size", [224.5, 224], "an int or a \\(height, width\\) pair of ints"), ("gelu", ["erf"], "a string"),
])
def test_config_fields_of_the_wrong_type_name_the_field_type_and_value(field, value, expected):
    """A wrong type is refused with the field, the expected type and the value: never coerced (the string "false"
    is not True, "1e-6" is not a float), never a TypeError or ZeroDivisionError from later arithmetic."""
    d = get_preset("tiny").to_dict() | {field: value}
    with pytest.raises(ConfigError, match=f"field '{field}' must be {expected}") as e:
        ViTConfig.from_dict(d)
    assert type(value).__name__ in str(e.value)
    with pytest.raises(ConfigError, match=field):
        ViTConfig.from_json(json.dumps(d))


def test_a_config_too_large_to_allocate_is_refused_by_counting():
    """Within every field limit but 17 trillion parameters: counted from the sizes (no key list, no tensor) and
    refused against shared.limits.MAX_PARAMETERS."""
    from shared import limits

    d = get_preset("tiny").to_dict() | {"depth": 1000, "embed_dim": 65536, "num_heads": 1, "mlp_dim": 65536}
    with pytest.raises(ConfigError, match="parameters, over the limit"):
        ViTConfig.from_dict(d)
    for name in ("tiny", "B/16", "seed_t2t_walkthrough", "seed_classic_torch", "seed_keras", "tiny_dinov2_cls"):
        assert get_preset(name).num_parameters == parameter_count(get_preset(name))
    cls = get_preset("tiny_dinov2_cls")  # the head (and a pre-logits layer) read 2 * width pooled features
    assert parameter_count(cls) - parameter_count(cls.replace(pool="token")) == cls.num_classes * cls.width
    assert cls.replace(representation_size=24).num_parameters == parameter_count(cls.replace(representation_size=24))
    assert get_preset("vit_huge_patch14_224").num_parameters < limits.MAX_PARAMETERS


def test_deeply_nested_config_json_is_a_config_error():
    with pytest.raises(ConfigError, match="nested"):
        ViTConfig.from_json("[" * 100_000 + "]" * 100_000)
