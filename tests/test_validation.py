"""Bad input gets a clear ValueError at the right place (issue 9, "Bad input that still gets through").

Config: assignment is validated like construction; numbers of any real scalar type, stored as plain Python
values; finite bounds. Engine: input checks (text, fractional grids, bool saliency, values beyond float32) and
`check_plan`, the central check of a strategy's output. Then property-based tests (hypothesis) of the config's
validation and of the engine's invariants.
"""

import copy
import dataclasses
import fractions
import math
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tango_plugin as tp

# No example database: the suite must not write a .hypothesis folder into the checkout.
FAST = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _check_plan():
    # imported per test, so that the rest of the file runs on code that has no check_plan yet
    from tango_plugin.engine.checks import check_plan

    return check_plan


def _prune(features, saliency=None, grid_hw=(4, 4), timestamps=None, config=None, frame_embeddings=None):
    if saliency is None:
        saliency = torch.rand(features.shape[:2], generator=torch.Generator().manual_seed(1))
    return tp.prune_video_tokens(features, saliency, grid_hw, timestamps, config, frame_embeddings)


def _features(T=3, L=16, D=12, seed=0, dtype=torch.float32):
    return torch.randn(T, L, D, generator=torch.Generator().manual_seed(seed)).to(dtype)


# =============================================================================== 1. assignment validation
@pytest.mark.parametrize("field,value,match", [
    ("retention_ratio", 0.0, r"retention_ratio=0.0 is out of range; expected a number in \(0.0, 1.0\]"),
    ("retention_ratio", "0.2", r"retention_ratio='0.2' is not allowed.*not a string"),
    ("segmentation", "nope", r"segmentation='nope' is not supported; allowed: \['holitom', 'fastvid'\]"),
    ("alpha", float("inf"), r"alpha=inf is out of range; expected a number in \[1.0, 1000000.0\]"),
    ("num_neighbors", 0, r"num_neighbors=0 is not allowed; expected an integer >= 1"),
    ("sink_positions", 5, r"sink_positions=5 is not allowed; expected None or a list"),
    ("sink_positions", [3, -1], r"sink_positions=\[3, -1\] must hold non-negative integer grid indices; got -1"),
    ("strategy", "", r"strategy='' must be a non-empty strategy name"),
    ("prune_images", 1, r"prune_images=1 must be True or False"),
    ("similarity_threshold", 1.5, r"similarity_threshold=1.5 is out of range"),
    ("intra_llm_layer", 0, r"intra_llm_layer=0 is not allowed; expected an integer >= 1"),
])
def test_assignment_is_validated_and_a_refused_value_leaves_the_config_unchanged(field, value, match):
    cfg = tp.TangoConfig(retention_ratio=0.2, sink_positions=[1, 2])
    before = copy.deepcopy(cfg)
    with pytest.raises(ValueError, match=match):
        setattr(cfg, field, value)
    assert cfg == before and cfg.to_json() == before.to_json()


def test_assignment_of_good_values_is_stored_normalised():
    cfg = tp.TangoConfig()
    cfg.retention_ratio = np.float32(0.3)
    cfg.sink_positions = (np.int64(4), 2)
    cfg.num_neighbors = torch.tensor(5)
    assert cfg.retention_ratio == 0.3 and type(cfg.retention_ratio) is float
    assert cfg.sink_positions == [4, 2] and all(type(p) is int for p in cfg.sink_positions)
    assert cfg.num_neighbors == 5 and type(cfg.num_neighbors) is int
    assert tp.TangoConfig.from_json(cfg.to_json()) == cfg


def test_unknown_attributes_and_deleting_fields_are_refused():
    cfg = tp.TangoConfig()
    with pytest.raises(AttributeError, match="no field 'retention'.*retention_ratio"):
        cfg.retention = 0.3  # a typo must not be silently ignored
    with pytest.raises(AttributeError, match="cannot be deleted"):
        del cfg.alpha
    cfg._scratch = 1  # private attributes stay free for internal use
    assert cfg == tp.TangoConfig()


def test_similarity_threshold_rule_on_assignment():
    cfg = tp.TangoConfig(retention_ratio=0.1)
    assert cfg.similarity_threshold == 0.65
    cfg.retention_ratio = 0.5  # an assignment changes one field only (the threshold may have been explicit)
    assert cfg.similarity_threshold == 0.65
    cfg.similarity_threshold = None  # None means "the paper's rule", as at construction
    assert cfg.similarity_threshold == 0.8
    assert cfg.replace(retention_ratio=0.05).similarity_threshold == 0.65


def test_replace_deepcopy_and_pickle_still_work():
    cfg = tp.TangoConfig(retention_ratio=0.25, sink_positions=[3], segmentation="fastvid")
    assert copy.deepcopy(cfg) == cfg and copy.copy(cfg) == cfg
    again = pickle.loads(pickle.dumps(cfg))
    assert again == cfg
    again.alpha = 2.0  # an unpickled config is validated on assignment too
    with pytest.raises(ValueError, match="alpha=0.5"):
        again.alpha = 0.5
    assert dataclasses.replace(cfg, alpha=3.0).alpha == 3.0
    with pytest.raises(ValueError, match="beta=2.0"):
        dataclasses.replace(cfg, beta=2.0)
    assert cfg.replace(context_ratio=0.2).context_ratio == 0.2
    assert tp.TangoConfig.from_dict(cfg.to_dict()) == cfg


# ================================================================== 2. exception types and late checks
@pytest.mark.parametrize("value", [5, "12", {1: 2}, 2.5, np.array(3)])
def test_sink_positions_that_are_not_a_list_give_value_error(value):
    with pytest.raises(ValueError, match="sink_positions="):
        tp.TangoConfig(sink_positions=value)


def test_sink_positions_accept_integer_sequences_of_any_kind():
    for value in ([1, 2], (1, 2), range(1, 3), np.array([1, 2]), torch.tensor([1, 2])):
        cfg = tp.TangoConfig(sink_positions=value)
        assert cfg.sink_positions == [1, 2] and all(type(p) is int for p in cfg.sink_positions)


@pytest.mark.parametrize("data", [None, [("alpha", 2.0)], "alpha", 3])
def test_from_dict_refuses_non_mappings_with_value_error(data):
    with pytest.raises(ValueError, match=r"data=.* expected a dict of TangoConfig field names"):
        tp.TangoConfig.from_dict(data)


def test_from_dict_and_from_json_bad_input():
    with pytest.raises(ValueError, match="unknown TangoConfig field"):
        tp.TangoConfig.from_dict({1: 2, "alpha": 2.0})  # mixed key types must not break the message
    with pytest.raises(ValueError, match="text=None is not allowed; expected a JSON string"):
        tp.TangoConfig.from_json(None)
    with pytest.raises(ValueError, match="text is not valid JSON"):
        tp.TangoConfig.from_json("{")
    with pytest.raises(ValueError, match="data=.* expected a dict"):
        tp.TangoConfig.from_json("[1, 2]")


@pytest.mark.parametrize("field,value", [
    ("alpha", float("inf")), ("alpha", 1e7), ("alpha", float("nan")),
    ("base_time", float("inf")), ("base_time", 1e39), ("base_space", float("inf")), ("base_space", 1e300),
    ("retention_ratio", float("inf")), ("static_threshold", float("-inf")), ("retention_ratio", 10 ** 400),
])
def test_non_finite_and_oversized_numbers_are_refused(field, value):
    with pytest.raises(ValueError, match=f"{field}="):
        tp.TangoConfig(**{field: value})


def test_finite_bounds_are_inclusive():
    cfg = tp.TangoConfig(alpha=1e6, base_time=1e38, base_space=1e38)
    assert (cfg.alpha, cfg.base_time, cfg.base_space) == (1e6, 1e38, 1e38)


@pytest.mark.parametrize("value", [
    np.float32(0.1), np.float16(0.1), np.float64(0.1), np.array(0.1), np.array(0.1, dtype=np.float32),
    torch.tensor(0.1), torch.tensor(0.1, dtype=torch.float16), torch.tensor(0.1, dtype=torch.float64),
])
def test_numeric_scalars_of_every_width_are_accepted_as_the_decimal_meant(value):
    cfg = tp.TangoConfig(retention_ratio=value)
    # stored as the plain float 0.1 (not float32's 0.100000001...), so the paper's `<= 0.1` rule still holds
    assert cfg.retention_ratio == 0.1 and type(cfg.retention_ratio) is float
    assert cfg.similarity_threshold == 0.65
    assert tp.TangoConfig.from_json(cfg.to_json()) == cfg


def test_other_real_scalars_are_accepted():
    cfg = tp.TangoConfig(retention_ratio=fractions.Fraction(1, 4), num_neighbors=np.int8(3), alpha=2,
                         max_block_elements=torch.tensor(4096), intra_llm_layer=np.uint16(4))
    assert cfg.retention_ratio == 0.25 and type(cfg.retention_ratio) is float
    assert type(cfg.alpha) is float
    assert (cfg.num_neighbors, cfg.max_block_elements, cfg.intra_llm_layer) == (3, 4096, 4)
    assert all(type(v) is int for v in (cfg.num_neighbors, cfg.max_block_elements, cfg.intra_llm_layer))
    assert tp.pre_llm_retention(np.float32(0.1), np.int64(28), np.int64(18)) == \
        tp.pre_llm_retention(0.1, 28, 18)


@pytest.mark.parametrize("value,match", [
    (True, r"retention_ratio=True is not allowed.*\(got a bool\)"),
    (np.True_, r"retention_ratio=np.True_ is not allowed"),
    (torch.tensor(True), r"retention_ratio=tensor\(True\) is not allowed"),
    ("0.1", r"retention_ratio='0.1' is not allowed; expected a number in \(0.0, 1.0\] \(got text"),
    (np.array([0.1]), r"retention_ratio=array\(\[0.1\]\) is not allowed.*shape \(1,\); pass a single value"),
    (torch.tensor([0.1, 0.2]), r"retention_ratio=tensor\(.*shape \(2,\)"),
    (1j, r"retention_ratio=1j is not allowed"),
    (None, r"retention_ratio=None is not allowed"),
])
def test_bools_text_arrays_and_complex_are_not_numbers(value, match):
    with pytest.raises(ValueError, match=match):
        tp.TangoConfig(retention_ratio=value)


def test_integral_floats_are_refused_where_an_integer_is_needed():
    with pytest.raises(ValueError, match=r"num_neighbors=7.0 is not allowed; expected an integer >= 1"):
        tp.TangoConfig(num_neighbors=7.0)
    with pytest.raises(ValueError, match=r"num_neighbors=tensor\(7.\) is not allowed"):
        tp.TangoConfig(num_neighbors=torch.tensor(7.0))


def test_unknown_strategy_is_accepted_by_the_config_and_refused_where_it_is_used():
    # The config cannot see the strategy registry (lower layer), and a strategy may be registered after its
    # config is built or loaded; the name is checked, with the registered names, when it is looked up.
    cfg = tp.TangoConfig(strategy="nope")
    with pytest.raises(ValueError, match=r"unknown strategy 'nope'.*tango"):
        _prune(_features(), config=cfg)


# ============================================================================= 3. engine input checks
@pytest.mark.parametrize("timestamps,match", [
    ("abc", r"timestamps='abc' is not allowed; expected a \(T,\) = \(3,\) sequence .*\(got text\)"),
    (b"abc", r"timestamps=b'abc' is not allowed"),
    (["a", "b", "c"], r"timestamps=\['a', 'b', 'c'\] is not allowed"),
    ({"t": 1}, r"timestamps=\{'t': 1\} is not allowed"),
    (torch.tensor([True, False, True]), r"timestamps must be real numbers \(seconds\); got dtype torch.bool"),
    ([0.0, 1.0], r"timestamps must have shape \(T,\) = \(3,\); got 2"),
])
def test_bad_timestamps_give_value_error_naming_them(timestamps, match):
    with pytest.raises(ValueError, match=match):
        _prune(_features(), timestamps=timestamps)


@pytest.mark.parametrize("grid_hw,match", [
    ("44", r"grid_hw='44' is not allowed; expected a pair \(H, W\) of positive integers .*\(got text\)"),
    ((4.6, 4.2), r"grid_hw=\(4.6, 4.2\) is not allowed.*integers, not floats"),
    ((4.0, 4.0), r"grid_hw=\(4.0, 4.0\) is not allowed"),
    ((True, 16), r"grid_hw=\(True, 16\) is not allowed"),
    (4, r"grid_hw=4 is not allowed"),
    ((4, 4, 1), r"grid_hw=\(4, 4, 1\) is not allowed"),
    ((2, 4), r"grid_hw=\(2, 4\) does not fit L=16 tokens per frame"),
    ((-4, -4), r"grid_hw=\(-4, -4\) does not fit L=16"),
])
def test_bad_grid_gives_value_error_and_is_never_truncated(grid_hw, match):
    with pytest.raises(ValueError, match=match):
        _prune(_features(), grid_hw=grid_hw)


def test_integer_grid_scalars_of_any_kind_are_accepted():
    feats = _features()
    expected = _prune(feats, grid_hw=(4, 4))
    for grid in ([4, 4], (np.int64(4), np.int32(4)), (torch.tensor(4), torch.tensor(4)), torch.tensor([4, 4]),
                 np.array([4, 4]), torch.Size([4, 4])):
        res = _prune(feats, grid_hw=grid)
        assert torch.equal(res.kept_indices, expected.kept_indices) and torch.equal(res.features, expected.features)


@pytest.mark.parametrize("dtype", [torch.bool, torch.int64, torch.int32, torch.uint8])
def test_non_floating_saliency_is_refused(dtype):
    # bool has no order (argmax refuses it); integer scores break inside Tango on some inputs only (the mean of a
    # static segment, the masking sentinel), so they are refused for every strategy
    sal = (torch.rand(3, 16, generator=torch.Generator().manual_seed(0)) * 5).to(dtype)
    for strategy in ("tango", "topk"):
        with pytest.raises(ValueError, match=f"saliency must be a floating-point tensor.*{dtype}.*float"):
            _prune(_features(), sal, config=tp.TangoConfig(retention_ratio=0.5, strategy=strategy))


@pytest.mark.parametrize("timestamps", [
    torch.tensor([0.0, 1.0, 1e300], dtype=torch.float64), [0.0, 1.0, 1e300], np.array([0, -1e39, 2]),
])
def test_timestamps_beyond_float32_are_refused(timestamps):
    # finite in float64, but the engine's frame times are float32 (strope.frame_times), where they become inf
    with pytest.raises(ValueError, match=r"timestamps hold .*e\+(300|39), beyond float32's range"):
        _prune(_features(), timestamps=timestamps)


def test_large_timestamps_within_float32_are_fine():
    res = _prune(_features(), timestamps=torch.tensor([0.0, 1e30, 3e38], dtype=torch.float64))
    assert torch.isfinite(res.features).all()


@pytest.mark.parametrize("dtype,scale", [
    (torch.float32, 1e20), (torch.float32, 3e38), (torch.float64, 1e39), (torch.float64, 1e30),
    (torch.bfloat16, 1e38),
])
def test_features_whose_norm_overflows_float32_are_refused(dtype, scale):
    # The engine clusters L2-normalised float32 copies: a norm beyond ~1.8e19 is inf there, the copy becomes zeros
    # (or NaN from float64 beyond float32), and before this check the outputs turned NaN or the pick degenerate.
    feats = _features(dtype=torch.float64)
    feats = (feats / feats.abs().max() * scale).to(dtype)
    with pytest.raises(ValueError, match=r"features are too large for the engine: token .* overflows float32"):
        _prune(feats, config=tp.TangoConfig(retention_ratio=0.5))


def test_features_up_to_the_bound_give_finite_output():
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        feats = _features(dtype=torch.float64)
        feats = (feats / feats.norm(dim=-1).max() * 1e19).to(dtype)  # every norm <= 1e19 < sqrt(float32 max)
        for strategy in ("tango", "topk"):
            res = _prune(feats, config=tp.TangoConfig(retention_ratio=0.5, strategy=strategy))
            assert torch.isfinite(res.features).all()


def test_frame_embeddings_whose_norm_overflows_float32_are_refused():
    emb = torch.randn(3, 8)
    emb[1] *= 1e20
    with pytest.raises(ValueError, match=r"frame_embeddings are too large for the engine: frame 1"):
        _prune(_features(), config=tp.TangoConfig(segmentation="fastvid"), frame_embeddings=emb)


def test_non_finite_inputs_keep_their_message():
    feats = _features()
    feats[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"features contain non-finite values \(nan or inf\)"):
        _prune(feats)
    with pytest.raises(ValueError, match=r"features contain non-finite values"):
        _prune(_features() * float("inf"))


def test_sink_positions_of_hand_made_tokens_must_be_integers_in_the_grid():
    from tango_plugin.engine.checks import check_visual_tokens

    feats = _features()
    for sinks, match in [(("3",), r"has '3'; expected integer grid indices in \[0, 16\)"),
                         ((2.0,), r"has 2.0; expected integer"), ((16,), r"has 16, outside the grid \[0, 16\)")]:
        tokens = SimpleNamespace(features=feats, saliency=torch.rand(3, 16), grid_hw=(4, 4), timestamps=None,
                                 frame_embeddings=None, sink_positions=sinks)
        with pytest.raises(ValueError, match=match):
            check_visual_tokens(tokens)


# ================================================================================== 4. check_plan
@dataclasses.dataclass
class _Plan:
    kept_indices: torch.Tensor
    features: torch.Tensor


def _tokens(T=2, L=4, D=6):
    return SimpleNamespace(features=torch.randn(T, L, D))


def test_check_plan_accepts_valid_plans():
    check_plan = _check_plan()
    tokens = _tokens()
    check_plan(_Plan(torch.tensor([0, 3, 7]), torch.randn(3, 6)), tokens, "my_method")
    check_plan(_Plan(torch.tensor([5], dtype=torch.int32), torch.randn(1, 6, dtype=torch.float16)), tokens, "m")
    check_plan(_Plan(torch.empty(0, dtype=torch.long), torch.empty(0, 6)), tokens, "my_method")
    feats = _features(T=4, L=16, D=12)
    for strategy in ("tango", "topk", "uniform"):
        res = _prune(feats, config=tp.TangoConfig(retention_ratio=0.3, strategy=strategy))
        check_plan(res, SimpleNamespace(features=feats), strategy)


_I = torch.tensor


@pytest.mark.parametrize("indices,features,match", [
    (_I([0, 5, 3]), None, r"unsorted kept indices \(5 then 3\) at positions 1, 2; kept_indices must be strictly"),
    (_I([0, 3, 3]), None, r"duplicate kept index 3 at positions 1, 2"),
    (_I([0, 3, 8]), None, r"kept index 8 \(position 2\), outside \[0, T \* L\) = \[0, 8\) for T=2, L=4"),
    (_I([-1, 0, 3]), None, r"kept index -1 \(position 0\), outside \[0, T \* L\)"),
    (_I([9, 0, 1]), None, r"kept index 9 \(position 0\), outside"),
    (_I([0.0, 1.0, 2.0]), None, r"kept_indices of dtype torch.float32, shape 3; expected a 1-D integer"),
    (_I([True, False, True]), None, r"kept_indices of dtype torch.bool"),
    (_I([[0, 1, 2]]), None, r"kept_indices of dtype torch.int64, shape 1x3"),
    ([0, 1, 2], None, r"kept_indices of list"),
    (_I([0, 1, 2]), torch.randn(2, 6), r"features of shape 2x6; expected \(K, D\) = \(3, 6\)"),
    (_I([0, 1, 2]), torch.randn(3, 5), r"features of shape 3x5; expected \(K, D\) = \(3, 6\)"),
    (_I([0, 1, 2]), torch.randn(3, 6, 1), r"features of shape 3x6x1"),
    (_I([0, 1, 2]), [[0.0] * 6] * 3, r"features of shape list"),
    (_I([0, 1, 2]), torch.ones(3, 6, dtype=torch.long), r"features of dtype torch.int64; expected a floating-point"),
    (_I([0, 1, 2]), torch.full((3, 6), float("nan")), r"non-finite features \(nan or inf\)"),
    (_I([0, 1, 2]), _I([[1.0] * 6, [float("inf")] + [0.0] * 5, [0.0] * 6]), r"non-finite features"),
])
def test_check_plan_refuses_bad_plans_naming_the_strategy(indices, features, match):
    check_plan = _check_plan()
    if features is None:
        features = torch.randn(3, 6)
    with pytest.raises(ValueError, match=r"^strategy 'my_method' returned " + match):
        check_plan(_Plan(indices, features), _tokens(), "my_method")


def test_check_plan_allow_duplicates_accepts_repeats_but_not_disorder():
    check_plan = _check_plan()
    check_plan(_Plan(torch.tensor([0, 3, 3, 5]), torch.randn(4, 6)), _tokens(), "tango", allow_duplicates=True)
    with pytest.raises(ValueError, match=r"strategy 'tango' returned unsorted kept indices \(5 then 3\) .* ascending"):
        check_plan(_Plan(torch.tensor([0, 5, 3]), torch.randn(3, 6)), _tokens(), "tango", allow_duplicates=True)


def test_check_plan_refuses_objects_that_are_not_plans():
    check_plan = _check_plan()
    with pytest.raises(ValueError, match=r"strategy 'my_method' returned tuple; expected a PrunePlan"):
        check_plan((torch.tensor([0]), torch.randn(1, 6)), _tokens(), "my_method")
    with pytest.raises(ValueError, match=r"strategy 'x' returned NoneType"):
        check_plan(None, _tokens(), "x")


# ============================================================= 5a. property: the config's validation
_NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.floats(-2.0, 2.0), st.integers(-3, 5000),
    st.integers(-10 ** 400, 10 ** 400), st.floats(0.0, 1.0).map(np.float32), st.floats(0.0, 1.0).map(np.float16),
    st.integers(-5, 5000).map(np.int64), st.floats(-1.0, 2.0).map(torch.tensor),
    st.integers(0, 2000).map(torch.tensor), st.fractions(max_denominator=50), st.booleans(),
)
_OTHER = st.one_of(
    st.none(), st.text(max_size=6), st.sampled_from(["holitom", "fastvid", "auto", "global_query", "tango", "topk",
                                                      "0.1", "", "/tmp/siglip"]),
    st.lists(st.integers(-2, 40), max_size=4), st.lists(st.integers(0, 40), max_size=4).map(tuple),
    st.lists(st.integers(0, 40), max_size=4).map(np.array), st.lists(st.floats(0, 3), max_size=2),
    st.just({"a": 1}), st.just(object()), st.just([[1, 2]]),
)
_VALUES = st.one_of(_NUMBERS, _OTHER)
_FIELDS = [f.name for f in dataclasses.fields(tp.TangoConfig)]
_PLAIN = (type(None), bool, int, float, str, list, dict)


def _assert_sound(cfg):
    """A config that exists is plain data, valid, and survives JSON unchanged."""
    for name in _FIELDS:
        value = getattr(cfg, name)
        assert type(value) in _PLAIN, (name, value)
        if isinstance(value, float):
            assert math.isfinite(value)
        if isinstance(value, list):
            assert all(type(p) is int and p >= 0 for p in value)
        if isinstance(value, dict):  # strategy_options: names -> plain JSON values
            assert name == "strategy_options" and all(type(k) is str for k in value)
    cfg.validate()
    assert tp.TangoConfig.from_json(cfg.to_json()) == cfg
    assert tp.TangoConfig.from_dict(cfg.to_dict()) == cfg
    assert pickle.loads(pickle.dumps(cfg)) == cfg


@FAST
@given(st.dictionaries(st.sampled_from(_FIELDS), _VALUES, max_size=4))
def test_property_construction_gives_a_sound_config_or_value_error(values):
    try:
        cfg = tp.TangoConfig(**values)
    except ValueError:
        return
    _assert_sound(cfg)


@FAST
@given(st.sampled_from(_FIELDS), _VALUES)
def test_property_assignment_keeps_a_sound_config_or_value_error_and_no_change(name, value):
    cfg = tp.TangoConfig(retention_ratio=0.3, sink_positions=[1])
    before = copy.deepcopy(cfg)
    try:
        setattr(cfg, name, value)
    except ValueError:
        assert cfg == before
        return
    _assert_sound(cfg)


# ============================================================= 5b. property: the engine's invariants
@st.composite
def _engine_inputs(draw):
    T, H, W = draw(st.integers(1, 6)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    L = H * W
    D = draw(st.sampled_from([8, 10, 12, 16, 24, 32]))  # even and >= 6: ST-RoPE sections (strope_sections)
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
    kind = draw(st.sampled_from(["random", "few_vectors", "static"]))
    if kind == "random":
        feats = torch.randn(T, L, D, generator=g)
    elif kind == "few_vectors":  # exact duplicates and ties: degenerate clusters, identical scores
        basis = torch.randn(draw(st.integers(1, 3)), D, generator=g)
        feats = basis[torch.randint(0, basis.shape[0], (T, L), generator=g)]
    else:  # the same frame repeated with a little noise: static tokens, multi-frame segments
        feats = torch.randn(1, L, D, generator=g) + 0.05 * torch.randn(T, L, D, generator=g)
    feats = feats.to(draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16])))
    sal = torch.rand(T, L, generator=g)
    if draw(st.booleans()):
        sal = (sal * 3).floor()  # ties
    timestamps = None
    if draw(st.booleans()):
        timestamps = torch.cumsum(torch.rand(T, generator=g, dtype=torch.float64) * 2, 0)
    segmentation = draw(st.sampled_from(["holitom", "fastvid"]))
    frame_embeddings = torch.randn(T, 8, generator=g) if segmentation == "fastvid" else None
    config = tp.TangoConfig(
        retention_ratio=draw(st.floats(0.0, 1.0, exclude_min=True)),
        context_ratio=draw(st.sampled_from([0.0, 0.4, 0.7, 1.0])),
        alpha=draw(st.sampled_from([1.0, 1.5, 3.0])),
        num_neighbors=draw(st.integers(1, 8)),
        segmentation=segmentation,
        fastvid_min_cuts=draw(st.integers(1, 4)),
        sink_positions=draw(st.lists(st.integers(0, L - 1), max_size=2, unique=True)),
        reference_merge_order=draw(st.booleans()),
        strategy=draw(st.sampled_from(["tango", "topk", "uniform"])),
    )
    return feats, sal, (H, W), timestamps, config, frame_embeddings


def _clone(x):
    return None if x is None else x.clone()


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(_engine_inputs())
def test_property_engine_invariants(inputs):
    feats, sal, grid_hw, timestamps, config, frame_embeddings = inputs
    T, L, D = feats.shape
    originals = [_clone(x) for x in (feats, sal, timestamps, frame_embeddings)]
    res = tp.prune_video_tokens(feats, sal, grid_hw, timestamps, config, frame_embeddings)
    again = tp.prune_video_tokens(feats, sal, grid_hw, timestamps, config, frame_embeddings)

    # inputs untouched, output deterministic
    for before, after in zip(originals, (feats, sal, timestamps, frame_embeddings)):
        assert before is None or torch.equal(before, after)
    assert torch.equal(res.kept_indices, again.kept_indices) and torch.equal(res.features, again.features)

    # the plan's form: what check_plan enforces for every strategy holds for the built-ins
    idx, out = res.kept_indices, res.features
    K = idx.numel()
    assert idx.dtype == torch.long and idx.dim() == 1 and K >= 1
    assert bool((idx[1:] > idx[:-1]).all()) and int(idx[0]) >= 0 and int(idx[-1]) < T * L
    assert out.shape == (K, D) and out.dtype == feats.dtype and bool(torch.isfinite(out).all())
    _check_plan()(res, SimpleNamespace(features=feats), config.strategy)

    flat = feats.reshape(T * L, D)
    if config.strategy in ("topk", "uniform"):
        # the documented count rule: ceil(L * r) per frame (at least one), the tokens' own features
        per_frame = max(1, math.ceil(L * config.retention_ratio))
        assert torch.bincount(idx // L, minlength=T).tolist() == [per_frame] * T
        assert torch.equal(out, flat[idx])
        if config.strategy == "topk":  # every kept score >= every dropped score of its frame (sinks score 0)
            scores = sal.clone()
            if config.sink_positions:
                scores[:, config.sink_positions] = 0
            kept = torch.zeros(T * L, dtype=torch.bool)
            kept[idx] = True
            kept = kept.view(T, L)
            for t in range(T):
                if not kept[t].all():
                    assert scores[t][kept[t]].min() >= scores[t][~kept[t]].max()
    else:
        # Tango keeps a subset and merges by convex combinations (weighted means of tokens): every output
        # coordinate lies within the input's range, up to rounding (merges are computed in float32, so float64
        # input gets float32 rounding there)
        assert K <= T * L
        lo, hi = flat.double().amin(dim=0), flat.double().amax(dim=0)
        eps = max(torch.finfo(feats.dtype).eps, torch.finfo(torch.float32).eps)
        tol = 8 * eps * (flat.double().abs().amax() + 1)
        assert bool((out.double() >= lo - tol).all()) and bool((out.double() <= hi + tol).all())
