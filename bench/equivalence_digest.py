"""Compares the numbers two trees of short runs left behind (bench/refactor_equivalence.sh
before and after a refactor): metrics.jsonl, eval.json, cett.json, report/ppl.json and
report/ssd.json, with the keys issue 19 renamed mapped to today's names and the timings
and paths left out. Prints, per file, how many numbers were compared and the largest
absolute difference; exits 1 when a key is missing on one side or a difference exceeds --tol.

    python bench/equivalence_digest.py BEFORE_DIR AFTER_DIR [--tol 0]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

TIMING = ("seconds", "tokens_per_sec", "step_time", "mfu", "ssd_seconds", "method_seconds", "wall_clock",
          "workdir", "output_dir", "saved", "compile", "dispatch")
RENAMED = {"ssd": "method"}  # metrics split


def _rename(obj, path: str):
    """Old key vocabulary → today's (issue 19)."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if path.endswith("cett.json") and k == "cett":
                k = "realised_cett"
            elif path.endswith(("ppl.json", "eval.json")) and k in ("cett", "cett_upper"):
                k = "target_" + k  # the search's target (and its bracket), not a realised value
            out[k] = _rename(v, path)
        return out
    if isinstance(obj, list):
        return [_rename(v, path) for v in obj]
    return obj


def _flatten(obj, prefix: str, out: dict) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not any(t in k for t in TIMING):
                _flatten(v, f"{prefix}.{k}", out)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _flatten(v, f"{prefix}[{i}]", out)
    else:
        out[prefix] = obj


def digest(root: str) -> dict[str, dict]:
    """{relative file: {flattened key: value}} of every compared file under `root`."""
    out = {}
    for d, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            rel = os.path.relpath(os.path.join(d, f), root)
            flat: dict = {}
            if f == "metrics.jsonl":
                for line in open(os.path.join(d, f)):
                    rec = json.loads(line)
                    split = rec.pop("split")
                    split = RENAMED.get(split, split)
                    _flatten(rec, f"{split}@{rec.pop('step')}", flat)
            elif f in ("eval.json", "cett.json", "ppl.json", "ssd.json"):
                _flatten(_rename(json.load(open(os.path.join(d, f))), f), "", flat)
            else:
                continue
            out[rel] = flat
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--tol", type=float, default=0.0)
    args = p.parse_args()
    a, b = digest(args.before), digest(args.after)
    bad = 0
    for rel in sorted(set(a) | set(b)):
        if rel not in a or rel not in b:
            print(f"{rel}: only in {'after' if rel in b else 'before'}")
            bad += 1
            continue
        keys = set(a[rel]) | set(b[rel])
        missing = sorted(k for k in keys if k not in a[rel] or k not in b[rel])
        diffs = []
        for k in keys - set(missing):
            x, y = a[rel][k], b[rel][k]
            if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
                diffs.append((abs(x - y), k))
            elif x != y:
                diffs.append((float("inf"), k))
        worst = max(diffs, default=(0.0, ""))
        ok = not missing and worst[0] <= args.tol
        bad += not ok
        print(f"{rel}: {len(keys)} values, max |before − after| = {worst[0]:.3g}"
              + (f" ({worst[1]})" if worst[0] else "") + (f"; keys on one side only: {missing[:6]}" if missing else "")
              + ("" if ok else "  <-- differs"))
    print("identical" if not bad else f"{bad} file(s) differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
