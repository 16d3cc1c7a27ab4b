"""The model registry: a versioned, private S3 bucket, plus the bucket its access logs go to."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra import nag

ACCESS_LOG_EXPIRY_DAYS = 365
NONCURRENT_LOG_DAYS = 30  # how long a deleted or expired log object can be restored

# The IAM5 finding that `grant_model_read` brings; every role it is granted to
# (inference functions, SageMaker execution roles) acknowledges it with this reason.
REASON_MODEL_PREFIX = (
    "Read-only (s3:GetObject, s3:GetObjectVersion) on this model's own registry prefix "
    "models/<name>/*: the wildcard is the object key under the prefix (versions, manifest, "
    "assets); other models' prefixes are not covered."
)
REASON_LOG_BUCKET_NOT_LOGGED = (
    "This is the access-log bucket itself: it receives the registry's server access logs. "
    "Logging it to itself would log its own log deliveries, and logging it to yet another "
    "bucket only moves the question; it is private, versioned, SSE-S3, TLS-only and retained."
)


class ModelRegistry(Construct):
    """`models/<name>/<version>/...` objects; see onnxlift_serving.layout for the key layout."""

    def __init__(self, scope: Construct, id: str, *, bucket_name: str | None = None) -> None:
        super().__init__(scope, id)
        # Deliver access logs under a bucket policy rather than the legacy log-delivery ACL
        # (which BUCKET_OWNER_ENFORCED forbids), whatever the app's feature flags say.
        self.node.set_context("@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy", True)

        # Server access logs. The destination must use SSE-S3 (SSE-KMS is not supported for
        # access log delivery); delivery is granted by a bucket policy, not ACLs.
        self.access_log_bucket = s3.Bucket(
            self,
            "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            # A log object deleted or overwritten stays recoverable, as a noncurrent version,
            # for NONCURRENT_LOG_DAYS; log keys are unique, so little else is stored twice.
            versioned=True,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-access-logs",
                    expiration=Duration.days(ACCESS_LOG_EXPIRY_DAYS),
                    noncurrent_version_expiration=Duration.days(NONCURRENT_LOG_DAYS),
                    abort_incomplete_multipart_upload_after=Duration.days(1),
                )
            ],
            # The logs are the audit trail of the registry, which is retained too.
            removal_policy=RemovalPolicy.RETAIN,
        )

        self.bucket = s3.Bucket(
            self,
            "Bucket",
            bucket_name=bucket_name,
            versioned=True,
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=self.access_log_bucket,
            server_access_logs_prefix="registry/",
            lifecycle_rules=[
                # Never expires objects or versions: published models must not be lost.
                s3.LifecycleRule(
                    id="abort-incomplete-uploads",
                    abort_incomplete_multipart_upload_after=Duration.days(7),
                )
            ],
            removal_policy=RemovalPolicy.RETAIN,
        )

    def acknowledge_findings(self) -> None:
        """checkov skips for the registry's buckets, each with its reason."""
        nag.checkov_skip(self.access_log_bucket, "CKV_AWS_18", REASON_LOG_BUCKET_NOT_LOGGED)

    @staticmethod
    def model_prefix(model_name: str) -> str:
        return f"models/{model_name}/"

    def model_objects_arn(self, model_name: str) -> str:
        """ARN pattern of every object under one model's prefix."""
        return self.bucket.arn_for_objects(f"{self.model_prefix(model_name)}*")

    def grant_model_read(self, grantee: iam.IGrantable, model_name: str) -> None:
        """Read access to `models/<model_name>/*` and nothing else in the bucket."""
        prefix = self.model_prefix(model_name)
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                sid="ReadOwnModelObjects",
                actions=["s3:GetObject", "s3:GetObjectVersion"],
                resources=[self.model_objects_arn(model_name)],
            )
        )
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                sid="ListOwnModelPrefix",
                actions=["s3:ListBucket"],
                resources=[self.bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{prefix}*"]}},
            )
        )
