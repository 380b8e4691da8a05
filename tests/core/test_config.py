"""Tests for compress_core.data.config: loading, typed overrides, validation, saving."""

import json
import sys
import textwrap

import pytest
from ml_collections import ConfigDict

from compress_core.data.config import (
    check_choice,
    check_positive,
    check_range,
    config_to_dict,
    flatten,
    load_config,
    save_config,
)
from compress_core.errors import UserError

BASE = """
import ml_collections
from ml_collections import config_dict
from compress_core.data.config import check_choice, check_range

def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0                       # int
    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet20"        # str
    c.model.widths = [16, 32, 64]    # list
    c.model.kernel = (3, 3)          # tuple
    c.prune = ml_collections.ConfigDict()
    c.prune.ratio = 0.5              # float
    c.prune.global_ = False          # bool
    c.prune.schedule = ml_collections.ConfigDict()
    c.prune.schedule.steps = 10      # nested int
    c.train = ml_collections.ConfigDict()
    c.train.epochs = 3
    c.train.lr_milestones = config_dict.placeholder(tuple)   # typed None
    c.train.resume = None            # untyped None
    return c
"""

VALIDATE = """
def validate(config):
    check_range(config, "prune.ratio", 0.0, 1.0)
    check_choice(config, "model.name", ["resnet20", "vgg16"])
"""


def write(tmp_path, body, name="exp.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


@pytest.fixture
def base(tmp_path):
    return write(tmp_path, BASE + VALIDATE)


def test_load_defaults_locked_and_no_sys_modules_pollution(base):
    before = set(sys.modules)
    cfg = load_config(base)
    assert cfg.prune.ratio == 0.5 and cfg.model.widths == [16, 32, 64]
    assert not {m for m in set(sys.modules) - before if "hparams" in m}
    with pytest.raises(AttributeError):
        cfg.prune.ration = 0.1  # typo of a field name in code fails: config is locked


def test_typed_overrides(base):
    cfg = load_config(
        base,
        [
            "seed=7",
            "prune.ratio=0.25",
            "prune.global_=TRUE",
            "model.name=vgg16",
            "model.widths=[8, 16]",
            "model.kernel=[5,5]",
            "prune.schedule.steps=20",
            "train.lr_milestones=(10, 20)",
            "train.resume=/tmp/ckpt.pt",
        ],
    )
    assert cfg.seed == 7 and isinstance(cfg.seed, int)
    assert cfg.prune.ratio == 0.25
    assert cfg.prune.global_ is True
    assert cfg.model.name == "vgg16"
    assert cfg.model.widths == [8, 16]
    assert cfg.model.kernel == (5, 5) and isinstance(cfg.model.kernel, tuple)
    assert cfg.prune.schedule.steps == 20
    assert cfg.train.lr_milestones == (10, 20)
    assert cfg.train.resume == "/tmp/ckpt.pt"  # untyped None + bare word -> string


def test_float_field_accepts_int_and_untyped_none_uses_literal_eval(base):
    cfg = load_config(base, ["prune.ratio=0", "train.resume=[1, 2]"])
    assert cfg.prune.ratio == 0.0 and isinstance(cfg.prune.ratio, float)
    assert cfg.train.resume == [1, 2]


def test_config_prefix_accepted(base):
    cfg = load_config(base, ["--config.prune.ratio=0.75", "--config.train.epochs=9"])
    assert cfg.prune.ratio == 0.75 and cfg.train.epochs == 9


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("true", True),
        ("False", False),
        ("1", True),
        ("0", False),
        ("YES", True),
        ("no", False),
    ],
)
def test_bool_parsing(base, raw, expected):
    assert load_config(base, [f"prune.global_={raw}"]).prune.global_ is expected


def test_bool_rejects_garbage(base):
    with pytest.raises(UserError, match=r"'prune.global_' expects bool, got 'maybe'"):
        load_config(base, ["prune.global_=maybe"])


def test_unknown_field_names_field_and_siblings(base):
    with pytest.raises(UserError) as e:
        load_config(base, ["prune.ratoi=0.1"])
    msg = str(e.value)
    assert "unknown config field 'prune.ratoi'" in msg
    assert "known fields under 'prune':" in msg and "ratio" in msg
    assert "did you mean 'prune.ratio'" in msg and "\n" not in msg


def test_unknown_group_names_full_key(base):
    with pytest.raises(
        UserError,
        match=r"unknown config field 'prnue.ratio' \(known fields at "
        r"top level: .*did you mean 'prune.ratio'",
    ):
        load_config(base, ["prnue.ratio=0.1"])
    with pytest.raises(UserError, match=r"'train.epochs' is not a group"):
        load_config(base, ["train.epochs.x=1"])


@pytest.mark.parametrize(
    "override,expected",
    [
        ("train.epochs=0.5", "config field 'train.epochs' expects int, got '0.5'"),
        ("prune.ratio=half", "config field 'prune.ratio' expects float, got 'half'"),
        ("model.widths=16", "config field 'model.widths' expects list, got '16'"),
        ("model.kernel=[3,", "config field 'model.kernel' expects tuple, got '[3,'"),
    ],
)
def test_wrong_type_names_field_and_value(base, override, expected):
    with pytest.raises(UserError) as e:
        load_config(base, [override])
    assert str(e.value) == expected


@pytest.mark.parametrize("override", ["prune.ratio", "=3", "--config.seed"])
def test_malformed_override(base, override):
    with pytest.raises(UserError, match="malformed config override"):
        load_config(base, [override])


def test_group_cannot_be_overridden_by_value(base):
    with pytest.raises(UserError, match="'prune' is a group"):
        load_config(base, ["prune=0.5"])


def test_validate_hook_called_and_user_error_propagates(base):
    with pytest.raises(
        UserError, match=r"'prune.ratio' must be in \[0.0, 1.0\), got 1.0"
    ):
        load_config(base, ["prune.ratio=1.0"])
    with pytest.raises(
        UserError,
        match=r"'model.name' must be one of 'resnet20', 'vgg16', "
        r"got 'alexnet'",
    ):
        load_config(base, ["model.name=alexnet"])


def test_validate_receives_overridden_locked_config(tmp_path):
    path = write(
        tmp_path,
        """
        import ml_collections
        SEEN = []
        def get_config():
            return ml_collections.ConfigDict({"n": 1})
        def validate(config):
            from compress_core.errors import UserError
            raise UserError(f"seen n={config.n} locked={config.is_locked}")
    """,
    )
    with pytest.raises(UserError, match="seen n=5 locked=True"):
        load_config(path, ["n=5"])


def test_required_placeholder_must_be_set(tmp_path):
    path = write(
        tmp_path,
        """
        import ml_collections
        from ml_collections import config_dict
        def get_config():
            return ml_collections.ConfigDict({"data": {"root": config_dict.required_placeholder(str)}})
    """,
    )
    with pytest.raises(
        UserError, match=r"'data.root' is required; set it with --config.data"
    ):
        load_config(path)
    assert load_config(path, ["data.root=/d"]).data.root == "/d"


def test_missing_file_and_missing_get_config(tmp_path):
    missing = str(tmp_path / "nope.py")
    with pytest.raises(UserError, match="nope.py"):
        load_config(missing)
    bad = write(tmp_path, "X = 1\n", "bad.py")
    with pytest.raises(UserError, match=r"bad.py' does not define get_config"):
        load_config(bad)
    broken = write(tmp_path, "def get_config(:\n", "broken.py")
    with pytest.raises(
        UserError, match=r"syntax error in config file .*broken.py' line 1"
    ):
        load_config(broken)


def test_each_load_is_fresh(tmp_path):
    # A module-level ConfigDict returned by get_config must not leak overrides across loads.
    path = write(
        tmp_path,
        """
        import ml_collections
        CFG = ml_collections.ConfigDict({"a": {"b": 1}, "l": [1, 2]})
        def get_config():
            return CFG
    """,
    )
    first = load_config(path, ["a.b=5", "l=[9]"])
    second = load_config(path)
    assert (first.a.b, first.l) == (5, [9])
    assert (second.a.b, second.l) == (1, [1, 2])
    assert first is not second


def test_save_config_round_trips(base, tmp_path):
    cfg = load_config(base, ["train.lr_milestones=(1,2)", "prune.ratio=0.125"])
    out = tmp_path / "run" / "config.json"
    out.parent.mkdir()
    save_config(cfg, str(out))
    assert [p.name for p in out.parent.iterdir()] == [
        "config.json"
    ]  # no temp file left
    loaded = json.loads(out.read_text())
    assert loaded == config_to_dict(cfg)
    assert loaded["prune"]["ratio"] == 0.125 and loaded["train"]["lr_milestones"] == [
        1,
        2,
    ]
    assert loaded["prune"]["global_"] is False and loaded["train"]["resume"] is None
    # Loading the JSON back into a ConfigDict gives the same values, leaf by leaf.
    back = flatten(ConfigDict(loaded))
    assert back.keys() == flatten(cfg).keys()
    assert all(
        list(v) == back[k] if isinstance(v, tuple) else v == back[k]
        for k, v in flatten(cfg).items()
    )


def test_flatten_dotted_keys(base):
    flat = flatten(load_config(base))
    assert flat["prune.schedule.steps"] == 10
    assert flat["model.widths"] == [16, 32, 64]
    assert flat["train.lr_milestones"] is None
    assert not any(isinstance(v, ConfigDict) for v in flat.values())


def test_checkers_messages():
    cfg = ConfigDict({"a": {"x": 0, "flag": True}, "name": "x"})
    with pytest.raises(UserError, match=r"^config field 'a.x' must be > 0, got 0$"):
        check_positive(cfg, "a.x")
    with pytest.raises(UserError, match=r"'a.flag' must be > 0, got True"):
        check_positive(cfg, "a.flag")  # bools are not numbers here
    check_range(cfg, "a.x", 0, 1)  # lo inclusive by default
    with pytest.raises(UserError, match=r"must be in \(0, inf\), got 0"):
        check_range(cfg, "a.x", 0, None, lo_inclusive=False)
    check_range(cfg, "a.x", None, 0, hi_inclusive=True)
    check_choice(cfg, "name", ("x", "y"))
    with pytest.raises(KeyError, match="no field 'a.y'"):
        check_positive(
            cfg, "a.y"
        )  # a typo in validation code is a bug, not a UserError
