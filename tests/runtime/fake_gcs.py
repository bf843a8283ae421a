"""A stand-in for Google Cloud Storage with no network: `gs://BUCKET/PATH` is served by a
local directory ROOT/BUCKET/PATH, through the two routes a real run takes — etils.epath's
fsspec backend (every JSON, log, report and Orbax metadata file) and TensorStore's
kvstore (Orbax's array data) — so a workdir `gs://...` exercises the non-local code paths.
A module that wrongly treats the workdir as a local path (`os.path.abspath`, `open()`)
writes under the current directory (`./gs:/...`), which `local_leaks` finds.
"""
from __future__ import annotations

import os

from fsspec.implementations.local import LocalFileSystem


class FakeGCS(LocalFileSystem):
    """fsspec filesystem for the `gs` / `gcs` protocols over a local ROOT (set `root`)."""

    protocol = ("gs", "gcs")
    root = ""

    def __init__(self, *args, **kwargs):  # epath passes finalize_on_close=True
        super().__init__()

    @classmethod
    def _strip_protocol(cls, path):
        path = os.fspath(path)
        for prefix in ("gs://", "gcs://"):
            if path.startswith(prefix):
                return f"{cls.root}/{path[len(prefix):]}".rstrip("/")
        if path.startswith(cls.root):
            return path.rstrip("/")
        return super()._strip_protocol(path)

    def _remote(self, local: str) -> str:
        """ROOT/BUCKET/PATH → BUCKET/PATH (what GCS's own fsspec returns)."""
        return local[len(self.root) + 1:] if local.startswith(self.root + "/") else local

    def glob(self, path, **kwargs):
        return [self._remote(p) for p in super().glob(path, **kwargs)]

    def unstrip_protocol(self, name):
        return "gs://" + self._remote(name)


def install(monkeypatch, root: str) -> None:
    """Serves gs:// from `root` for epath (fsspec backend) and TensorStore (Orbax)."""
    import fsspec
    from etils.epath import backend, gpath
    from orbax.checkpoint._src.path import gcs_utils

    FakeGCS.root = str(root)
    fsspec.register_implementation("gs", FakeGCS, clobber=True)
    fsspec.register_implementation("gcs", FakeGCS, clobber=True)
    backend.fsspec_backend._get_filesystem.cache_clear()
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)  # else epath uses tf.io.gfile for gs://

    def kvstore(path: str) -> dict:
        bucket_and_path = path[len("gs://"):]
        return {"driver": "file", "path": f"{root}/{bucket_and_path}"}

    monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs", kvstore)
    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)  # a bucket look-up


def local_leaks(cwd) -> list[str]:
    """Files a module wrote under `cwd` by treating gs:// as a local path."""
    return [os.path.join(d, f) for d, _, files in os.walk(cwd) for f in files if "gs:" in d]
