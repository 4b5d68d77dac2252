"""Helpers for tests that run against the moto S3 server (fixtures in conftest.py)."""

from __future__ import annotations


def bucket_keys(bucket: str) -> set[str]:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}
