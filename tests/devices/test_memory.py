"""devices.memory: free bytes per device from the device's report or the host's memory,
and the search's cache/stream choice that asks it."""
import jax
import pytest

from sparsity_jax.devices import memory
from sparsity_jax.search.thresholds import choose_mode


class FakeDevice:
    def __init__(self, platform, stats=None):
        self.platform, self._stats = platform, stats

    def memory_stats(self):
        return self._stats


@pytest.fixture
def host(monkeypatch, tmp_path):
    """A host with 8 GiB available and two local CPU devices."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal:       {16 << 20} kB\nMemFree:        {1 << 20} kB\nMemAvailable:   {8 << 20} kB\n")
    monkeypatch.setattr(memory, "MEMINFO", str(meminfo))
    devices = [FakeDevice("cpu"), FakeDevice("cpu")]
    monkeypatch.setattr(jax, "local_devices", lambda: devices)
    return devices


def test_cpu_devices_share_the_hosts_available_memory(host):
    assert memory.host_available_bytes() == 8 << 30
    assert memory.free_bytes(host[0]) == 4 << 30
    assert memory.min_free_bytes() == 4 << 30
    assert memory.min_free_bytes(budget=123) == 123


def test_accelerators_report_their_own_memory(host, monkeypatch):
    gpus = [FakeDevice("gpu", {"bytes_limit": 10 << 30, "bytes_in_use": 3 << 30}),
            FakeDevice("gpu", {"bytes_limit": 10 << 30, "bytes_in_use": 1 << 30})]
    monkeypatch.setattr(jax, "local_devices", lambda: gpus)
    assert memory.free_bytes(gpus[1]) == 9 << 30
    assert memory.min_free_bytes() == 7 << 30  # the most loaded device
    assert memory.free_bytes(FakeDevice("gpu")) == memory.UNKNOWN_FREE  # nothing reported


def test_without_meminfo_sysconf_answers(host, monkeypatch, tmp_path):
    monkeypatch.setattr(memory, "MEMINFO", str(tmp_path / "missing"))
    pages = {"SC_AVPHYS_PAGES": 1 << 20, "SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(memory.os, "sysconf", pages.__getitem__)
    assert memory.free_bytes(host[0]) == (4 << 30) // 2


def test_choose_mode_caches_when_the_cache_fits_in_half_the_free_memory(host):
    free = 4 << 30  # per device: 8 GiB over two CPU devices
    assert choose_mode("auto", free // 2) == "cache"
    assert choose_mode("auto", free // 2 + 1) == "stream"
    assert choose_mode("auto", 1 << 30, memory_budget=1 << 30) == "stream"
    assert choose_mode("stream", 1) == "stream"
