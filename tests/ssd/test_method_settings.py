"""The config section `method` (formerly `ssd`): old configs, saved configs and override
keys read through `settings.upgrade` as today's section."""
import pytest

from sparsity_jax.errors import UserError
from sparsity_jax.settings import Settings, from_saved, load, upgrade
from tests.train.helpers import tiny_config


def test_old_ssd_section_reads_as_method():
    old = {"ssd": {"method": "pld", "pld_drop_rate": 0.5, "router_grad": "true"},
           "train": {"record": "none", "metrics_every": 0}}
    new = upgrade(old)
    assert "ssd" not in new and new["method"] == {"name": "pld", "pld_drop_rate": 0.5, "router_grad": True}
    s = from_saved(old)
    assert s.method.name == "pld" and s.method.pld_drop_rate == 0.5 and s.method.router_grad
    assert old["ssd"]["method"] == "pld"  # the caller's dict is not changed


def test_enabled_before_method_and_todays_form_unchanged():
    assert upgrade({"ssd": {"enabled": True}})["method"] == {"name": "ssd"}
    assert upgrade({"ssd": {"enabled": False}})["method"] == {}
    today = tiny_config(**{"method.name": "smoe", "method.num_experts": 4, "method.top_k": 2}).to_dict()
    assert upgrade(today) == today and Settings.from_dict(upgrade(today)).method.name == "smoe"


def test_old_override_keys_and_config_files(tmp_path):
    s = tiny_config(**{"ssd.method": "smoe", "ssd.num_experts": 4, "ssd.top_k": 2})
    assert (s.method.name, s.method.num_experts, s.method.top_k) == ("smoe", 4, 2)
    old_file = tmp_path / "old.py"
    old_file.write_text("def get_config():\n    return {'ssd': {'method': 'moe_dropout', 'num_experts': 4, "
                        "'top_k': 2}, 'model': {'d_ff': 64}}\n")
    assert load(str(old_file)).method.name == "moe_dropout"
    with pytest.raises(UserError, match="config.method.name='sparse'"):
        tiny_config(**{"ssd.method": "sparse"})
    with pytest.raises(UserError, match="unknown config key 'config.method.nope'"):
        tiny_config(**{"ssd.nope": "1"})
