"""What a manifest signature check adds to a cold start, per loaded version.

    PYTHONPATH=.:layers/runtime .venv/bin/python scripts/signing_cost.py --runs 7

Each run is a fresh Python process that has already made its S3 client (as the function has
when it loads a version), then times: setting up the key (file: import cryptography and load
the PEM; kms: create the KMS client), the first verify and a second one. KMS is moto server
on loopback: an indication only; the real in-region kms:Verify is a network round trip.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3

from onnxlift.local.moto_server import aws_env, start_moto
from onnxlift.local.processes import free_port

__all__ = ["main"]

PROBE = r"""
import sys, time
import boto3
boto3.client("s3")
from onnxlift_serving.signing import SignaturePolicy, open_key
spec, folder, kind = sys.argv[1], sys.argv[2], sys.argv[3]
manifest = open(f"{folder}/manifest.json", "rb").read()
signature = open(f"{folder}/{kind}.sig", "rb").read()
t0 = time.perf_counter()
policy = SignaturePolicy(open_key(spec))
if kind == "kms":
    policy.key._kms()
t1 = time.perf_counter()
policy.check(manifest, signature, "probe")
t2 = time.perf_counter()
policy.check(manifest, signature, "probe")
t3 = time.perf_counter()
print((t1 - t0) * 1000, (t2 - t1) * 1000, (t3 - t2) * 1000)
"""


def _prepare(folder: Path) -> dict[str, str]:
    """Both keys, a manifest-sized document and its two signatures; kind -> key spec."""
    from onnxlift_serving.signing import FileKey, KmsKey, create_file_key, signature_document

    kms = boto3.client("kms")
    arn = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
    create_file_key(folder / "key.pem", folder / "key.pub.pem")
    manifest = b"x" * 2000  # a manifest's size, give or take
    (folder / "manifest.json").write_bytes(manifest)
    (folder / "kms.sig").write_bytes(signature_document(manifest, KmsKey(arn, kms)))
    (folder / "file.sig").write_bytes(signature_document(manifest, FileKey(folder / "key.pem")))
    return {"file": f"file:{folder / 'key.pub.pem'}", "kms": f"kms:{arn}"}


def _get_cost(runs: int) -> float:
    """Median ms of one extra S3 GET of a manifest.sig-sized object (moto)."""
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="signing-cost")
    s3.put_object(Bucket="signing-cost", Key="manifest.sig", Body=b"x" * 250)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        s3.get_object(Bucket="signing-cost", Key="manifest.sig")["Body"].read()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="signing-cost-"))
    port = free_port()
    moto = start_moto(port=port, log=folder / "moto.log")
    try:
        os.environ.update(aws_env(f"http://127.0.0.1:{port}"))
        for kind, spec in _prepare(folder).items():
            rows = [
                [float(x) for x in subprocess.run(
                    [sys.executable, "-c", PROBE, spec, str(folder), kind],
                    capture_output=True, text=True, check=True, timeout=60,
                ).stdout.split()]
                for _ in range(args.runs)
            ]  # fmt: skip
            setup, first, second = (statistics.median(column) for column in zip(*rows, strict=True))
            print(
                f"{kind:4}: key setup {setup:.1f} ms, first verify {first:.1f} ms, "
                f"next verify {second:.1f} ms (medians of {args.runs} fresh processes)"
            )
        print(f"extra S3 GET of manifest.sig (moto): {_get_cost(20):.1f} ms (median of 20)")
    finally:
        moto.stop()


if __name__ == "__main__":
    main()
