"""`devices.hardware`: Cloud TPU slice names against the Cloud TPU documentation's
shapes and host counts, libtpu's own form, bad names and a missing libtpu as one
sentence with exit 2, and the environment that keeps libtpu off the network."""
import importlib.util

import pytest

from sparsity_jax import cli
from sparsity_jax.errors import UserError
from sparsity_jax.devices import hardware

# (name, libtpu topology, chips, hosts): from the Cloud TPU documentation's tables of
# v4, v5p, v5e and v6e slices (TensorCores for v4 / v5p names, chips for v5e / v6e)
DOCUMENTED = [
    ("v4-8", "v4:2x2x1", 4, 1), ("v4-16", "v4:2x2x2", 8, 2), ("v4-32", "v4:2x2x4", 16, 4),
    ("v4-128", "v4:4x4x4", 64, 16), ("v4-1024", "v4:8x8x8", 512, 128),
    ("v5p-8", "v5p:2x2x1", 4, 1), ("v5p-64", "v5p:2x4x4", 32, 8), ("v5p-256", "v5p:4x4x8", 128, 32),
    ("v5litepod-1", "v5e:1x1", 1, 1), ("v5litepod-4", "v5e:2x2", 4, 1), ("v5litepod-8", "v5e:2x4", 8, 1),
    ("v5litepod-16", "v5e:4x4", 16, 4), ("v5litepod-256", "v5e:16x16", 256, 64), ("v5e-32", "v5e:4x8", 32, 8),
    ("v6e-8", "v6e:2x4", 8, 1), ("v6e-64", "v6e:8x8", 64, 16), ("v6e-128", "v6e:8x16", 128, 32),
]


@pytest.mark.parametrize("name,libtpu,chips,hosts", DOCUMENTED)
def test_cloud_names_give_the_documented_slices(name, libtpu, chips, hosts):
    topo = hardware.parse_topology(name)
    assert (topo.libtpu_name, topo.chips, topo.hosts) == (libtpu, chips, hosts)
    again = hardware.parse_topology(libtpu)  # libtpu's own form names the same slice
    assert (again.libtpu_name, again.chips, again.hosts) == (libtpu, chips, hosts)
    assert hardware.parse_topology(again.cloud_name).libtpu_name == libtpu


@pytest.mark.parametrize("name", ["v5p-6", "v5p-12", "v4-4", "v5litepod-2", "v6e-512", "v7x-8", "v5p:2x2", "tpu", ""])
def test_unknown_slices_are_one_sentence_naming_the_known_ones(name):
    with pytest.raises(UserError, match="v5p-8 … v5p-8192") as e:
        hardware.parse_topology(name)
    assert str(e.value).count(".") <= 2 and "\n" not in str(e.value)


def test_chips_by_device_kind_and_name():
    class Device:
        def __init__(self, kind):
            self.device_kind = kind
    assert hardware.chip_of(Device("TPU v5 lite")).name == "v5e"  # the longest prefix wins over "TPU v5"
    assert hardware.chip_of(Device("TPU v5")).name == "v5p"
    assert hardware.chip_of(Device("TPU v6 lite")).peak_flops == 918e12
    assert hardware.chip_of(Device("cpu")) is None
    assert hardware.chip_named("v5e").hbm_bytes == 16 * 1024**3
    with pytest.raises(UserError, match="v4, v5e, v5p"):
        hardware.chip_named("v9")


def test_no_tpu_environment_keeps_libtpu_off_the_network(monkeypatch):
    for key in ("TPU_SKIP_MDS_QUERY", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES", "TPU_WORKER_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TPU_WORKER_ID", "3")  # a value the user set stays
    monkeypatch.setattr(hardware, "tpu_attached", lambda: False)
    hardware.no_tpu_environment("v5litepod-16")
    import os
    assert (os.environ["TPU_SKIP_MDS_QUERY"], os.environ["TPU_ACCELERATOR_TYPE"], os.environ["TPU_WORKER_HOSTNAMES"],
            os.environ["TPU_WORKER_ID"]) == ("1", "v5litepod-16", "localhost", "3")
    monkeypatch.delenv("TPU_SKIP_MDS_QUERY")
    monkeypatch.setattr(hardware, "tpu_attached", lambda: True)  # a TPU VM: libtpu does its own discovery
    hardware.no_tpu_environment()
    assert "TPU_SKIP_MDS_QUERY" not in os.environ


ARGS = ["train", "--config", "configs/default.py", "--dry-run"]


@pytest.mark.parametrize("topology,message", [("v5p-7", "not a TPU slice this library knows"),
                                              ("v9:2x2", "not a TPU slice this library knows")])
def test_dry_run_on_an_unknown_slice_exits_2(topology, message, tmp_path, capsys):
    assert cli.main(ARGS + ["--workdir", str(tmp_path / "run"), "--topology", topology]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_dry_run_without_libtpu_exits_2(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "libtpu" else real(name, *a))
    assert cli.main(ARGS + ["--workdir", str(tmp_path / "run"), "--topology", "v5p-8"]) == 2
    err = capsys.readouterr().err
    assert "needs libtpu" in err and "[tpu]" in err and not (tmp_path / "run").exists()
