"""The model registry bucket and its access-log bucket."""

from __future__ import annotations

from typing import Any

from aws_cdk.assertions import Match


def registry(synth) -> tuple[str, dict[str, Any]]:
    logical_id = synth.logical_id(synth.stack.registry.bucket)
    return logical_id, synth.resources[logical_id]


def log_bucket(synth) -> tuple[str, dict[str, Any]]:
    logical_id = synth.logical_id(synth.stack.registry.access_log_bucket)
    return logical_id, synth.resources[logical_id]


BLOCK_ALL = {
    "BlockPublicAcls": True,
    "BlockPublicPolicy": True,
    "IgnorePublicAcls": True,
    "RestrictPublicBuckets": True,
}


def test_registry_is_versioned_private_encrypted_and_retained(one) -> None:
    _logical_id, bucket = registry(one)
    props = bucket["Properties"]
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert props["PublicAccessBlockConfiguration"] == BLOCK_ALL
    assert props["BucketEncryption"] == {
        "ServerSideEncryptionConfiguration": [
            {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
        ]
    }
    assert props["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    assert bucket["DeletionPolicy"] == "Retain"
    assert bucket["UpdateReplacePolicy"] == "Retain"
    # No lifecycle rule may ever expire a published model or one of its versions.
    for rule in props.get("LifecycleConfiguration", {}).get("Rules", []):
        assert not {"ExpirationInDays", "NoncurrentVersionExpiration", "ExpirationDate"} & set(rule)


def test_registry_logs_to_the_access_log_bucket(one) -> None:
    _, bucket = registry(one)
    log_id, _ = log_bucket(one)
    assert bucket["Properties"]["LoggingConfiguration"] == {
        "DestinationBucketName": {"Ref": log_id},
        "LogFilePrefix": "registry/",
    }


def test_bucket_name_from_config(one, two) -> None:
    assert "BucketName" not in registry(one)[1]["Properties"]
    assert registry(two)[1]["Properties"]["BucketName"] == "acme-onnxlift-registry"


def test_access_log_bucket_is_private_encrypted_and_expires_logs(one) -> None:
    _, bucket = log_bucket(one)
    props = bucket["Properties"]
    assert props["PublicAccessBlockConfiguration"] == BLOCK_ALL
    # Log delivery only supports SSE-S3 destinations.
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"] == [
        {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
    ]
    assert props["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    assert "AccessControl" not in props  # delivery via bucket policy, not the log ACL
    assert {"ExpirationInDays": 365, "Status": "Enabled"}.items() <= props[
        "LifecycleConfiguration"
    ]["Rules"][0].items()
    assert bucket["DeletionPolicy"] == "Retain"


def test_both_buckets_deny_insecure_transport(one) -> None:
    for bucket_id in (registry(one)[0], log_bucket(one)[0]):
        one.template.has_resource_properties(
            "AWS::S3::BucketPolicy",
            {
                "Bucket": {"Ref": bucket_id},
                "PolicyDocument": {
                    "Statement": Match.array_with(
                        [
                            Match.object_like(
                                {
                                    "Effect": "Deny",
                                    "Principal": {"AWS": "*"},
                                    "Action": "s3:*",
                                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                                }
                            )
                        ]
                    )
                },
            },
        )


def test_log_delivery_is_granted_by_bucket_policy(one) -> None:
    log_id, _ = log_bucket(one)
    one.template.has_resource_properties(
        "AWS::S3::BucketPolicy",
        {
            "Bucket": {"Ref": log_id},
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {
                                "Effect": "Allow",
                                "Principal": {"Service": "logging.s3.amazonaws.com"},
                                "Action": "s3:PutObject",
                            }
                        )
                    ]
                )
            },
        },
    )
