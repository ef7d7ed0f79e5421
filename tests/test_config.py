"""Profile loading and validation; profile keys vs notebook parameters."""
import json

import papermill
import pytest

from apq_lib.config import PROFILES, ConfigError, load_profile
from apq_lib.runner import NB_DIR, NOTEBOOKS


@pytest.mark.parametrize("name", PROFILES)
def test_profiles_load_and_validate(name):
    cfg = load_profile(name)
    assert cfg.name == name
    assert len(cfg.space.stage_widths) == len(cfg.space.stage_strides)
    assert cfg.supernet.phases, "every profile trains the supernet"


def test_params_hash_changes_with_overrides():
    a = load_profile("smoke")
    b = load_profile("smoke", {"seed": 1})
    assert a.params_hash() != b.params_hash()
    assert load_profile("smoke").params_hash() == a.params_hash()


@pytest.mark.parametrize("override, key", [
    ({"supernet.epochs_ful": 2}, "supernet.epochs_ful"),
    ({"nonsense": 1}, "nonsense"),
    ({"data": {"batchsize": 3}}, "data.batchsize"),
])
def test_unknown_key_is_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_profile("smoke", override)


@pytest.mark.parametrize("override, key", [
    ({"data.batch_size": "big"}, "data.batch_size"),
    ({"space.stage_widths": [8, "x"]}, "space.stage_widths"),
    ({"search.mutation_prob": True}, "search.mutation_prob"),
])
def test_wrong_type_is_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_profile("smoke", override)


@pytest.mark.parametrize("override, key", [
    ({"space.bit_choices": [0, 4]}, "space.bit_choices"),
    ({"space.bit_choices": [4, 9]}, "space.bit_choices"),
    ({"data.val_size": 0}, "data.val_size"),
    ({"space.stage_strides": [1, 2]}, "space.stage_strides"),
    ({"search.parents": 1000}, "search.parents"),
    ({"device": "tpu"}, "device"),
])
def test_impossible_value_is_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_profile("smoke", override)


def test_unknown_profile():
    with pytest.raises(ConfigError, match="unknown profile"):
        load_profile("huge")


def test_float_accepts_int_and_types_are_coerced():
    cfg = load_profile("smoke", {"search.mutation_prob": 1})
    assert isinstance(cfg.search.mutation_prob, float) and cfg.search.mutation_prob == 1.0


@pytest.mark.parametrize("nb", NOTEBOOKS)
def test_notebook_parameters_known(nb):
    """papermill only warns on unknown parameters: every key a profile passes to a notebook
    must be a parameter of that notebook, and every notebook takes `profile`."""
    params = papermill.inspect_notebook(str(NB_DIR / f"{nb}.ipynb"))
    assert "profile" in params and "overrides" in params
    for name in PROFILES:
        for key in load_profile(name).notebooks.get(nb, {}):
            assert key in params, f"params_{name}.yaml sets {key!r} for {nb}, not a parameter"


def test_notebook_sections_name_real_notebooks():
    for name in PROFILES:
        for nb in load_profile(name).notebooks:
            assert nb in NOTEBOOKS, f"params_{name}.yaml: notebooks.{nb} is not a notebook"


@pytest.mark.parametrize("nb", NOTEBOOKS)
def test_parameters_cell_holds_only_literals(nb):
    import ast
    cells = json.loads((NB_DIR / f"{nb}.ipynb").read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert "parameters" in code[0].get("metadata", {}).get("tags", [])
    tree = ast.parse("".join(code[0]["source"]))
    for stmt in tree.body:
        assert isinstance(stmt, ast.Assign), ast.dump(stmt)
        ast.literal_eval(stmt.value)
