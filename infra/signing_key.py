"""The KMS key that signs model manifests (`-c onnxlift.signing=kms`): see
onnxlift_serving.signing. Publishers sign with it (`onnxlift publish --signing-key kms:<arn>`,
with their own credentials); the model functions may only verify. SageMaker endpoints get no
grant: their containers run with network isolation and cannot reach KMS.
"""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from constructs import Construct

__all__ = ["ManifestSigningKey"]


class ManifestSigningKey(Construct):
    """An asymmetric ECC_NIST_P256 SIGN_VERIFY key (KMS cannot rotate asymmetric keys)."""

    def __init__(self, scope: Construct, id: str) -> None:
        super().__init__(scope, id)
        self.key = kms.Key(
            self,
            "Key",
            description="onnxlift: signs model manifests (ECDSA_SHA_256 over their sha256)",
            key_spec=kms.KeySpec.ECC_NIST_P256,
            key_usage=kms.KeyUsage.SIGN_VERIFY,
            # Every published signature names it: deleting the stack must not strand them.
            removal_policy=RemovalPolicy.RETAIN,
        )

    @property
    def spec(self) -> str:
        """What MODEL_SIGNATURE_KEY and `--signing-key` take."""
        return f"kms:{self.key.key_arn}"

    def grant_verify(self, grantee: iam.IGrantable) -> iam.Grant:
        return self.key.grant(grantee, "kms:Verify")
